import { createHash, createHmac, hkdfSync, randomUUID } from 'node:crypto'
import { hostname } from 'node:os'
import { DelayedError, MetricsTime, Queue, UnrecoverableError, Worker, type Job, type JobType } from 'bullmq'
import { RawJson, ServiceError } from '../http/index.js'
import { createRedisClient, createSealer, isRedisFull, probeRedis, type RedisClient, type RedisSettings } from '../redis/index.js'
import { annotate, queueTelemetry } from '../tracing/index.js'
import { withClientToken } from './feishu.js'
import { type Admission, type AttemptOutcome, createDestinations, NO_DESTINATION_CONTROLS, type Destinations, type DestinationsOptions, type DestinationView, type HostLimit } from './destinations.js'
import { createFootprint } from './footprint.js'
import { idempotentJobId } from './idempotency.js'
import { packPayload, unpackPayload, type Payload } from './payload.js'
import type { PreparedRequest } from './request.js'
import { attemptOutcome, type AttemptResult, type Relay, type RelayAnswer } from './send.js'
import { addSeries, perMinute, THROUGHPUT_MINUTES } from './throughput.js'
import { judge, nextAttemptAt } from './verdict.js'
import { historyOf, JOB_STATUSES, STATES, jobName, nameOf, progressOf, statusOf, viewOf, withAttempt, type Delivered, type JobStatus, type JobView, type Progress } from './views.js'

/** The answer as stored: JSON with its numbers exact keeps its text. */
interface StoredAnswer { status: number, body?: unknown, raw?: string }

/**
 * A job's data: its request, sealed (empty once delivered), and the destination's answer, sealed, once the job has
 * ended with one. They are one field, so that dropping the request and keeping the answer is one write.
 */
interface JobData { sealed: string, answer?: string }

export interface JobQueueOptions {
  relay: Relay
  /** REDIS_URL and the rest: the queue opens its own clients (one to add and read, and the workers' blocking ones). */
  redisSettings: RedisSettings
  /** REDIS_KEY_PREFIX; each partition's keys carry it in a hash tag of their own, one Redis Cluster slot each. */
  keyPrefix: string
  /**
   * RESEND_QUEUE_PARTITIONS: the queue is this many BullMQ queues, each under its own hash tag, so that on a cluster
   * the queue grows with the shards; a job goes to its destination host's partition.
   */
  partitions: number
  /** The shared client (with its key prefix and breaker): the kept answers and the age index. */
  redis: RedisClient
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
  /** RESEND_MAX_QUEUED_BYTES: what the queue keeps in Redis, requests and kept answers, across instances. */
  maxQueuedBytes: number
  /** A caller's share of those bytes (broker mode: its max_queued_bytes); the whole bound for the shared owner. */
  ownerMaxBytes: (owner: string) => number
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
  /** Told when Redis starts and stops refusing the queue's writes for memory (maxmemory with noeviction). */
  onWritesRefused?: (refused: boolean) => void
  /** RESEND_DESTINATION_CONTROLS: shares, limits, pauses and breakers (destinations.ts); off, none of them. */
  destinationControls: boolean
  /** RESEND_HOST_LIMITS, parsed. */
  hostLimits: HostLimit[]
  /** RESEND_BREAKER_FAILURES and RESEND_BREAKER_COOLDOWN (ms). */
  breakerFailures: number
  breakerCooldownMs: number
  /** RESEND_TIMEOUT_MS: how long an attempt sent now may hold a paused host's probe. */
  attemptMs: number
  /** Told when a job fails for good (not when it is only tried again). */
  onFailed?: (failed: { id: string, host: string, destination: string, error: string, attempts: number }) => void
  /** Told when a destination's breaker opens or closes. */
  onBreaker?: DestinationsOptions['onBreaker']
}

/**
 * Which jobs a bulk retry or cancel touches: to a destination (a host, or a host and the start of a path), and
 * failed (retry: when it failed) or created (cancel) between two instants.
 */
export interface JobFilter { destination?: string | undefined, since?: number | undefined, until?: number | undefined, limit: number }

/** The most jobs one bulk retry or cancel touches, and the most of a state's jobs it reads to find them. */
export const BULK_LIMIT = 1000
const BULK_SCAN = 10_000

/** An Idempotency-Key and the request it came with, as data (idempotency.ts's canonical form). */
export interface Idempotency { key: string, request: string }

export interface JobQueue {
  /** Validates and stores; with an idempotency key, the job stored before under it (`replayed`). */
  accept (prepared: PreparedRequest, owner: string | null, idempotency?: Idempotency): Promise<{ view: JobView, replayed: boolean }>
  get (id: string, owner: string | null): Promise<JobView>
  /** Newest first; with `idempotencyKey`, the caller's job of that key only (none, or one). */
  list (owner: string | null, status: JobStatus | undefined, limit: number, idempotencyKey?: string): Promise<JobView[]>
  retry (id: string, owner: string | null): Promise<JobView>
  cancel (id: string, owner: string | null): Promise<JobView>
  /**
   * Every failed job (retry) or queued job (cancel) the filter matches, up to its limit: each is put back or
   * cancelled as one would be, and a job that changed state meanwhile is left out. The ids it touched.
   */
  retryMany (owner: string | null, filter: JobFilter): Promise<string[]>
  cancelMany (owner: string | null, filter: JobFilter): Promise<string[]>
  /** How many failed (or queued) jobs a filter matches, up to its limit: what a bulk action would touch now. */
  countMany (owner: string | null, filter: JobFilter, status: 'failed' | 'queued'): Promise<number>
  /**
   * A real round trip to the queue's Redis (a key written and read back): `ok`, or `degraded: ...` saying that
   * Redis does not answer or refuses writes (queued delivery answers 503 then; delivery now goes on).
   */
  probe (): Promise<string>
  /** Whether the queue's Redis refused a write for memory (maxmemory) more lately than it took one. */
  readonly writesRefused: boolean
  /** Each destination's limit, breaker and shares, shared by every instance: sending now goes through it too. */
  readonly destinations: Destinations
  /** The destinations' states (a caller's own hosts in broker mode), within the queue's Redis deadline. */
  listDestinations (owner: string | null): Promise<DestinationView[]>
  /** Jobs delivered and failed in each of the last THROUGHPUT_MINUTES minutes, oldest first, by every instance. */
  throughput (): Promise<{ delivered: number[], failed: number[] }>
  /**
   * Counts by status, the age of the oldest job not yet delivered (seconds), the bytes kept, and each
   * destination's state (destinations.ts), as last read.
   */
  snapshot (): { counts: Record<JobStatus, number>, oldestSeconds: number, bytes: number, destinations: DestinationView[] }
  /** Stops taking jobs; deliveries in flight finish (SIGTERM); the rest stay queued. */
  close (): Promise<void>
}

const DELIVERED_KEEP_SECONDS = 86_400
const FAILED_KEEP_SECONDS = 7 * 86_400
/**
 * What BullMQ keeps of a job beside its data (its fields, its place in the lists), and its entries in the
 * destinations' state (a wait, a lease: under 200 bytes): counted with each job.
 */
const JOB_OVERHEAD_BYTES = 1024
/** Which instance made an attempt, as a job's history says: the task's host name. */
const INSTANCE = hostname().slice(0, 64)
/** Jobs a listing reads at most, per state, before it filters by caller. */
export const LIST_SCAN = 1000
const REDIS_DEADLINE_MS = 3000
const OWNER_SHARED = '*'



/** What went wrong with Redis, in words an operator acts on: full, refusing (the error's first word), or silent. */
function redisTrouble (cause: unknown): string {
  if (isRedisFull(cause)) return 'Redis (REDIS_URL) refuses writes: it has reached its maxmemory'
  if ((cause as Error).name === 'ReplyError') return `Redis (REDIS_URL) refused the command (${(cause as Error).message.split(' ', 1)[0] as string})`
  return 'Redis (REDIS_URL) does not answer'
}

const unavailable = (cause: unknown): ServiceError => new ServiceError('SERVICE_UNAVAILABLE', { reason: 'queue_unavailable', detail: redisTrouble(cause) }, { cause })

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
  const idempotencySecret = Buffer.from(hkdfSync('sha256', options.secret, Buffer.alloc(0), 'aibill resend idempotency', 32))
  const { ownerMaxBytes } = options
  // Partition 0 of one keeps the name the queue had before partitions, so that its jobs are found after an upgrade.
  const tags = Array.from({ length: options.partitions }, (_unused, index) => (options.partitions === 1 ? `{${options.keyPrefix}resend}` : `{${options.keyPrefix}resend-${index}}`))
  // Reconnecting goes on while Redis is away, and stops once the queue is closed.
  let closing = false
  const reconnect = (times: number): number | null => (closing ? null : Math.min(times * 200, 2000))
  // Adding and reading fail fast while Redis is away or silent; the workers' connections wait for it instead.
  const client = createRedisClient(options.redisSettings, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: 2000, connectTimeout: 2000, retryStrategy: reconnect })
  client.on('error', () => {})
  await client.connect()
  // With tracing on, a job keeps the trace context of the request that queued it, and each of its deliveries is a
  // span of that trace (BullMQ's own, through bullmq-otel).
  const telemetry = queueTelemetry()
  const queues = tags.map((prefix) => new Queue<JobData, string>('resend', { connection: client, prefix, telemetry }))
  for (const queue of queues) queue.on('error', (err) => { options.onError?.(err) })
  /** A destination host's partition: a host's jobs stay together, with its state (destinations.ts). */
  const partitionOf = (host: string): number => createHash('sha256').update(host).digest().readUInt32BE(0) % queues.length
  const queueFor = (host: string): Queue<JobData, string> => queues[partitionOf(host)] as Queue<JobData, string>
  const destinations = !options.destinationControls ? NO_DESTINATION_CONTROLS : createDestinations({
    client,
    tagFor: (host) => tags[partitionOf(host)] as string,
    tags,
    limits: options.hostLimits,
    breakerFailures: options.breakerFailures,
    breakerCooldownMs: options.breakerCooldownMs,
    leaseMs: options.lockMs,
    attemptMs: options.attemptMs,
    maxAgeMs: options.maxAgeMs,
    onBreaker: options.onBreaker
  })
  /** A job by its id, whatever its partition. */
  const locate = async (id: string): Promise<Job<JobData, string> | undefined> =>
    (await Promise.all(queues.map(async (queue) => await queue.getJob(id)))).find((job) => job !== undefined) as Job<JobData, string> | undefined
  const since = 'resend-pending'
  const footprint = createFootprint(client, options.keyPrefix, options.maxQueuedBytes)
  // Whether Redis refused a write for memory more lately than it took one: said once each way, and on /ready.
  let writesRefused = false
  const noteWrite = (err?: unknown): void => {
    const refused = err !== undefined && isRedisFull(err)
    if (refused === writesRefused || (err !== undefined && !refused)) return
    writesRefused = refused
    options.onWritesRefused?.(refused)
  }

  // INFO, not CONFIG GET (which ElastiCache refuses; ioredis needs INFO to connect at all): the eviction policy,
  // and room for the bound on bytes. (An INFO that fails here says no policy, and is warned of as such.)
  const memory = await client.info('memory').catch(String)
  const field = (name: string): string | undefined => new RegExp(`^${name}:(.*)$`, 'm').exec(memory)?.[1]?.trim()
  const policy = field('maxmemory_policy')
  if (policy !== 'noeviction') options.onWarning?.(`Redis maxmemory-policy is ${String(policy)}: queued jobs and their locks may be evicted; set it to noeviction`)
  const maxmemory = Number(field('maxmemory'))
  if (maxmemory > 0 && options.maxQueuedBytes > 0.8 * maxmemory) {
    options.onWarning?.(`RESEND_MAX_QUEUED_BYTES (${options.maxQueuedBytes}) is over 80 % of Redis's maxmemory (${maxmemory}): queued jobs could fill Redis before the bound refuses them; lower it, or give Redis more memory`)
  }

  let snapshot: ReturnType<JobQueue['snapshot']> = { counts: { queued: 0, delivering: 0, delivered: 0, failed: 0 }, oldestSeconds: 0, bytes: 0, destinations: [] }
  let acceptedSinceSnapshot = 0
  // The oldest job not yet ended. Its entry is removed when the job ends, without waiting: one that outlived its
  // job (Redis did not take the removal) is removed here, so that the age never counts an ended job.
  async function oldestAge (): Promise<number> {
    const [id, score] = await redis.zrange(since, 0, 0, 'WITHSCORES')
    if (id === undefined) return 0
    const state = await (await locate(id))?.getState() ?? 'unknown'
    if (state !== 'completed' && state !== 'failed' && state !== 'unknown') return Math.max(0, (Date.now() - Number(score)) / 1000)
    await redis.zrem(since, id)
    return await oldestAge()
  }

  async function readSnapshot (): Promise<void> {
    const each = await Promise.all(queues.map(async (queue) => await queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active', 'completed', 'failed')))
    const oldestSeconds = await oldestAge()
    const bytes = await footprint.total()
    const views = await destinations.list(null)
    const sum = (types: JobType[]): number => each.reduce((total, counts) => total + types.reduce((part, type) => part + (counts[type] as number), 0), 0)
    snapshot = {
      counts: { queued: sum(STATES.queued), delivering: sum(STATES.delivering), delivered: sum(STATES.delivered), failed: sum(STATES.failed) },
      oldestSeconds,
      bytes,
      destinations: views
    }
    acceptedSinceSnapshot = 0
  }
  await readSnapshot()
  const snapshotTimer = setInterval(() => { readSnapshot().catch(() => {}) }, options.snapshotMs ?? 5000).unref()


  // The destination's answer, sealed for its job: kept in the job's data, as long as the job.
  function sealAnswer (id: string, answer: RelayAnswer): string {
    const stored: StoredAnswer = answer.body instanceof RawJson ? { status: answer.status, raw: answer.body.text } : { status: answer.status, body: answer.body }
    return sealer.seal(`answer:${id}`, stored)
  }
  /**
   * A job's kept answer: in its data; a job ended by an earlier version has it under a key of its own (gone with
   * its job, 7 days at most after the upgrade).
   */
  async function answerOf (job: Job<JobData, string>): Promise<StoredAnswer | undefined> {
    const id = job.id as string
    return sealer.open<StoredAnswer>(`answer:${id}`, job.data.answer ?? await deadline(redis.get(`resend-answer:${id}`)))
  }

  /** A job's destination host, from its name (host and path). */
  const hostOf = (job: { name: string }): string => nameOf(job).destination.split('/', 1)[0] as string

  /** What a job's request costs in Redis while it may be sent: the sealed bytes, its name, BullMQ's fields. */
  const requestBytes = (job: { name: string, data: { sealed: string } }): number => job.data.sealed.length + job.name.length + JOB_OVERHEAD_BYTES

  /** A delivery as its trace shows it: BullMQ's span of the job, with the destination and how it went. */
  async function deliverTraced (job: Job<JobData, string>, token?: string): Promise<string> {
    annotate({ 'aibill.resend.job_id': job.id as string, 'aibill.resend.destination': nameOf(job).destination, 'aibill.resend.attempt': progressOf(job).attempts + 1 })
    try {
      const delivered = await deliver(job, token)
      annotate({ 'aibill.resend.outcome': 'delivered' })
      return delivered
    } catch (err) {
      // A wait (a retry, a hold) said what it was where it was decided.
      if (err instanceof UnrecoverableError) annotate({ 'aibill.resend.outcome': 'failed', 'aibill.resend.error': progressOf(job).last?.error ?? err.message })
      throw err
    }
  }

  async function deliver (job: Job<JobData, string>, token?: string): Promise<string> {
    const id = job.id as string
    const { owner } = nameOf(job)
    // Delivered by an instance that stopped before it could say so: it drops a request only once the destination has
    // answered 2xx and the answer is kept. The job is delivered, and not sent again.
    if (job.data.sealed === '') return deliveredBefore(job)
    const opened = sealer.openBytes(`job:${id}`, job.data.sealed)
    if (opened === undefined) throw new UnrecoverableError('unreadable: sealed under another RESEND_QUEUE_SECRET, or for another job')
    const payload = unpackPayload(opened)
    const progress = progressOf(job)
    const attempt = progress.attempts + 1
    const now = Date.now()
    // Each attempt counts the job again: a count lost between the add and a failed undo is made good here.
    footprint.set(id, owner, requestBytes(job), progress.since + options.maxAgeMs + FAILED_KEEP_SECONDS * 1000).catch(() => {})
    let checked: { url: URL, host: string, allowPrivate: boolean }
    try {
      checked = relay.check(payload.location)
    } catch (err) {
      return await failAtOnce(job, progress, attempt, (err as ServiceError).code)
    }
    // The destination as its jobs name it: host and port (two services on one name are two destinations).
    const { url } = checked
    const { host } = url
    // The destination's gate: a pause, the limit, or the flow's share holds the job back without spending an
    // attempt. (With Redis failing here the attempt goes: the job itself lives in that Redis.)
    let admission = await destinations.admit(id, owner, host).catch((): Admission => ({ go: true, probe: false }))
    if (!admission.go) {
      // At the end of its age a job makes its last attempt when only a wait its destination asked for, or its
      // share, held it; a host whose breaker is open or that is at its limit is not tried: the job fails.
      const lastChance = Date.now() >= progress.since + options.maxAgeMs && (admission.reason === 'paused' || admission.reason === 'share')
      if (!lastChance) return await hold(job, token, progress, admission, host)
      admission = { go: true, probe: false }
    }
    let outcome: AttemptOutcome = { kind: 'none' }
    let nextAt: number | undefined
    try {
      const speaksFeishu = payload.feishuApp !== undefined || relay.speaksFeishu(url.origin)
      const prepared: PreparedRequest = { ...checked, method: payload.method, headers: payload.headers, body: payload.body, feishuApp: payload.feishuApp }
      const headers: Record<string, string> = 'idempotency-key' in payload.headers ? {} : { 'idempotency-key': id }
      let result: AttemptResult
      try {
        result = await relay.attempt(prepared, attempt, { url: withClientToken(url, payload.method, payload.clientToken), headers, jobId: id })
      } catch (err) {
        // The policy refused it at connect time (the name now resolves elsewhere, a Feishu app's token would go to
        // another origin), or the answer is too large.
        return await failAtOnce(job, progress, attempt, (err as ServiceError).code)
      }
      outcome = attemptOutcome(result, speaksFeishu, Date.now())
      const verdict = judge(result, speaksFeishu)
      if (verdict.kind === 'delivered') {
        // A delivered job keeps no request: only its small fields and its answer, written in one command.
        const answer = sealAnswer(id, verdict.answer)
        const dropped = await job.updateData({ sealed: '', answer }).then(() => true, () => false)
        /* c8 ignore next - Redis failing between the delivery and the drop of its request: the request stays counted, no answer is kept */
        footprint.set(id, owner, dropped ? answer.length + JOB_OVERHEAD_BYTES : requestBytes(job), Date.now() + DELIVERED_KEEP_SECONDS * 1000).catch(() => {})
        const delivered: Delivered = { attempts: attempt, last: { at: now, status: verdict.answer.status }, instance: INSTANCE }
        return JSON.stringify(delivered)
      }
      const last = { at: now, ...verdict.last }
      if (verdict.kind === 'retry') {
        nextAt = nextAttemptAt({ now: Date.now(), attempt, scheduleMs: options.scheduleMs, askedMs: verdict.askedMs, endsAt: progress.since + options.maxAgeMs })
        if (nextAt !== undefined) {
          await job.updateProgress({ ...progress, attempts: attempt, next_attempt_at: nextAt, held: undefined, last, history: withAttempt(progress, { ...last, next_at: nextAt, instance: INSTANCE }) })
          annotate({ 'aibill.resend.outcome': 'retry', 'aibill.resend.next_attempt_at': new Date(nextAt).toISOString() })
          await job.moveToDelayed(nextAt, token)
          throw new DelayedError()
        }
      }
      // A failed job keeps its request, so that it can be put back (POST /resend/jobs/{id}/retry).
      // (Its request stays beside the answer: the one write rewrites it, once in the job's life.)
      const answer = verdict.answer === undefined ? undefined : sealAnswer(id, verdict.answer)
      if (answer !== undefined) await job.updateData({ sealed: job.data.sealed, answer })
      const answerBytes = answer?.length ?? 0
      await job.updateProgress({ ...progress, attempts: attempt, next_attempt_at: undefined, held: undefined, last, history: withAttempt(progress, { ...last, instance: INSTANCE }) })
      footprint.set(id, owner, requestBytes(job) + answerBytes, Date.now() + FAILED_KEEP_SECONDS * 1000).catch(() => {})
      throw new UnrecoverableError(verdict.kind === 'retry' ? 'max_age' : verdict.last.error)
    } finally {
      // The lease goes back, the breaker counts the attempt, and a job tried again later waits from then.
      destinations.settle(host, outcome, { id, owner, probe: admission.probe, nextAt }).catch(() => {})
    }
  }

  /**
   * A delivery finished on another instance that stopped before completing the job: its kept answer's status (the
   * request was dropped in the write that kept it). A job an earlier version dropped may have none: 200 stands for
   * the 2xx it was.
   */
  function deliveredBefore (job: Job<JobData, string>): string {
    // (Its bytes were counted again by the instance that delivered it, right after the drop, or expire with the job.)
    const stored = job.data.answer === undefined ? undefined : sealer.open<StoredAnswer>(`answer:${job.id as string}`, job.data.answer)
    const delivered: Delivered = { attempts: progressOf(job).attempts + 1, last: { at: Date.now(), status: stored?.status ?? 200 }, instance: INSTANCE }
    return JSON.stringify(delivered)
  }

  /** A job the policy refuses now (or whose answer is too large): it fails at once, kept for the operator. */
  async function failAtOnce (job: Job<JobData, string>, progress: Progress, attempt: number, error: string): Promise<never> {
    const last = { at: Date.now(), error }
    await job.updateProgress({ ...progress, attempts: attempt, next_attempt_at: undefined, held: undefined, last, history: withAttempt(progress, { ...last, instance: INSTANCE }) })
    footprint.set(job.id as string, nameOf(job).owner, requestBytes(job), Date.now() + FAILED_KEEP_SECONDS * 1000).catch(() => {})
    throw new UnrecoverableError(error)
  }

  /**
   * A job its destination holds back: back in the queue when its slot may come, with no attempt spent. Its age
   * still counts: at RESEND_MAX_AGE it fails, saying what held it.
   */
  async function hold (job: Job<JobData, string>, token: string | undefined, progress: Progress, admission: Extract<Admission, { go: false }>, host: string): Promise<never> {
    const endsAt = progress.since + options.maxAgeMs
    const { owner } = nameOf(job)
    if (Date.now() >= endsAt) {
      destinations.forget(job.id as string, owner, host).catch(() => {})
      await job.updateProgress({ ...progress, next_attempt_at: undefined, held: undefined, last: { at: Date.now(), error: admission.reason === 'limited' ? 'destination_limit' : 'destination_paused' } })
      footprint.set(job.id as string, owner, requestBytes(job), Date.now() + FAILED_KEEP_SECONDS * 1000).catch(() => {})
      throw new UnrecoverableError('max_age')
    }
    const at = Math.min(Math.round(admission.at), endsAt)
    // What holds it, for its view; a wait for the flow's share is short and frequent, and not written down.
    if (admission.reason !== 'share') await job.updateProgress({ ...progress, next_attempt_at: at, held: admission.reason === 'limited' ? 'limited' : 'paused' })
    annotate({ 'aibill.resend.outcome': 'held', 'aibill.resend.held_by': admission.reason, 'aibill.resend.next_attempt_at': new Date(at).toISOString() })
    await job.moveToDelayed(at, token)
    throw new DelayedError()
  }

  // A worker on every partition. RESEND_WORKERS is shared out among them, at least one each: with more partitions
  // than workers, an instance delivers one job per partition at once.
  const workers = options.concurrency === 0
    ? []
    : tags.map((prefix) => new Worker<JobData, string>('resend', deliverTraced, {
      // Blocking reads wait for Redis instead of failing: a worker outlives an outage.
      connection: createRedisClient(options.redisSettings, { maxRetriesPerRequest: null, enableOfflineQueue: true, retryStrategy: reconnect }),
      prefix,
      telemetry,
      concurrency: Math.ceil(options.concurrency / tags.length),
      lockDuration: options.lockMs,
      stalledInterval: options.lockMs,
      // A job whose instance died mid-delivery goes back to the queue; past this many times it fails.
      maxStalledCount: 10,
      // Deliveries and failures a minute over the last hour, counted by BullMQ's own scripts as jobs end.
      metrics: { maxDataPoints: MetricsTime.ONE_HOUR }
    }))
  for (const worker of workers) {
    worker.on('error', (err) => { options.onError?.(err) })
    worker.on('completed', (job) => {
      const delivered = JSON.parse(job.returnvalue) as Delivered
      options.onJob?.('delivered', delivered.attempts)
      redis.zrem(since, job.id as string).catch(() => {})
    })
    worker.on('failed', (job) => {
      // (BullMQ's type allows no job; a worker's own failures come as 'error'.)
      const failed = job as Job
      options.onJob?.('failed', progressOf(failed).attempts)
      redis.zrem(since, failed.id as string).catch(() => {})
      // Failed before its turn (unreadable, refused by the policy, taken over too often): it waits no more.
      destinations.forget(failed.id as string, nameOf(failed).owner, hostOf(failed)).catch(() => {})
      const progress = progressOf(failed)
      options.onFailed?.({ id: failed.id as string, host: hostOf(failed), destination: nameOf(failed).destination, error: progress.last?.error ?? failed.failedReason, attempts: progress.attempts })
    })
  }

  async function find (id: string, owner: string | null): Promise<Job<JobData, string>> {
    const job = await deadline(locate(id))
    // Another caller's job is as absent as one that never was.
    if (job === undefined || (owner !== null && nameOf(job).owner !== owner)) throw new ServiceError('NOT_FOUND', { resource: 'job', id })
    return job
  }


  /** One job's view, with the destination's answer when one was kept. */
  async function withAnswer (view: JobView, job: Job<JobData, string>): Promise<JobView> {
    if (view.status !== 'delivered' && view.status !== 'failed') return view
    const stored = await answerOf(job)
    if (stored !== undefined) view.answer = { status: stored.status, body: stored.raw !== undefined ? new RawJson(stored.raw) : stored.body }
    return view
  }

  async function current (job: Job<JobData, string>): Promise<JobView> {
    const status = statusOf(await deadline(job.getState()))
    // It ended between the two reads: its fields are read again, now that they are final.
    /* c8 ignore next 3 - the window between reading a job and reading its state */
    if ((status === 'delivered' || status === 'failed') && job.finishedOn === undefined) {
      job = await deadline(locate(job.id as string)) as Job<JobData, string>
    }
    return await withAnswer({ ...viewOf(job, status, options.statusPath), history: historyOf(job, status) }, job)
  }

  const fingerprintOf = (request: string): string => createHmac('sha256', idempotencySecret).update(request).digest('base64url')

  /** The job an Idempotency-Key named before: the same request gets it again, another is 422. */
  async function replay (job: Job<JobData, string>, fingerprint: string): Promise<{ view: JobView, replayed: boolean }> {
    if (nameOf(job).fingerprint !== fingerprint) throw new ServiceError('IDEMPOTENCY_KEY_REUSED', { reason: 'this Idempotency-Key came with another request (compared as data) for a job that is still kept' })
    return { view: await current(job), replayed: true }
  }

  async function add (queue: Queue<JobData, string>, id: string, name: string, sealed: string, owner: string): Promise<Job<JobData, string>> {
    const bytes = sealed.length + name.length + JOB_OVERHEAD_BYTES
    const refused = await deadline(footprint.reserve(id, owner, bytes, Date.now() + options.maxAgeMs + FAILED_KEEP_SECONDS * 1000, ownerMaxBytes(owner)))
    if (refused === 'queue_full') throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'queue_full', limit: options.maxQueuedBytes, variable: 'RESEND_MAX_QUEUED_BYTES' })
    if (refused === 'owner_full') throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'queue_full', limit: ownerMaxBytes(owner), variable: 'max_queued_bytes' })
    try {
      const job = await deadline(queue.add(name, { sealed }, { jobId: id, attempts: 1, removeOnComplete: { age: DELIVERED_KEEP_SECONDS }, removeOnFail: { age: FAILED_KEEP_SECONDS } }))
      noteWrite()
      return job
    } catch (err) {
      // The bytes were counted for a job that was not stored: they are not kept counting.
      noteWrite((err as ServiceError).cause)
      await footprint.release(id).catch(() => {})
      throw err
    }
  }

  /** A failed job back in the queue, with a new RESEND_MAX_AGE; 409 unless it failed. */
  async function putBack (job: Job<JobData, string>): Promise<void> {
    const id = job.id as string
    const state = await deadline(job.getState())
    if (state !== 'failed') throw new ServiceError('CONFLICT', { reason: `the job is ${statusOf(state)}: only a failed job is put back`, status: statusOf(state) })
    await deadline(job.updateProgress({ ...progressOf(job), since: Date.now(), next_attempt_at: undefined }))
    // Its last answer goes with its end (an earlier version's under its own key too).
    if (job.data.answer !== undefined) await deadline(job.updateData({ sealed: job.data.sealed }))
    await deadline(redis.del(`resend-answer:${id}`))
    await deadline(footprint.set(id, nameOf(job).owner, requestBytes(job), Date.now() + options.maxAgeMs + FAILED_KEEP_SECONDS * 1000))
    await deadline(job.retry('failed'))
    redis.zadd(since, Date.now(), id).catch(() => {})
    destinations.waiting(id, nameOf(job).owner, hostOf(job), Date.now()).catch(() => {})
    options.onJob?.('retried')
  }

  /** A queued job removed; 409 once it is delivering or has ended. */
  async function remove (job: Job<JobData, string>): Promise<JobView> {
    const id = job.id as string
    const state = await deadline(job.getState())
    if (statusOf(state) !== 'queued') throw new ServiceError('CONFLICT', { reason: `the job is ${statusOf(state)}: only a queued job is cancelled`, status: statusOf(state) })
    const view = viewOf(job, 'queued', options.statusPath)
    // A job an instance took a moment ago is locked: remove refuses it, and it is delivering.
    await deadline(job.remove()).catch(() => { throw new ServiceError('CONFLICT', { reason: 'the job is delivering: only a queued job is cancelled', status: 'delivering' }) })
    redis.zrem(since, id).catch(() => {})
    footprint.release(id).catch(() => {})
    destinations.forget(id, nameOf(job).owner, hostOf(job)).catch(() => {})
    options.onJob?.('cancelled', view.attempts)
    return { ...view, status: 'cancelled', next_attempt_at: null }
  }

  /**
   * `act` on each job of the status the filter matches (the caller's own in broker mode), newest first, up to the
   * filter's limit; each state read BULK_SCAN jobs deep at most. A job that changed meanwhile (409) is left out.
   */
  /** The jobs a filter matches, up to its limit, each acted on; without an act, only their ids (a count to confirm). */
  async function eachMatching (owner: string | null, filter: JobFilter, status: 'failed' | 'queued', act?: (job: Job<JobData, string>) => Promise<void>): Promise<string[]> {
    const touched: string[] = []
    const matches = (name: string, at: number): boolean => {
      const job = nameOf({ name })
      if (owner !== null && job.owner !== owner) return false
      if (filter.destination !== undefined && job.destination !== filter.destination && !job.destination.startsWith(filter.destination.endsWith('/') ? filter.destination : `${filter.destination}/`)) return false
      return (filter.since === undefined || at >= filter.since) && (filter.until === undefined || at < filter.until)
    }
    for (const queue of queues) {
      for (let start = 0; start < BULK_SCAN && touched.length < filter.limit; start += LIST_SCAN) {
        const ids = await deadline(queue.getRanges(STATES[status], start, start + LIST_SCAN - 1, false))
        if (ids.length === 0) break
        const pipeline = client.pipeline()
        for (const id of ids) pipeline.hmget(queue.toKey(id), 'name', status === 'failed' ? 'finishedOn' : 'timestamp')
        const rows = await deadline(pipeline.exec()) as Array<[Error | null, Array<string | null>]>
        const wanted = ids.filter((_id, index) => {
          const [name, at] = (rows[index] as [Error | null, Array<string | null>])[1]
          return typeof name === 'string' && matches(name, Number(at))
        }).slice(0, filter.limit - touched.length)
        if (act === undefined) touched.push(...wanted)
        for (const id of act === undefined ? [] : wanted) {
          const job = await deadline(queue.getJob(id))
          /* c8 ignore next - removed between the listing and this read */
          if (job === undefined) continue
          const done = await (act as (job: Job<JobData, string>) => Promise<void>)(job).then(() => true, (err: unknown) => {
            /* c8 ignore next 2 - the window between listing a job and acting on it (it started, or ended) */
            if ((err as ServiceError).code === 'CONFLICT') return false
            throw err
          })
          if (done) touched.push(id)
        }
        if (ids.length < LIST_SCAN) break
      }
    }
    return touched
  }

  return {
    async accept (prepared, owner, idempotency) {
      if (snapshot.counts.queued + acceptedSinceSnapshot >= options.maxQueued) {
        throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'queue_full', limit: options.maxQueued, variable: 'RESEND_MAX_QUEUED' })
      }
      const shared = owner ?? OWNER_SHARED
      const id = idempotency === undefined ? randomUUID() : idempotentJobId(idempotencySecret, shared, idempotency.key)
      const fingerprint = idempotency === undefined ? '' : fingerprintOf(idempotency.request)
      if (idempotency !== undefined) {
        // In any partition: the same key with a request to another host is the same key.
        const earlier = await deadline(locate(id))
        if (earlier !== undefined) return await replay(earlier, fingerprint)
      }
      const payload: Payload = { location: prepared.url.href, method: prepared.method, headers: prepared.headers, body: prepared.body, feishuApp: prepared.feishuApp, clientToken: randomUUID() }
      const name = jobName({ owner: shared, destination: `${prepared.url.host}${prepared.url.pathname}`, fingerprint, nonce: randomUUID() })
      const queue = queueFor(prepared.url.host)
      const job = await add(queue, id, name, sealer.sealBytes(`job:${id}`, packPayload(payload)), shared)
      if (idempotency !== undefined) {
        // Another request with the same key may have stored the job first (BullMQ adds an id once): its job it is.
        const stored = await deadline(queue.getJob(id)) as Job<JobData, string>
        if (stored.name !== name) return await replay(stored, fingerprint)
      }
      acceptedSinceSnapshot++
      redis.zadd(since, job.timestamp, id).catch(() => {})
      // Its flow has a job waiting from now: other flows' shares make room for it.
      destinations.waiting(id, shared, prepared.url.host, Date.now()).catch(() => {})
      options.onJob?.('accepted')
      return { view: viewOf(job, 'queued', options.statusPath), replayed: false }
    },
    async get (id, owner) {
      return await current(await find(id, owner))
    },
    async list (owner, status, limit, idempotencyKey) {
      if (idempotencyKey !== undefined) {
        const job = await deadline(locate(idempotentJobId(idempotencySecret, owner ?? OWNER_SHARED, idempotencyKey)))
        const view = job === undefined ? undefined : await current(job)
        return view === undefined || (status !== undefined && view.status !== status) ? [] : [view]
      }
      const views: JobView[] = []
      for (const [queue, wanted] of queues.flatMap((queue) => (status === undefined ? JOB_STATUSES : [status]).map((wanted) => [queue, wanted] as const))) {
        // Ids first, then each job's small fields in one round trip (one slot: the partition's): never its request
        // or its answer.
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
      await putBack(job)
      return await current(job)
    },
    async cancel (id, owner) {
      const job = await find(id, owner)
      return await remove(job)
    },
    async retryMany (owner, filter) {
      return await eachMatching(owner, filter, 'failed', async (job) => { await putBack(job) })
    },
    async countMany (owner, filter, status) {
      return (await eachMatching(owner, filter, status)).length
    },
    async cancelMany (owner, filter) {
      return await eachMatching(owner, filter, 'queued', async (job) => { await remove(job) })
    },
    snapshot: () => snapshot,
    get writesRefused () { return writesRefused },
    destinations,
    async listDestinations (owner) { return await deadline(destinations.list(owner)) },
    async throughput () {
      const now = Date.now()
      const read = async (type: 'completed' | 'failed'): Promise<number[]> =>
        addSeries(await deadline(Promise.all(queues.map(async (queue) => perMinute(await queue.getMetrics(type, 0, THROUGHPUT_MINUTES - 1), now)))))
      return { delivered: await read('completed'), failed: await read('failed') }
    },
    async probe () {
      // Every slot the queue writes to: each partition's, and the byte count's.
      const found = await Promise.all([...tags, `{${options.keyPrefix}resend-bytes}`].map(async (tag) => await probeRedis(client, `${tag}:probe`)))
      const failed = found.find((probe) => probe.status !== 'ok')
      noteWrite(failed?.error)
      return failed === undefined ? 'ok' : `degraded: ${failed.status}`
    },
    async close () {
      clearInterval(snapshotTimer)
      // Deliveries in flight finish within the grace; past it (or with Redis away, when closing would wait for
      // it) the connections are cut, and the jobs' locks lapse for another instance to take them over.
      let timer: NodeJS.Timeout | undefined
      const grace = new Promise<void>((resolve) => { timer = setTimeout(resolve, options.closeGraceMs) })
      await Promise.race([Promise.all([...workers.map(async (worker) => { await worker.close() }), ...queues.map(async (queue) => { await queue.close() })]), grace]).catch(() => {})
      clearTimeout(timer)
      closing = true
      // Disconnecting waits for a Redis that is away too: it is not waited for.
      Promise.all([...workers.map(async (worker) => { await worker.disconnect() }), ...queues.map(async (queue) => { await queue.disconnect() })]).catch(() => {})
      client.disconnect()
    }
  }
}
