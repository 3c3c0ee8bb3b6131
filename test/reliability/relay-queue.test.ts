import { randomBytes, randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { API_KEY, type RecordedRequest, REDIS_URL, redisKeyPrefix, registerSecret, sendJson, skipWithoutRedis, startRedisServer, startUpstream, type Upstream } from '../helper.js'
import { type Started, startServer } from '../fixtures/server-process.js'

// Two instances on one Redis, a Feishu stand-in on loopback: what queued delivery promises, end to end.
const skip = await skipWithoutRedis()
const QUEUE_SECRET = randomBytes(32).toString('base64')
const APP_SECRET = `feishu-app-secret-${randomBytes(8).toString('hex')}`
registerSecret(QUEUE_SECRET)
registerSecret(APP_SECRET)

interface FeishuStandIn {
  upstream: Upstream
  /** How many times each record key was created. */
  records: Map<string, number>
  /** Token fetches, and tokens issued (a fetch while the token is valid gets the same one). */
  fetches: () => number
  issued: () => number
  /** Decides each record creation: apply it or not, and answer or drop the connection. */
  behaviour: (request: RecordedRequest) => 'ok' | '503' | 'reset' | 'apply-then-reset' | 'slow'
}

/**
 * Feishu as the relay meets it: tenant tokens that stop working after `usesPerToken` uses (99991663), and Bitable's
 * batch_create that honours client_token (a repeated token creates nothing).
 */
async function startFeishu (t: Test, usesPerToken: number): Promise<FeishuStandIn> {
  const records = new Map<string, number>()
  const tokens = new Set<string>()
  let current = { value: '', uses: Infinity }
  let fetches = 0
  const seen = new Set<string>()
  const standIn: FeishuStandIn = { upstream: undefined as unknown as Upstream, records, fetches: () => fetches, issued: () => tokens.size, behaviour: () => 'ok' }
  standIn.upstream = await startUpstream(t, async (request, res) => {
    const url = new URL(request.url, 'http://127.0.0.1')
    if (url.pathname === '/open-apis/auth/v3/tenant_access_token/internal') {
      fetches++
      const { app_id: appId, app_secret: secret } = JSON.parse(request.body) as { app_id: string, app_secret: string }
      if (appId !== 'cli_test' || secret !== APP_SECRET) { sendJson(res, 400, { code: 10014, msg: 'app secret invalid' }); return }
      if (current.uses >= usesPerToken) {
        current = { value: `t-${randomBytes(8).toString('hex')}`, uses: 0 }
        tokens.add(current.value)
        registerSecret(current.value)
      }
      sendJson(res, 200, { code: 0, msg: 'ok', tenant_access_token: current.value, expire: 7200 })
      return
    }
    const presented = String(request.headers.authorization).replace(/^Bearer /, '')
    if (presented !== current.value || current.uses >= usesPerToken) { sendJson(res, 400, { code: 99991663, msg: 'Invalid access token for authorization.' }); return }
    current.uses++
    const behaviour = standIn.behaviour(request)
    if (behaviour === '503') { sendJson(res, 503, { code: 1, msg: 'busy' }); return }
    if (behaviour === 'reset') { res.destroy(); return }
    if (behaviour === 'slow') await sleep(1500)
    const clientToken = url.searchParams.get('client_token')
    if (clientToken === null || !seen.has(clientToken)) {
      if (clientToken !== null) seen.add(clientToken)
      for (const record of (JSON.parse(request.body) as { records: Array<{ fields: { key: string } }> }).records) {
        records.set(record.fields.key, (records.get(record.fields.key) ?? 0) + 1)
      }
    }
    if (behaviour === 'apply-then-reset') { res.destroy(); return }
    if (!res.destroyed) sendJson(res, 200, { code: 0, msg: 'success', data: {} })
  })
  return standIn
}


async function instance (t: Test, feishu: FeishuStandIn, prefix: string, env: Record<string, string> = {}): Promise<Started & { url: string }> {
  const started = await startServer(t, {
    ROUTES: 'resend',
    LOG_LEVEL: 'info',
    EXPECTED_COZE_API_KEY: API_KEY,
    RATE_LIMIT_MAX: '1000000',
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${feishu.upstream.port}`,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: QUEUE_SECRET,
    REDIS_URL,
    REDIS_KEY_PREFIX: prefix,
    RESEND_RETRY_SCHEDULE: '20ms,50ms,100ms',
    RESEND_JOB_LOCK_MS: '1000',
    // These tests are about each record arriving once through failures: a third of answers failing would open
    // the destination's breaker, whose pauses are tested on their own (test/reliability/destinations.test.ts).
    RESEND_BREAKER_FAILURES: '1000',
    FEISHU_APPS: JSON.stringify({ bills: { app_id: 'cli_test', app_secret_env: 'FEISHU_BILLS_SECRET', base: `http://127.0.0.1:${feishu.upstream.port}` } }),
    FEISHU_BILLS_SECRET: APP_SECRET,
    ...env
  })
  t.ok(started.url, `the instance started: ${started.url === undefined ? started.output() : 'yes'}`)
  return started as Started & { url: string }
}

async function call (base: string, method: string, path: string, body?: unknown): Promise<{ status: number, data: Record<string, unknown> }> {
  const res = await fetch(`${base}${path}`, { method, headers: { 'x-api-key': API_KEY, ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) })
  return { status: res.status, data: (await res.json() as { data: Record<string, unknown> }).data }
}

const record = (feishu: FeishuStandIn, key: string) => ({
  location: `${feishu.upstream.url}/open-apis/bitable/v1/apps/APP/tables/TBL/records/batch_create`,
  params: { records: [{ fields: { key } }] },
  auth: { feishu_app: 'bills' },
  delivery: 'queued'
})

async function waitFor (check: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(50)
  }
  return await check()
}

t.test('1,000 jobs over two instances while Feishu flaps and its tokens expire: each record once', { skip }, async (t) => {
  const feishu = await startFeishu(t, 150)
  let n = 0
  // A third of the answers go wrong: 503, a reset before applying, or a reset after applying.
  feishu.behaviour = () => (['ok', 'ok', 'ok', 'ok', 'ok', 'ok', '503', 'reset', 'apply-then-reset'] as const)[n++ % 9] as 'ok'
  const prefix = redisKeyPrefix(t, 'relay')
  const [a, b] = await Promise.all([instance(t, feishu, prefix, { RESEND_WORKERS: '8' }), instance(t, feishu, prefix, { RESEND_WORKERS: '8' })])
  const ids: string[] = []
  for (let batch = 0; batch < 1000; batch += 50) {
    const answers = await Promise.all(Array.from({ length: 50 }, async (_, i) => await call(i % 2 === 0 ? a.url : b.url, 'POST', '/resend', record(feishu, `r${batch + i}`))))
    for (const answer of answers) {
      t.equal(answer.status, 202)
      ids.push(answer.data.id as string)
    }
  }
  t.equal(new Set(ids).size, 1000, '1,000 jobs')
  const all = await waitFor(() => feishu.records.size === 1000, 120_000)
  t.ok(all, `every record arrived (${feishu.records.size})`)
  t.same([...feishu.records.values()].filter((count) => count !== 1), [], 'no record twice')
  let delivered = 0
  await waitFor(async () => {
    delivered = 0
    for (let i = 0; i < ids.length; i += 100) {
      const views = await Promise.all(ids.slice(i, i + 100).map(async (id, j) => await call(j % 2 === 0 ? a.url : b.url, 'GET', `/resend/jobs/${id}`)))
      delivered += views.filter((view) => view.data.status === 'delivered').length
    }
    return delivered === 1000
  }, 30_000)
  t.equal(delivered, 1000, 'every status query says delivered')
  t.ok(feishu.issued() >= 2, `tokens expired and were replaced (${feishu.issued()} issued)`)
  t.equal(feishu.fetches(), feishu.issued(), 'one fetch per token, across both instances')
  t.notOk(a.output().includes(APP_SECRET) || b.output().includes(APP_SECRET), 'no secret in the logs')
})

t.test('kill -9 of the delivering instance: the other delivers after the lock expires, once', { skip }, async (t) => {
  const feishu = await startFeishu(t, 1_000_000)
  feishu.behaviour = () => 'slow'
  const prefix = redisKeyPrefix(t, 'relay')
  const a = await instance(t, feishu, prefix, { RESEND_WORKERS: '1' })
  const { data } = await call(a.url, 'POST', '/resend', record(feishu, 'only'))
  t.ok(await waitFor(() => feishu.upstream.requests.some((request) => request.url.includes('batch_create')), 10_000), 'the first instance is delivering')
  a.child.kill('SIGKILL')
  await a.exited
  feishu.behaviour = () => 'ok'
  const b = await instance(t, feishu, prefix, { RESEND_WORKERS: '1' })
  let status: unknown
  t.ok(await waitFor(async () => { status = (await call(b.url, 'GET', `/resend/jobs/${String(data.id)}`)).data.status; return status === 'delivered' }, 20_000), `delivered by the second (${String(status)})`)
  t.same(Object.fromEntries(feishu.records), { only: 1 }, 'the record once')
  const tokens = feishu.upstream.requests.filter((request) => request.url.includes('batch_create')).map((request) => new URL(request.url, 'http://x').searchParams.get('client_token'))
  t.equal(tokens.length, 2)
  t.equal(tokens[0], tokens[1], 'both attempts carried the same client_token')
  t.match(tokens[0], /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
})

t.test('SIGTERM: the delivery in flight finishes, the rest stays queued for another instance', { skip }, async (t) => {
  const feishu = await startFeishu(t, 1_000_000)
  feishu.behaviour = () => 'slow'
  const prefix = redisKeyPrefix(t, 'relay')
  const a = await instance(t, feishu, prefix, { RESEND_WORKERS: '1' })
  const first = (await call(a.url, 'POST', '/resend', record(feishu, 'first'))).data.id as string
  t.ok(await waitFor(() => feishu.upstream.requests.length >= 2, 10_000), 'delivering the first')
  const second = (await call(a.url, 'POST', '/resend', record(feishu, 'second'))).data.id as string
  a.child.kill('SIGTERM')
  t.equal(await a.exited, 0, 'a clean exit')
  t.same(Object.fromEntries(feishu.records), { first: 1 }, 'the first was delivered before the exit; the second was not taken')
  feishu.behaviour = () => 'ok'
  const b = await instance(t, feishu, prefix, { RESEND_WORKERS: '1' })
  t.equal((await call(b.url, 'GET', `/resend/jobs/${first}`)).data.status, 'delivered')
  t.ok(await waitFor(async () => (await call(b.url, 'GET', `/resend/jobs/${second}`)).data.status === 'delivered', 20_000), 'the second, by the next instance')
  t.same(Object.fromEntries(feishu.records), { first: 1, second: 1 })
})

/** Accepts `count` records on the instances in turn, 50 at a time; their job ids. */
async function acceptRecords (t: Test, feishu: FeishuStandIn, urls: string[], count: number, label: string): Promise<string[]> {
  const ids: string[] = []
  for (let batch = 0; batch < count; batch += 50) {
    const answers = await Promise.all(Array.from({ length: Math.min(50, count - batch) }, async (_, i) => await call(urls[i % urls.length] as string, 'POST', '/resend', record(feishu, `${label}${batch + i}`))))
    for (const answer of answers) ids.push(answer.data.id as string)
  }
  t.equal(new Set(ids).size, count, `${count} jobs accepted`)
  return ids
}

for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
  t.test(`${signal} of one of two instances during 200 deliveries: every record once, every job delivered`, { skip }, async (t) => {
    const feishu = await startFeishu(t, 1_000_000)
    // Slow enough that many are in flight when the signal comes.
    let n = 0
    feishu.behaviour = () => (n++ % 3 === 0 ? 'slow' : 'ok')
    const prefix = redisKeyPrefix(t, 'relay')
    const [a, b] = await Promise.all([instance(t, feishu, prefix, { RESEND_WORKERS: '8' }), instance(t, feishu, prefix, { RESEND_WORKERS: '8' })])
    const ids = await acceptRecords(t, feishu, [a.url, b.url], 200, signal)
    t.ok(await waitFor(() => feishu.records.size >= 20, 60_000), 'deliveries under way')
    a.child.kill(signal)
    const code = await a.exited
    if (signal === 'SIGTERM') t.equal(code, 0, 'a clean exit')
    t.ok(await waitFor(() => feishu.records.size === 200, 120_000), `every record arrived (${feishu.records.size})`)
    t.same([...feishu.records.values()].filter((count) => count !== 1), [], 'none twice')
    let delivered = 0
    let others: unknown[] = []
    await waitFor(async () => {
      const views = await Promise.all(ids.map(async (id) => await call(b.url, 'GET', `/resend/jobs/${id}`)))
      delivered = views.filter((view) => view.data.status === 'delivered').length
      others = views.filter((view) => view.data.status !== 'delivered').map((view) => view.data)
      return delivered === 200
    }, 120_000)
    t.equal(delivered, 200, `the survivor reports every job delivered${others.length === 0 ? '' : `; not yet: ${JSON.stringify(others)}`}`)
  })
}

t.test('sealed jobs swapped, truncated or replayed under another id in Redis: refused, never delivered anywhere', { skip }, async (t) => {
  const feishu = await startFeishu(t, 1_000_000)
  const prefix = redisKeyPrefix(t, 'relay')
  const accepting = await instance(t, feishu, prefix, { RESEND_WORKERS: '0' })
  const [first, second, third] = await acceptRecords(t, feishu, [accepting.url], 3, 'tampered') as [string, string, string]
  const redis = new Redis(REDIS_URL)
  t.teardown(() => { redis.disconnect() })
  const key = (id: string): string => `{${prefix}resend}:resend:${id}`
  const [dataFirst, dataSecond, dataThird] = await Promise.all([first, second, third].map(async (id) => await redis.hget(key(id), 'data'))) as [string, string, string]
  // Swapped: each job holds the other's sealed request. Truncated: the third loses its tail.
  await redis.hset(key(first), 'data', dataSecond)
  await redis.hset(key(second), 'data', dataFirst)
  const sealed = (JSON.parse(dataThird) as { sealed: string }).sealed
  await redis.hset(key(third), 'data', JSON.stringify({ sealed: sealed.slice(0, sealed.length - 40) }))
  // Replayed: the first job's original, intact request copied into a new job of another id.
  const replay = randomUUID()
  const fields = await redis.hgetall(key(first))
  await redis.hset(key(replay), { ...fields, data: dataFirst })
  await redis.lpush(`{${prefix}resend}:resend:wait`, replay)
  const delivering = await instance(t, feishu, prefix, { RESEND_WORKERS: '2' })
  for (const id of [first, second, third, replay]) {
    let status: unknown
    let error: unknown
    await waitFor(async () => {
      const view = await call(delivering.url, 'GET', `/resend/jobs/${id}`)
      status = view.data.status
      error = (view.data.last_attempt as { error?: string } | null)?.error
      return status === 'failed'
    }, 30_000)
    t.equal(status, 'failed', `${id === replay ? 'the replay' : id}: failed`)
    t.match(error, /^unreadable/, 'as unreadable')
  }
  t.equal(feishu.upstream.requests.length, 0, 'nothing reached any destination, no token was fetched')
})

t.test('a Redis restarted empty: the service goes on, and /ready and the metrics tell the truth', { skip }, async (t) => {
  const feishu = await startFeishu(t, 1_000_000)
  const redisServer = await startRedisServer(t)
  const a = await instance(t, feishu, 'restart:', { REDIS_URL: redisServer.url, RESEND_WORKERS: '0', STATE_STORE: 'redis', ROUTES: 'resend,augment' })
  const [lost] = await acceptRecords(t, feishu, [a.url], 1, 'before')
  await redisServer.stop()
  await redisServer.start()
  // Back, and empty: the job accepted before is gone (a Redis that keeps nothing on disk), the service is not.
  t.ok(await waitFor(async () => (await call(a.url, 'GET', '/ready')).status === 200, 30_000), '/ready is 200 again')
  const ready = await call(a.url, 'GET', '/ready')
  t.same([ready.data.checks as Record<string, string>].map((checks) => [checks.state_store, checks.resend_queue]), [['ok', 'ok']])
  t.equal((await call(a.url, 'GET', `/resend/jobs/${String(lost)}`)).status, 404, 'the job is gone with the data')
  const after = await call(a.url, 'POST', '/resend', record(feishu, 'after'))
  t.equal(after.status, 202, 'new jobs are accepted')
  let metrics = ''
  await waitFor(async () => {
    metrics = await (await fetch(`${a.url}/metrics`)).text()
    return /\nresend_queue_jobs\{status="queued"\} 1\n/.test(metrics)
  }, 20_000)
  t.match(metrics, /\nresend_queue_jobs\{status="queued"\} 1\n/, 'the counts are Redis\'s, not remembered: the one new job')
  t.match(metrics, /\nredis_up 1\n/)
  t.match(metrics, /\nredis_writes_refused 0\n/)
  const auth = await fetch(`${a.url}/api/auth-url`)
  t.equal(auth.status, 200, 'the sign-in keeps its states in the new Redis')
})
