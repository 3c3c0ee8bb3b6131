import { createHmac, hkdfSync, randomUUID } from 'node:crypto'
import { DelayedError, Queue, UnrecoverableError, Worker, type Job, type JobType } from 'bullmq'
import { Redis } from 'ioredis'
import { RawJson, ServiceError } from '../http/index.js'
import { createSealer } from '../redis/index.js'
import { withClientToken } from './feishu.js'
import { judge, scheduledWait } from './verdict.js'
import { JOB_STATUSES, STATES, iso, nameOf, progressOf, statusOf, viewOf, type Delivered, type JobStatus, type JobView, type Progress } from './views.js'
import type { PreparedRequest } from './request.js'
import type { AttemptResult, Relay, RelayAnswer } from './send.js'


/** The request as stored (sealed): what was checked and prepared at acceptance, sent as it is on every attempt. */
interface Payload {
  location: string
  method: PreparedRequest['method']
  headers: Record<string, string>
  body: string | undefined
  feishuApp?: string | undefined
  /** Feishu Bitable's client_token: fixed per job, so a repeated creation is a no-op. */
  clientToken: string
}




/** The answer as stored: JSON with its numbers exact keeps its text. */
interface StoredAnswer { status: number, body?: unknown, raw?: string }

export interface JobQueueOptions {
  relay: Relay
  /** REDIS_URL: the queue opens its own connections (one to add and read, and the workers' blocking ones). */
  redisUrl: string
  /** REDIS_KEY_PREFIX; the queue's keys carry it in a hash tag, so that they share one Redis Cluster slot. */
  keyPrefix: string
  /** The shared client (with its key prefix and breaker): idempotency keys and the age index. */
  redis: Redis
  /** Whether that client answers now (connected, breaker closed). */
  available: () => boolean
  /** RESEND_QUEUE_SECRET: 32 bytes. */
  secret: Buffer
  /** RESEND_WORKERS: jobs this instance delivers at once; 0 takes none (accepts and answers only). */
  concurrency: number
  /** RESEND_JOB_LOCK_MS */
  lockMs: number
  /** RESEND_RETRY_SCHEDULE, in milliseconds: the wait after each failed attempt; the last repeats. */
  scheduleMs: number[]
  /** RESEND_MAX_AGE in milliseconds. */
  maxAgeMs: number
  /** RESEND_MAX_QUEUED */
  maxQueued: number
  /** Where a job's status is read (GET), with the id appended. */
  statusPath: string
  /** How often the counts behind the metrics and the queue bound are read. */
  snapshotMs?: number
  onJob?: (outcome: string, attempts?: number) => void
  /** SHUTDOWN_GRACE_MS: how long closing waits for deliveries in flight. */
  closeGraceMs: number
  /** Said once at start: a Redis that may evict the queue's keys, or that does not say. */
  onWarning?: (message: string) => void
  /** A failure of the queue's own machinery (not of a delivery). */
  onError?: (err: Error) => void
}

export interface JobQueue {
  /** Validates and stores; with an idempotency key, the job stored before under it (`replayed`). */
  accept (prepared: PreparedRequest, owner: string | null, idempotency?: { key: string, fingerprint: string }): Promise<{ view: JobView, replayed: boolean }>
  get (id: string, owner: string | null): Promise<JobView>
  list (owner: string | null, status: JobStatus | undefined, limit: number): Promise<JobView[]>
  retry (id: string, owner: string | null): Promise<JobView>
  cancel (id: string, owner: string | null): Promise<JobView>
  /** `ok`, or `degraded` while Redis does not answer (queued delivery answers 503; delivery now goes on). */
  status (): 'ok' | 'degraded'
  /** Counts by status, and the age of the oldest job not yet delivered (seconds), as last read. */
  snapshot (): { counts: Record<JobStatus, number>, oldestSeconds: number }
  /** Stops taking jobs; deliveries in flight finish (SIGTERM); the rest stay queued. */
  close (): Promise<void>
}

const DELIVERED_KEEP_SECONDS = 86_400
const FAILED_KEEP_SECONDS = 7 * 86_400
const IDEMPOTENCY_MS = 86_400_000
/** Jobs a listing reads at most, per state, before it filters by caller. */
export const LIST_SCAN = 1000
const REDIS_DEADLINE_MS = 3000
const OWNER_SHARED = '*'



const unavailable = (cause: unknown): ServiceError => new ServiceError('SERVICE_UNAVAILABLE', { reason: 'queue_unavailable', detail: 'Redis (REDIS_URL) does not answer' }, { cause })

/** Redis work of a request, within a deadline; Redis away or silent is a 503, never a hang or a 500. */
async function deadline<T> (work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`no answer within ${REDIS_DEADLINE_MS} ms`)) }, REDIS_DEADLINE_MS) })
  // Past the deadline the work may still fail: that failure is nobody's (an unhandled rejection would end the process).
  work.catch(() => {})
  return await Promise.race([work, late])
    .catch((err: unknown) => { throw unavailable(err) })
    .finally(() => { clearTimeout(timer) })
}


/**
 * Queued delivery on BullMQ: the request is checked and prepared once, stored sealed under its job id, and tried
 * by any instance on the schedule until it is delivered, fails, or outlives RESEND_MAX_AGE.
 */
export async function createJobQueue (options: JobQueueOptions): Promise<JobQueue> {
  const { relay, redis } = options
  const sealer = createSealer(options.secret, 'aibill resend jobs')
  const idempotencyKey = Buffer.from(hkdfSync('sha256', options.secret, Buffer.alloc(0), 'aibill resend idempotency', 32))
  const prefix = `{${options.keyPrefix}resend}`
  // Reconnecting goes on while Redis is away, and stops once the queue is closed.
  let closing = false
  const reconnect = (times: number): number | null => (closing ? null : Math.min(times * 200, 2000))
  // Adding and reading fail fast while Redis is away or silent; the workers' connections wait for it instead.
  const client = new Redis(options.redisUrl, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: 2000, connectTimeout: 2000, retryStrategy: reconnect })
  client.on('error', () => {})
  await client.connect()
  const queue = new Queue<{ sealed: string }, string>('resend', { connection: client, prefix })
  queue.on('error', (err) => { options.onError?.(err) })
  const since = 'resend-pending'

  try {
    const [, policy] = await client.config('GET', 'maxmemory-policy') as [string, string]
    if (policy !== 'noeviction') options.onWarning?.(`Redis maxmemory-policy is ${policy}: queued jobs and their locks may be evicted; set it to noeviction`)
  } catch {
    options.onWarning?.('Redis does not answer CONFIG GET (ElastiCache refuses it): make sure its maxmemory-policy is noeviction, or queued jobs may be evicted')
  }

  let snapshot = { counts: { queued: 0, delivering: 0, delivered: 0, failed: 0 }, oldestSeconds: 0 }
  let acceptedSinceSnapshot = 0
  // The oldest job not yet ended. Its entry is removed when the job ends, without waiting: one that outlived its
  // job (Redis did not take the removal) is removed here, so that the age never counts an ended job.
  async function oldestAge (): Promise<number> {
    const [id, score] = await redis.zrange(since, 0, 0, 'WITHSCORES')
    if (id === undefined) return 0
    const state = await queue.getJobState(id)
    if (state !== 'completed' && state !== 'failed' && state !== 'unknown') return Math.max(0, (Date.now() - Number(score)) / 1000)
    await redis.zrem(since, id)
    return await oldestAge()
  }

  async function readSnapshot (): Promise<void> {
    const counts = await queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed')
    const oldestSeconds = await oldestAge()
    const sum = (types: JobType[]): number => types.reduce((total, type) => total + (counts[type] as number), 0)
    snapshot = {
      counts: { queued: sum(STATES.queued), delivering: sum(STATES.delivering), delivered: sum(STATES.delivered), failed: sum(STATES.failed) },
      oldestSeconds
    }
    acceptedSinceSnapshot = 0
  }
  await readSnapshot()
  const snapshotTimer = setInterval(() => { readSnapshot().catch(() => {}) }, options.snapshotMs ?? 5000).unref()


  // The destination's answer, sealed under a key of its own, kept as long as the job.
  async function keepAnswer (id: string, answer: RelayAnswer, seconds: number): Promise<void> {
    const stored: StoredAnswer = answer.body instanceof RawJson ? { status: answer.status, raw: answer.body.text } : { status: answer.status, body: answer.body }
    await redis.set(`resend-answer:${id}`, sealer.seal(`answer:${id}`, stored), 'EX', seconds).catch(() => {})
  }

  async function deliver (job: Job<{ sealed: string }, string>, token?: string): Promise<string> {
    const id = job.id as string
    const payload = sealer.open<Payload>(`job:${id}`, job.data.sealed)
    if (payload === undefined) throw new UnrecoverableError('unreadable: sealed under another RESEND_QUEUE_SECRET')
    const progress = progressOf(job)
    const attempt = progress.attempts + 1
    const now = Date.now()
    let result: AttemptResult
    let speaksFeishu = payload.feishuApp !== undefined
    try {
      const { url, host, allowPrivate } = relay.check(payload.location)
      speaksFeishu ||= relay.speaksFeishu(url.origin)
      const prepared: PreparedRequest = { url, host, allowPrivate, method: payload.method, headers: payload.headers, body: payload.body, feishuApp: payload.feishuApp }
      const headers: Record<string, string> = 'idempotency-key' in payload.headers ? {} : { 'idempotency-key': id }
      result = await relay.attempt(prepared, attempt, { url: withClientToken(url, payload.method, payload.clientToken), headers })
    } catch (err) {
      // The policy refused it (the allow-list changed, or the name now resolves elsewhere), or the answer is too large.
      const error = (err as ServiceError).code
      await job.updateProgress({ ...progress, attempts: attempt, next_attempt_at: undefined, last: { at: now, error } })
      throw new UnrecoverableError(error)
    }
    const verdict = judge(result, speaksFeishu)
    if (verdict.kind === 'delivered') {
      await keepAnswer(id, verdict.answer, DELIVERED_KEEP_SECONDS)
      const delivered: Delivered = { attempts: attempt, last: { at: now, status: verdict.answer.status } }
      return JSON.stringify(delivered)
    }
    const last = { at: now, ...verdict.last }
    if (verdict.kind === 'retry') {
      const at = Date.now() + Math.max(scheduledWait(options.scheduleMs, attempt), verdict.askedMs ?? 0)
      if (at <= progress.since + options.maxAgeMs) {
        await job.updateProgress({ ...progress, attempts: attempt, next_attempt_at: at, last })
        await job.moveToDelayed(at, token)
        throw new DelayedError()
      }
    }
    if (verdict.answer !== undefined) await keepAnswer(id, verdict.answer, FAILED_KEEP_SECONDS)
    await job.updateProgress({ ...progress, attempts: attempt, next_attempt_at: undefined, last })
    throw new UnrecoverableError(verdict.kind === 'retry' ? 'max_age' : verdict.last.error)
  }

  const worker = options.concurrency === 0
    ? undefined
    : new Worker<{ sealed: string }, string>('resend', deliver, {
      // Blocking reads wait for Redis instead of failing: a worker outlives an outage.
      connection: { url: options.redisUrl, maxRetriesPerRequest: null, enableOfflineQueue: true, retryStrategy: reconnect } as never,
      prefix,
      concurrency: options.concurrency,
      lockDuration: options.lockMs,
      stalledInterval: options.lockMs,
      // A job whose instance died mid-delivery goes back to the queue; past this many times it fails.
      maxStalledCount: 10
    })
  worker?.on('error', (err) => { options.onError?.(err) })
  worker?.on('completed', (job) => {
    const delivered = JSON.parse(job.returnvalue) as Delivered
    options.onJob?.('delivered', delivered.attempts)
    redis.zrem(since, job.id as string).catch(() => {})
  })
  worker?.on('failed', (job) => {
    // (BullMQ's type allows no job; a worker's own failures come as 'error'.)
    const failed = job as Job
    options.onJob?.('failed', progressOf(failed).attempts)
    redis.zrem(since, failed.id as string).catch(() => {})
  })

  async function find (id: string, owner: string | null): Promise<Job<{ sealed: string }, string>> {
    const job = await deadline(queue.getJob(id)) as Job<{ sealed: string }, string> | undefined
    // Another caller's job is as absent as one that never was.
    if (job === undefined || (owner !== null && nameOf(job).owner !== owner)) throw new ServiceError('NOT_FOUND', { resource: 'job', id })
    return job
  }


  /** One job's view, with the destination's answer when one was kept. */
  async function withAnswer (view: JobView): Promise<JobView> {
    if (view.status !== 'delivered' && view.status !== 'failed') return view
    const stored = sealer.open<StoredAnswer>(`answer:${view.id}`, await deadline(redis.get(`resend-answer:${view.id}`)))
    if (stored !== undefined) view.answer = { status: stored.status, body: stored.raw !== undefined ? new RawJson(stored.raw) : stored.body }
    return view
  }

  async function current (job: Job<{ sealed: string }, string>): Promise<JobView> {
    const status = statusOf(await deadline(job.getState()))
    // It ended between the two reads: its fields are read again, now that they are final.
    /* c8 ignore next 3 - the window between reading a job and reading its state */
    if ((status === 'delivered' || status === 'failed') && job.finishedOn === undefined) {
      job = await deadline(queue.getJob(job.id as string)) as Job<{ sealed: string }, string>
    }
    return await withAnswer(viewOf(job, status, options.statusPath))
  }

  const bound = (id: string): string => createHmac('sha256', idempotencyKey).update(id).digest('hex')

  return {
    async accept (prepared, owner, idempotency) {
      if (snapshot.counts.queued + acceptedSinceSnapshot >= options.maxQueued) {
        throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'queue_full', limit: options.maxQueued, variable: 'RESEND_MAX_QUEUED' })
      }
      const id = randomUUID()
      const name = owner ?? OWNER_SHARED
      const destination = `${prepared.host}${prepared.url.pathname}`
      if (idempotency !== undefined) {
        const key = `resend-idempotency:${bound(`${name}\u0000${idempotency.key}`)}`
        const fingerprint = bound(idempotency.fingerprint)
        const taken = await deadline(redis.set(key, `${id} ${fingerprint}`, 'PX', IDEMPOTENCY_MS, 'NX'))
        if (taken !== 'OK') {
          const [earlier, earlierFingerprint] = String(await deadline(redis.get(key))).split(' ')
          if (earlierFingerprint !== fingerprint) throw new ServiceError('IDEMPOTENCY_KEY_REUSED', { reason: 'this Idempotency-Key came with another request body in the last 24 hours' })
          const job = await deadline(queue.getJob(earlier as string)) as Job<{ sealed: string }, string> | undefined
          // Stored under the key a moment ago by a request still being accepted: the same job, queued.
          /* c8 ignore next - the window between a key's SET and its job's add */
          if (job === undefined) return { view: { id: earlier as string, status: 'queued', attempts: 0, created_at: iso(Date.now()), next_attempt_at: null, destination, last_attempt: null, status_url: `${options.statusPath}${String(earlier)}` }, replayed: true }
          return { view: await current(job), replayed: true }
        }
      }
      const payload: Payload = { location: prepared.url.href, method: prepared.method, headers: prepared.headers, body: prepared.body, feishuApp: prepared.feishuApp, clientToken: randomUUID() }
      const job = await deadline(queue.add(JSON.stringify([name, destination]), { sealed: sealer.seal(`job:${id}`, payload) }, {
        jobId: id,
        attempts: 1,
        removeOnComplete: { age: DELIVERED_KEEP_SECONDS },
        removeOnFail: { age: FAILED_KEEP_SECONDS }
      }))
      acceptedSinceSnapshot++
      redis.zadd(since, job.timestamp, id).catch(() => {})
      options.onJob?.('accepted')
      return { view: viewOf(job, 'queued', options.statusPath), replayed: false }
    },
    async get (id, owner) {
      return await current(await find(id, owner))
    },
    async list (owner, status, limit) {
      const views: JobView[] = []
      for (const wanted of status === undefined ? JOB_STATUSES : [status]) {
        // Ids first, then each job's small fields in one round trip: never its request or its answer.
        const ids = await deadline(queue.getRanges(STATES[wanted], 0, LIST_SCAN - 1, false))
        const pipeline = client.pipeline()
        for (const id of ids) pipeline.hmget(queue.toKey(id), 'name', 'timestamp', 'progress', 'returnvalue', 'failedReason', 'finishedOn')
        const rows = ids.length === 0 ? [] : await deadline(pipeline.exec()) as Array<[Error | null, Array<string | null>]>
        rows.forEach(([, fields], index) => {
          const [name, timestamp, progress, returnvalue, failedReason, finishedOn] = fields as [string | null, string, string | null, string | null, string | null, string | null]
          // Removed between the two reads, or another caller's.
          if (name === null || (owner !== null && nameOf({ name }).owner !== owner)) return
          views.push(viewOf({
            id: ids[index] as string,
            name,
            timestamp: Number(timestamp),
            progress: progress === null ? 0 : JSON.parse(progress) as Progress,
            returnvalue: returnvalue === null ? undefined : JSON.parse(returnvalue) as unknown,
            failedReason: String(failedReason),
            finishedOn: Number(finishedOn)
          }, wanted, options.statusPath))
        })
      }
      return views.sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, limit)
    },
    async retry (id, owner) {
      const job = await find(id, owner)
      const state = await deadline(job.getState())
      if (state !== 'failed') throw new ServiceError('CONFLICT', { reason: `the job is ${statusOf(state)}: only a failed job is put back`, status: statusOf(state) })
      await deadline(job.updateProgress({ ...progressOf(job), since: Date.now(), next_attempt_at: undefined }))
      await deadline(redis.del(`resend-answer:${id}`))
      await deadline(job.retry('failed'))
      redis.zadd(since, Date.now(), id).catch(() => {})
      options.onJob?.('retried')
      return await current(job)
    },
    async cancel (id, owner) {
      const job = await find(id, owner)
      const state = await deadline(job.getState())
      if (statusOf(state) !== 'queued') throw new ServiceError('CONFLICT', { reason: `the job is ${statusOf(state)}: only a queued job is cancelled`, status: statusOf(state) })
      const view = viewOf(job, 'queued', options.statusPath)
      // A job an instance took a moment ago is locked: remove refuses it, and it is delivering.
      await deadline(job.remove()).catch(() => { throw new ServiceError('CONFLICT', { reason: 'the job is delivering: only a queued job is cancelled', status: 'delivering' }) })
      redis.zrem(since, id).catch(() => {})
      redis.del(`resend-answer:${id}`).catch(() => {})
      options.onJob?.('cancelled', view.attempts)
      return { ...view, status: 'cancelled', next_attempt_at: null }
    },
    snapshot: () => snapshot,
    status: () => (options.available() ? 'ok' : 'degraded'),
    async close () {
      clearInterval(snapshotTimer)
      // Deliveries in flight finish within the grace; past it (or with Redis away, when closing would wait for
      // it) the connections are cut, and the jobs' locks lapse for another instance to take them over.
      let timer: NodeJS.Timeout | undefined
      const grace = new Promise<void>((resolve) => { timer = setTimeout(resolve, options.closeGraceMs) })
      await Promise.race([Promise.all([worker?.close(), queue.close()]), grace]).catch(() => {})
      clearTimeout(timer)
      closing = true
      // Disconnecting waits for a Redis that is away too: it is not waited for.
      Promise.all([worker?.disconnect(), queue.disconnect()]).catch(() => {})
      client.disconnect()
    }
  }
}
