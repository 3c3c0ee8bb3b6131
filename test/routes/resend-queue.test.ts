import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { startPausableProxy } from '../fixtures/pausable-proxy.js'
import { API_KEY, build, REDIS_URL, redisKeyPrefix, registerSecret, sendJson, skipWithoutRedis, startRedisServer, startUpstream, testKeys, type Upstream, type UpstreamHandler } from '../helper.js'

const skip = await skipWithoutRedis()
const SECRET = randomBytes(32).toString('base64')
registerSecret(SECRET)

/** A key prefix of the test's own, its keys removed at the end. */

async function queued (t: Test, handler: UpstreamHandler, config: Record<string, unknown> = {}) {
  const upstream = await startUpstream(t, handler)
  const { app, logs } = await build(t, {
    EXPECTED_COZE_API_KEY: API_KEY,
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL,
    REDIS_KEY_PREFIX: redisKeyPrefix(t, 'queue'),
    RESEND_RETRY_SCHEDULE: '50ms',
    ...config
  })
  const call = async (method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown, headers: Record<string, string> = {}) =>
    await app.inject({ method, url, headers: { 'x-api-key': API_KEY, ...headers }, ...(payload === undefined ? {} : { payload: payload as object }) })
  /** Polls the job until it reaches `status` (or 30 s pass: a loaded machine). */
  const until = async (id: string, status: string) => {
    let data: Record<string, unknown> = {}
    for (let i = 0; i < 600; i++) {
      data = (await call('GET', `/resend/jobs/${id}`)).json().data
      if (data.status === status) return data
      await sleep(50)
    }
    return data
  }
  return { app, logs, upstream, call, until }
}

const at = (upstream: Upstream, path: string): string => `${upstream.url}${path}`

t.test('queued delivery: 202 with a job, delivered through 503s and resets, once', { skip }, async (t) => {
  let calls = 0
  const { call, until, upstream, logs } = await queued(t, (request, res) => {
    calls++
    if (calls === 1) { res.destroy(); return }
    if (calls <= 3) { sendJson(res, 503, { busy: true }); return }
    // Feishu's record ids pass 2^53: the answer is kept as the destination wrote it.
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end('{"code":0,"data":{"id":12345678901234567890}}')
  })
  const res = await call('POST', '/resend', { location: at(upstream, '/records'), params: { a: 1 }, delivery: 'queued' })
  t.equal(res.statusCode, 202)
  const { id, status, status_url: statusUrl } = res.json().data
  t.equal(status, 'queued')
  t.equal(res.headers.location, statusUrl)
  t.equal(res.headers['preference-applied'], 'respond-async')
  t.match(id, /^[0-9a-f-]{36}$/)
  const done = await until(id, 'delivered')
  const read = await call('GET', `/resend/jobs/${String(id)}`)
  t.match(read.body, /"id":12345678901234567890\b/, 'the answer\'s id kept exact')
  t.equal(read.headers['content-type'], 'application/json; charset=utf-8', 'and the answer says it is JSON')
  t.equal(done.status, 'delivered')
  t.equal(done.attempts, 4)
  t.same((done.answer as { status: number }).status, 200)
  t.equal((done.last_attempt as { status: number }).status, 200)
  t.equal(upstream.requests.length, 4)
  t.ok(upstream.requests.every((request) => request.headers['idempotency-key'] === id), 'every attempt carries the job id as Idempotency-Key')
  t.ok(upstream.requests.every((request) => request.body === '{"a":1}'))
  t.notOk(logs.text.includes(SECRET))
  const listed = (await call('GET', '/resend/jobs?status=delivered')).json().data.jobs
  t.same(listed.map((job: { id: string, attempts: number, answer?: unknown }) => [job.id, job.attempts, job.answer]), [[id, 4, undefined]], 'a listing is summaries: no answer')
  t.equal((await call('GET', '/ready')).json().data.checks.resend_queue, 'ok')
  t.match((await call('GET', '/metrics')).body, /resend_jobs_total\{outcome="delivered"\} 1/)
})

t.test('Prefer: respond-async queues; Idempotency-Key gives the same job, or 422 with another body', { skip }, async (t) => {
  const { call, until, upstream } = await queued(t, (_request, res) => { sendJson(res, 200, { ok: true }) })
  const body = { location: at(upstream, '/x'), params: { n: 1 } }
  const first = await call('POST', '/resend', body, { prefer: 'respond-async, wait=5', 'idempotency-key': 'order-1' })
  t.equal(first.statusCode, 202)
  const own = await call('POST', '/resend', { ...body, headers: { 'Idempotency-Key': 'the-callers-own' }, delivery: 'queued' })
  await until(own.json().data.id, 'delivered')
  t.ok(upstream.requests.some((request) => request.headers['idempotency-key'] === 'the-callers-own'), 'a caller\'s own Idempotency-Key is sent as it is')
  const again = await call('POST', '/resend', body, { prefer: 'respond-async', 'idempotency-key': 'order-1' })
  t.equal(again.statusCode, 202)
  t.equal(again.json().data.id, first.json().data.id)
  t.equal(again.headers['idempotent-replayed'], 'true')
  const other = await call('POST', '/resend', { ...body, params: { n: 2 } }, { prefer: 'respond-async', 'idempotency-key': 'order-1' })
  t.equal(other.statusCode, 422)
  t.equal(other.json().data.error, 'IDEMPOTENCY_KEY_REUSED')
  const now = await call('POST', '/resend', body, { prefer: 'return=minimal' })
  t.equal(now.statusCode, 200, 'any other preference is delivery now')
})

t.test('a 4xx fails the job at once with the answer kept; retry puts it back; 409 otherwise', { skip }, async (t) => {
  let refuse = true
  const { call, until, upstream } = await queued(t, (_request, res) => {
    if (refuse) sendJson(res, 403, { code: 91403, msg: 'forbidden' })
    else sendJson(res, 200, { code: 0 })
  })
  const { id } = (await call('POST', '/resend', { location: at(upstream, '/y'), params: {}, delivery: 'queued' })).json().data
  const failed = await until(id, 'failed')
  t.equal(failed.attempts, 1)
  t.same(failed.answer, { status: 403, body: { code: 91403, msg: 'forbidden' } })
  t.same((await call('DELETE', `/resend/jobs/${id}`)).json().data.status, 'failed', '409 names the status')
  // As curl sends it: Content-Type: application/json and no body.
  const asCurl = await call('DELETE', `/resend/jobs/${id}`, '', { 'content-type': 'application/json' })
  t.same([asCurl.statusCode, asCurl.json().message], [409, '任务当前为 failed 状态，不允许此操作'], 'an empty body is no body, and the message is Chinese throughout')
  const listed = await call('GET', '/resend/jobs?status=failed&limit=5')
  t.equal(listed.statusCode, 200, listed.body)
  const list = listed.json().data.jobs
  t.same(list.map((job: { id: string }) => job.id), [id])
  refuse = false
  const retried = await call('POST', `/resend/jobs/${id}/retry`, '', { 'content-type': 'application/json' })
  t.equal(retried.statusCode, 200, 'retry with an empty JSON body, as curl sends it')
  t.equal((await until(id, 'delivered')).status, 'delivered')
  const replay = await call('POST', `/resend/jobs/${id}/retry`)
  t.equal(replay.statusCode, 409, 'a delivered job is not replayed')
  t.equal(replay.json().data.status, 'delivered')
  t.equal(upstream.requests.length, 2)
})

t.test('bad input is answered before anything is stored', { skip }, async (t) => {
  const { call, upstream, app } = await queued(t, (_request, res) => { sendJson(res, 200, {}) })
  const refused = await call('POST', '/resend', { location: 'https://elsewhere.example/x', params: {}, delivery: 'queued' })
  t.equal(refused.statusCode, 403)
  const command = await call('POST', '/resend', { location: at(upstream, '/x'), params: { a: 1 }, commands: { json_parse: ['$.params.a'] }, delivery: 'queued' })
  t.equal(command.statusCode, 400)
  const notAnId = await call('GET', '/resend/jobs/not-a-job')
  t.equal(notAnId.statusCode, 400)
  t.equal(notAnId.json().data.reason, 'id is not valid: it takes the job id POST /resend gave (a UUID)', 'what an id is, not a pattern')
  t.equal((await call('GET', '/resend/jobs?limit=0')).json().data.reason, 'limit is not valid: it takes a whole number from 1 to 100')
  t.equal((await call('GET', `/resend/jobs/${randomUUID()}`)).statusCode, 404)
  t.equal((await call('POST', `/resend/jobs/${randomUUID()}/retry`)).statusCode, 404)
  const unauthorized = await app.inject({ method: 'GET', url: `/resend/jobs/${randomUUID()}` })
  t.equal(unauthorized.statusCode, 401)
  t.equal((await call('GET', '/resend/jobs')).json().data.jobs.length, 0, 'nothing was stored')
  t.equal(upstream.requests.length, 0)
})

t.test('without RESEND_QUEUE_SECRET, queued delivery is 503 naming it and /ready says so', async (t) => {
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, 200, {}) })
  const { app } = await build(t, { ROUTES: 'resend', EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}` })
  const res = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${upstream.url}/x`, params: {}, delivery: 'queued' } })
  t.equal(res.statusCode, 503)
  t.equal(res.json().data.error, 'NOT_CONFIGURED')
  t.same(res.json().data.missing, ['RESEND_QUEUE=redis', 'RESEND_QUEUE_SECRET'])
  const ready = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 200, ready.body)
  t.match(ready.json().data.checks.resend_queue, /^off: RESEND_QUEUE=redis, RESEND_QUEUE_SECRET/)
  t.equal(upstream.requests.length, 0)
})

t.test('a queued job waits as the destination asks, and fails past RESEND_MAX_AGE with its last error', { skip }, async (t) => {
  const handler: UpstreamHandler = (request, res) => {
    if (request.url === '/slow-down') { res.writeHead(429, { 'retry-after': '3', 'content-type': 'application/json' }); res.end('{}'); return }
    sendJson(res, 502, { down: true })
  }
  const { call, upstream } = await queued(t, handler, { RESEND_RETRY_SCHEDULE: '100ms' })
  const asked = (await call('POST', '/resend', { location: at(upstream, '/slow-down'), params: {}, delivery: 'queued' })).json().data.id
  let waiting: Record<string, unknown> = {}
  for (let i = 0; i < 100 && waiting.last_attempt == null; i++) {
    await sleep(50)
    waiting = (await call('GET', `/resend/jobs/${String(asked)}`)).json().data
  }
  const last = waiting.last_attempt as { at: string, status: number, error: string }
  t.equal(waiting.status, 'queued')
  t.ok(Date.parse(waiting.next_attempt_at as string) - Date.parse(last.at) >= 2300, 'Retry-After: 3 is waited out, not the 100 ms of the schedule')
  t.same(last, { at: last.at, status: 429, error: 'UPSTREAM_ERROR' })
  const cancelled = await call('DELETE', `/resend/jobs/${String(asked)}`)
  t.equal(cancelled.statusCode, 200)
  t.equal(cancelled.json().data.status, 'cancelled')
  t.equal((await call('GET', `/resend/jobs/${String(asked)}`)).statusCode, 404, 'a cancelled job is gone')
  t.equal(upstream.requests.length, 1)

  // (Its breaker would pause the host after five 502s: this is about the age, so it is set out of the way.)
  const short = await queued(t, handler, { RESEND_MAX_AGE: '1s', RESEND_RETRY_SCHEDULE: '100ms', RESEND_BREAKER_FAILURES: 1000 })
  const old = (await short.call('POST', '/resend', { location: at(short.upstream, '/down'), params: {}, delivery: 'queued' })).json().data.id
  const failed = await short.until(old, 'failed')
  t.ok((failed.attempts as number) >= 3, `tried on the schedule (${String(failed.attempts)})`)
  t.equal((failed.last_attempt as { status: number }).status, 502)
  t.same(failed.answer, { status: 502, body: { down: true } })
  const beyond = (await short.call('POST', '/resend', { location: at(short.upstream, '/slow-down'), params: {}, delivery: 'queued' })).json().data.id
  const refused = await short.until(beyond, 'failed')
  t.equal(refused.attempts, 2, `a wait asked beyond RESEND_MAX_AGE makes one last attempt when the age runs out (${JSON.stringify(refused)})`)
  const [first, lastTry] = short.upstream.requests.filter((request) => request.url === '/slow-down').map((_request, index) => index)
  t.same([first, lastTry], [0, 1], 'two attempts reached the destination')
  const lastAt = Date.parse((refused.last_attempt as { at: string }).at)
  t.ok(lastAt - Date.parse(refused.created_at as string) >= 900, 'the last attempt waited for the end of RESEND_MAX_AGE')
})

t.test('RESEND_MAX_QUEUED bounds the queue; a Redis that does not answer is a 503, never a hang', { skip }, async (t) => {
  const { call, upstream } = await queued(t, (_request, res) => { sendJson(res, 503, {}) }, { RESEND_MAX_QUEUED: 1, RESEND_RETRY_SCHEDULE: '1h' })
  t.equal((await call('POST', '/resend', { location: at(upstream, '/a'), params: {}, delivery: 'queued' })).statusCode, 202)
  const full = await call('POST', '/resend', { location: at(upstream, '/b'), params: {}, delivery: 'queued' })
  t.equal(full.statusCode, 503)
  t.same(full.json().data, { error: 'SERVICE_UNAVAILABLE', reason: 'queue_full', limit: 1, variable: 'RESEND_MAX_QUEUED' })

  const redis = await startRedisServer(t)
  const away = await queued(t, (_request, res) => { sendJson(res, 200, {}) }, { REDIS_URL: redis.url, SHUTDOWN_GRACE_MS: 500 })
  await redis.stop()
  const started = Date.now()
  const down = await away.call('POST', '/resend', { location: at(away.upstream, '/c'), params: {}, delivery: 'queued' })
  t.equal(down.statusCode, 503)
  t.equal(down.json().data.reason, 'queue_unavailable')
  t.ok(Date.now() - started < 5000, 'promptly')
  t.equal((await away.call('GET', `/resend/jobs/${randomUUID()}`)).statusCode, 503)
  let queueCheck = ''
  for (let i = 0; i < 50 && !queueCheck.startsWith('degraded'); i++) {
    await sleep(50)
    queueCheck = (await away.call('GET', '/ready')).json().data.checks.resend_queue
  }
  t.equal(queueCheck, 'degraded: does not answer', '/ready says so (degraded: ready for delivery now)')
})

t.test('a Redis that stops answering without closing: queued delivery is a 503 within the deadline, never a hang', { skip }, async (t) => {
  const { hostname, port } = new URL(REDIS_URL)
  const proxy = await startPausableProxy(t, { host: hostname, port: Number(port || 6379) })
  const silent = await queued(t, (_request, res) => { sendJson(res, 200, {}) }, { REDIS_URL: `redis://127.0.0.1:${proxy.port}`, SHUTDOWN_GRACE_MS: 500 })
  const { id } = (await silent.call('POST', '/resend', { location: at(silent.upstream, '/a'), params: {}, delivery: 'queued' })).json().data
  proxy.pause()
  t.teardown(() => { proxy.resume() })
  for (const [method, url, payload] of [['POST', '/resend', { location: at(silent.upstream, '/b'), params: {}, delivery: 'queued' }], ['GET', `/resend/jobs/${String(id)}`, undefined], ['GET', '/resend/jobs', undefined]] as const) {
    const started = Date.now()
    const res = await silent.call(method, url, payload)
    t.equal(res.statusCode, 503, `${method} ${url}`)
    t.ok(Date.now() - started < 4500, `answered in ${Date.now() - started} ms`)
  }
  const now = await silent.call('POST', '/resend', { location: at(silent.upstream, '/c'), params: {} })
  t.equal(now.statusCode, 200, 'delivery now goes on')
})

t.test('the oldest age never counts a job that ended: a left-over entry is removed', { skip }, async (t) => {
  const prefix = redisKeyPrefix(t, 'oldest')
  const redis = new Redis(REDIS_URL)
  t.teardown(() => { redis.disconnect() })
  // As if a job ended while Redis did not take the removal of its entry.
  await redis.zadd(`${prefix}resend-pending`, Date.now() - 3_600_000, randomUUID())
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, 503, {}) })
  const { app } = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`, RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: SECRET, REDIS_URL, REDIS_KEY_PREFIX: prefix, RESEND_WORKERS: 0 })
  t.match((await app.inject('/metrics')).body, /\nresend_queue_oldest_age_seconds 0\n/)
  t.equal(await redis.zcard(`${prefix}resend-pending`), 0, 'the entry is gone')
  await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${upstream.url}/x`, params: {}, delivery: 'queued' } })
  t.equal(await redis.zcard(`${prefix}resend-pending`), 1, 'a job waiting is counted')
  await sleep(20)
  const next = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`, RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: SECRET, REDIS_URL, REDIS_KEY_PREFIX: prefix, RESEND_WORKERS: 0 })
  const age = Number(/\nresend_queue_oldest_age_seconds (\S+)\n/.exec((await next.app.inject('/metrics')).body)?.[1])
  t.ok(age > 0 && age < 60, `its age is read (${age} s)`)
})

t.test('a Redis that may evict, or too small for the bound on bytes, is named at start (from INFO: ElastiCache refuses CONFIG)', { skip }, async (t) => {
  const redis = await startRedisServer(t, ['--maxmemory-policy', 'allkeys-lru', '--maxmemory', '100mb'])
  const { logs } = await queued(t, (_request, res) => { sendJson(res, 200, {}) }, { REDIS_URL: redis.url })
  t.match(logs.text, /maxmemory-policy is allkeys-lru: queued jobs and their locks may be evicted; set it to noeviction/)
  t.match(logs.text, /RESEND_MAX_QUEUED_BYTES \(268435456\) is over 80 % of Redis's maxmemory \(104857600\)/)
  const elastiCache = await startRedisServer(t, ['--rename-command', 'CONFIG', '', '--maxmemory-policy', 'noeviction'])
  const fine = await queued(t, (_request, res) => { sendJson(res, 200, {}) }, { REDIS_URL: elastiCache.url })
  t.notMatch(fine.logs.text, /maxmemory/, 'without CONFIG, INFO tells: noeviction and no maxmemory, nothing to say')
})

t.test('the destination is checked again before each attempt: one the allow-list no longer names fails the job', { skip }, async (t) => {
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, 200, {}) })
  const prefix = redisKeyPrefix(t, 'queue')
  const common = { EXPECTED_COZE_API_KEY: API_KEY, RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: SECRET, REDIS_URL, REDIS_KEY_PREFIX: prefix }
  const before = await build(t, { ...common, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`, RESEND_WORKERS: 0 })
  const { id } = (await before.app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${upstream.url}/x`, params: {}, delivery: 'queued' } })).json().data
  const after = await build(t, { ...common, RESEND_ALLOWED_HOSTS: 'open.feishu.cn' })
  let view: Record<string, unknown> = {}
  for (let i = 0; i < 100 && view.status !== 'failed'; i++) {
    await sleep(50)
    view = (await after.app.inject({ method: 'GET', url: `/resend/jobs/${String(id)}`, headers: { 'x-api-key': API_KEY } })).json().data
  }
  t.equal(view.status, 'failed')
  t.equal((view.last_attempt as { error: string }).error, 'DESTINATION_NOT_ALLOWED')
  t.equal(upstream.requests.length, 0)
})

t.test('a job sealed under another secret is unreadable: it fails, and says so', { skip }, async (t) => {
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, 200, {}) })
  const prefix = redisKeyPrefix(t, 'queue')
  const common = { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`, RESEND_QUEUE: 'redis', REDIS_URL, REDIS_KEY_PREFIX: prefix }
  const other = randomBytes(32).toString('base64')
  registerSecret(other)
  const accepting = await build(t, { ...common, RESEND_QUEUE_SECRET: SECRET, RESEND_WORKERS: 0 })
  const res = await accepting.app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${upstream.url}/x`, params: {}, delivery: 'queued' } })
  const { id } = res.json().data
  const waiting = (await accepting.app.inject({ method: 'GET', url: '/resend/jobs', headers: { 'x-api-key': API_KEY } })).json().data.jobs
  t.same(waiting.map((job: { id: string, status: string, attempts: number, last_attempt: unknown }) => [job.id, job.status, job.attempts, job.last_attempt]), [[id, 'queued', 0, null]], 'RESEND_WORKERS=0 accepts and delivers nothing')
  t.match((await accepting.app.inject('/metrics')).body, /resend_queue_jobs\{status="queued"\} \d/)
  const delivering = await build(t, { ...common, RESEND_QUEUE_SECRET: other })
  let view: Record<string, unknown> = {}
  for (let i = 0; i < 100 && view.status !== 'failed'; i++) {
    await sleep(50)
    view = (await delivering.app.inject({ method: 'GET', url: `/resend/jobs/${String(id)}`, headers: { 'x-api-key': API_KEY } })).json().data
  }
  t.equal(view.status, 'failed')
  t.equal(view.destination, `127.0.0.1:${upstream.port}/x`, 'the destination, kept in the clear as the logs show it, its port included')
  t.match((view.last_attempt as { error: string }).error, /^unreadable/)
  t.equal(upstream.requests.length, 0, 'nothing was sent')
})

t.test('broker mode: a caller sees and touches only its own jobs, and names only its Feishu apps', { skip }, async (t) => {
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, 503, {}) })
  const keyA = 'caller-a-key-0123456789abcdef'
  const keyB = 'caller-b-key-0123456789abcdef'
  registerSecret(keyA)
  registerSecret(keyB)
  const sha = (value: string): string => createHash('sha256').update(value).digest('hex')
  const document = {
    apps: { bills: { app_id: '1150000000001', api_base: 'https://api.coze.cn', keys: [{ kid: 'k1', private_key_env: 'APP_KEY' }] } },
    callers: {
      a: { key_sha256: sha(keyA), apps: ['bills'], routes: ['resend'], feishu_apps: ['ledger'] },
      b: { key_sha256: sha(keyB), apps: ['bills'], routes: ['resend'] }
    },
    feishu_apps: { ledger: { app_id: 'cli_ledger', app_secret_env: 'LEDGER_SECRET', base: upstream.url } }
  }
  const { app } = await build(t, {
    COZE_APPS: JSON.stringify(document),
    APP_KEY: testKeys().pkcs8,
    LEDGER_SECRET: 'ledger-secret-0123456789',
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL,
    REDIS_KEY_PREFIX: redisKeyPrefix(t, 'queue'),
    RESEND_RETRY_SCHEDULE: '1h'
  })
  registerSecret('ledger-secret-0123456789')
  const as = async (key: string, method: 'GET' | 'POST' | 'DELETE', url: string, payload?: object) => await app.inject({ method, url, headers: { 'x-api-key': key }, ...(payload === undefined ? {} : { payload }) })
  const { id } = (await as(keyA, 'POST', '/resend', { location: `${upstream.url}/x`, params: {}, delivery: 'queued' })).json().data
  // Once its first attempt is over, it waits (an hour) for the next: queued.
  for (let i = 0; i < 600 && (await as(keyA, 'GET', `/resend/jobs/${String(id)}`)).json().data.last_attempt === null; i++) await sleep(50)
  t.equal((await as(keyA, 'GET', `/resend/jobs/${String(id)}`)).statusCode, 200)
  for (const [method, url] of [['GET', `/resend/jobs/${String(id)}`], ['POST', `/resend/jobs/${String(id)}/retry`], ['DELETE', `/resend/jobs/${String(id)}`]] as const) {
    const res = await as(keyB, method, url)
    t.equal(res.statusCode, 404, `${method} ${url} by another caller`)
  }
  t.same((await as(keyB, 'GET', '/resend/jobs')).json().data.jobs, [])
  t.same((await as(keyA, 'GET', '/resend/jobs?status=queued')).json().data.jobs.map((job: { id: string }) => job.id), [id])
  const forbidden = await as(keyB, 'POST', '/resend', { location: `${upstream.url}/x`, params: {}, auth: { feishu_app: 'ledger' } })
  t.equal(forbidden.statusCode, 403)
  t.equal(forbidden.json().data.reason, 'feishu_app')
})
