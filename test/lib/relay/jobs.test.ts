import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { canonicalRequest, idempotentJobId } from '../../../src/lib/relay/idempotency.js'
import { packPayload, unpackPayload, type Payload } from '../../../src/lib/relay/payload.js'
import { createSealer } from '../../../src/lib/redis/index.js'
import { API_KEY, REDIS_URL, build, redisKeyPrefix, registerSecret, sendJson, skipWithoutRedis, startRedisServer, startUpstream, testKeys, type Upstream, type UpstreamHandler } from '../../helper.js'

// The queue's third round: the Idempotency-Key and its job as one write, the bytes the queue keeps in Redis, a
// Redis that refuses writes, and Feishu's tokens only where they belong.
const skip = await skipWithoutRedis()
const SECRET = randomBytes(32).toString('base64')
registerSecret(SECRET)

async function queued (t: Test, handler: UpstreamHandler, settings: Record<string, unknown> | ((upstream: Upstream) => Record<string, unknown>) = {}) {
  const upstream = await startUpstream(t, handler)
  const config = typeof settings === 'function' ? settings(upstream) : settings
  const prefix = typeof config.REDIS_KEY_PREFIX === 'string' ? config.REDIS_KEY_PREFIX : redisKeyPrefix(t, 'jobs')
  const { app, logs } = await build(t, {
    EXPECTED_COZE_API_KEY: API_KEY,
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL,
    RESEND_RETRY_SCHEDULE: '50ms',
    ...config,
    REDIS_KEY_PREFIX: prefix
  })
  const call = async (method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown, headers: Record<string, string> = {}) =>
    await app.inject({ method, url, headers: { 'x-api-key': API_KEY, ...headers }, ...(payload === undefined ? {} : { payload: payload as string }) })
  const until = async (id: string, status: string) => {
    let data: Record<string, unknown> = {}
    for (let i = 0; i < 600; i++) {
      data = (await call('GET', `/resend/jobs/${id}`)).json().data
      if (data.status === status) return data
      await sleep(50)
    }
    return data
  }
  return { app, logs, upstream, call, until, prefix }
}

t.test('the stored request: a small head and the body as bytes; a job of the version before still opens', async (t) => {
  const payload: Payload = { location: 'https://open.feishu.cn/x', method: 'POST', headers: { 'content-type': 'application/json' }, body: '"\\\\"'.repeat(10), clientToken: randomUUID() }
  const packed = packPayload(payload)
  t.same(unpackPayload(packed), payload)
  t.ok(packed.length < payload.body!.length + 200, 'the body is not escaped')
  t.same(unpackPayload(packPayload({ ...payload, body: undefined, method: 'GET' })), { ...payload, body: undefined, method: 'GET' })
  t.same(unpackPayload(packPayload({ ...payload, body: '' })).body, '', 'an empty body is not no body')
  t.same(unpackPayload(Buffer.from(JSON.stringify(payload))), payload, 'the JSON payload of the version before')
})

t.test('the same request as data: key order, white space, the queue preference and exact numbers', async (t) => {
  const a = '{"location":"https://x/y","params":{"b":1,"a":[1.0,"s"]},"delivery":"queued"}'
  const b = '{ "params": { "a": [1, "s"], "b": 1 },\n "location": "https://x/y" }'
  t.equal(canonicalRequest(JSON.parse(a), a), canonicalRequest(JSON.parse(b), b))
  const big = '{"params":{"id":12345678901234567890}}'
  const bigger = '{"params":{"id":12345678901234567891}}'
  t.not(canonicalRequest(JSON.parse(big), big), canonicalRequest(JSON.parse(bigger), bigger), 'ids beyond 2^53 are compared by their digits')
  t.equal(canonicalRequest({ params: { x: 1 }, coze_api_key: 'k' }, '{}'), canonicalRequest({ params: { x: 1 } }, '{}'), 'the key is not the request')
  const id = idempotentJobId(randomBytes(32), '*', 'order-1')
  t.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a job id as the routes take it')
})

t.test('Idempotency-Key: compared as data, found by its key, its own caller only; 20 at once make one job', { skip }, async (t) => {
  const { call, until, upstream } = await queued(t, (_request, res) => { sendJson(res, 200, { ok: true }) })
  const location = `${upstream.url}/x`
  const first = await call('POST', '/resend', `{"location":"${location}","params":{"n":1,"m":[1,2]},"delivery":"queued"}`, { 'idempotency-key': 'order-7', 'content-type': 'application/json' })
  t.equal(first.statusCode, 202)
  t.equal(first.json().message, '已加入重发队列')
  const { id } = first.json().data
  // The same request, serialized again and asked with Prefer instead of "delivery".
  const again = await call('POST', '/resend', `{ "params": { "m": [1, 2], "n": 1.0 },\n  "location": "${location}" }`, { 'idempotency-key': 'order-7', prefer: 'respond-async', 'content-type': 'application/json' })
  t.equal(again.statusCode, 202)
  t.equal(again.json().data.id, id)
  t.equal(again.headers['idempotent-replayed'], 'true')
  await until(id, 'delivered')
  const delivered = await call('POST', '/resend', { location, params: { n: 1, m: [1, 2] }, delivery: 'queued' }, { 'idempotency-key': 'order-7' })
  t.same([delivered.statusCode, delivered.json().data.status, delivered.json().message], [202, 'delivered', '此 Idempotency-Key 的任务已存在'], 'a replay of a delivered job says what it is')
  const other = await call('POST', '/resend', { location, params: { n: 2 }, delivery: 'queued' }, { 'idempotency-key': 'order-7' })
  t.equal(other.statusCode, 422)
  t.equal(other.json().data.error, 'IDEMPOTENCY_KEY_REUSED')
  const found = (await call('GET', '/resend/jobs?idempotency_key=order-7')).json().data.jobs
  t.same(found.map((job: { id: string, status: string }) => [job.id, job.status]), [[id, 'delivered']])
  t.same((await call('GET', '/resend/jobs?idempotency_key=order-7&status=failed')).json().data.jobs, [], 'and by status')
  t.same((await call('GET', '/resend/jobs?idempotency_key=never-used')).json().data.jobs, [])
  t.equal((await call('GET', '/resend/jobs?idempotency_key=has%20space')).statusCode, 400)

  const answers = await Promise.all(Array.from({ length: 20 }, async () => await call('POST', '/resend', { location, params: { burst: true }, delivery: 'queued' }, { 'idempotency-key': 'burst' })))
  t.same(new Set(answers.map((answer) => answer.statusCode)), new Set([202]))
  t.equal(new Set(answers.map((answer) => answer.json().data.id)).size, 1, 'one job')
  t.equal(answers.filter((answer) => answer.headers['idempotent-replayed'] === undefined).length, 1, 'one acceptance, the others replays')
  await until(answers[0]?.json().data.id, 'delivered')
  t.equal(upstream.requests.filter((request) => request.body === '{"burst":true}').length, 1, 'one delivery')
})

t.test('the key and its job are one write: a job Redis would not store leaves no key, and the retry is delivered once', { skip }, async (t) => {
  const redis = await startRedisServer(t)
  const { call, until, upstream, prefix } = await queued(t, (_request, res) => { sendJson(res, 200, {}) }, { REDIS_URL: redis.url })
  const admin = new Redis(redis.url)
  t.teardown(() => { admin.disconnect() })
  // The queue's own keys are made read-only: BullMQ's add fails after everything else of the acceptance (the
  // bytes counted for the job) has been written.
  await admin.call('ACL', 'SETUSER', 'default', 'resetkeys', `%R~{${prefix}resend}:*`, `~{${prefix}resend-bytes}:*`, `~${prefix}*`)
  const body = { location: `${upstream.url}/record`, params: { record: 1 }, delivery: 'queued' }
  const refused = await call('POST', '/resend', body, { 'idempotency-key': 'careful-client' })
  t.equal(refused.statusCode, 503)
  t.same(refused.json().data, { error: 'SERVICE_UNAVAILABLE', reason: 'queue_unavailable', detail: 'Redis (REDIS_URL) refused the command (NOPERM)' })
  t.equal(Number(await admin.eval("return redis.call('HGET', KEYS[1], '')", 1, `{${prefix}resend-bytes}:totals`)), 0, 'the bytes counted for it were given back')
  await admin.call('ACL', 'SETUSER', 'default', 'resetkeys', '~*')
  const retried = await call('POST', '/resend', body, { 'idempotency-key': 'careful-client' })
  t.equal(retried.statusCode, 202)
  t.equal(retried.headers['idempotent-replayed'], undefined, 'a new job, not a replay of one that never was')
  const done = await until(retried.json().data.id, 'delivered')
  t.equal(done.status, 'delivered')
  t.equal(upstream.requests.length, 1, 'delivered once')
  t.match((await call('GET', '/metrics')).body, /\nresend_queue_bytes \d+\n/)
})

t.test('an instance that stops between a delivery and the job\'s end: the job is delivered, never sent again', { skip }, async (t) => {
  // The window on purpose: an instance drops a job's request and keeps the answer in one write once the destination
  // has answered 2xx, then completes the job. Stopped in between (SIGKILL), the job goes back to the queue with no
  // request and its answer.
  const { call, until, upstream, prefix } = await queued(t, (_request, res) => { sendJson(res, 201, { code: 0 }) }, { RESEND_WORKERS: 0 })
  const accepting = async (): Promise<string> => (await call('POST', '/resend', { location: `${upstream.url}/record`, params: {}, delivery: 'queued' })).json().data.id as string
  const [kept, earlier] = [await accepting(), await accepting()]
  const admin = new Redis(REDIS_URL)
  t.teardown(() => { admin.disconnect() })
  const sealer = createSealer(Buffer.from(SECRET, 'base64'), 'aibill resend jobs')
  await admin.hset(`{${prefix}resend}:resend:${kept}`, 'data', JSON.stringify({ sealed: '', answer: sealer.seal(`answer:${kept}`, { status: 201, body: { code: 0 } }) }))
  // As an earlier version left it: the request dropped, the answer under a key of its own.
  await admin.hset(`{${prefix}resend}:resend:${earlier}`, 'data', JSON.stringify({ sealed: '' }))
  await admin.set(`${prefix}resend-answer:${earlier}`, sealer.seal(`answer:${earlier}`, { status: 202, body: { code: 0 } }), 'EX', 60)
  // Another instance takes them over.
  const other = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: upstream.url, RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: SECRET, REDIS_URL, REDIS_KEY_PREFIX: prefix })
  t.ok(other.app.resendJobs !== null)
  const done = await until(kept, 'delivered')
  t.match(done, { status: 'delivered', attempts: 1, last_attempt: { status: 201 }, answer: { status: 201, body: { code: 0 } } })
  t.match(await until(earlier, 'delivered'), { status: 'delivered', last_attempt: { status: 200 }, answer: { status: 202, body: { code: 0 } } },
    'an earlier version\'s: a 2xx all the same, its answer read from its own key')
  t.equal(upstream.requests.length, 0, 'neither was sent again')
})

t.test('RESEND_MAX_QUEUED_BYTES: the bytes Redis keeps are bounded, a caller holds its share, an ended job keeps no request', { skip }, async (t) => {
  const { call, until, upstream, prefix } = await queued(t, (request, res) => {
    if (request.url === '/hold') { sendJson(res, 503, {}); return }
    sendJson(res, 200, { ok: true })
  }, { RESEND_MAX_QUEUED_BYTES: 2_000_000, RESEND_RETRY_SCHEDULE: '1h', BODY_LIMIT_BYTES: 1_100_000 })
  const raw = new Redis(REDIS_URL)
  t.teardown(() => { raw.disconnect() })
  // A body of 1 MB of escaped quotes: JSON inside JSON doubled it, and base64 made it 2.7 MB.
  const quotes = '"'.repeat(500_000)
  const first = await call('POST', '/resend', { location: `${upstream.url}/hold`, params: { quotes }, delivery: 'queued' })
  t.equal(first.statusCode, 202)
  const { id } = first.json().data
  const stored = String(await raw.hget(`{${prefix}resend}:resend:${id as string}`, 'data')).length
  t.ok(stored < 1.4 * 1_000_000, `a body of 1 MB, all escaped quotes, is stored in ${stored} bytes`)
  const second = await call('POST', '/resend', { location: `${upstream.url}/hold`, params: { quotes }, delivery: 'queued' })
  t.equal(second.statusCode, 503, 'one more job would pass the bound')
  t.same(second.json().data, { error: 'SERVICE_UNAVAILABLE', reason: 'queue_full', limit: 2_000_000, variable: 'RESEND_MAX_QUEUED_BYTES' })
  // Cancelled once its first attempt is over, its bytes no longer count.
  for (let i = 0; i < 600 && (await call('GET', `/resend/jobs/${String(id)}`)).json().data.next_attempt_at === null; i++) await sleep(50)
  t.equal((await call('DELETE', `/resend/jobs/${String(id)}`)).statusCode, 200)
  const small = await call('POST', '/resend', { location: `${upstream.url}/ok`, params: { quotes }, delivery: 'queued' })
  t.equal(small.statusCode, 202, 'room again')
  await until(small.json().data.id, 'delivered')
  const data = JSON.parse(String(await raw.hget(`{${prefix}resend}:resend:${String(small.json().data.id)}`, 'data'))) as { sealed: string }
  t.equal(data.sealed, '', 'a delivered job keeps no request')
  // (The count is set just after the job is marked delivered.)
  const counted = async (): Promise<number> => Number(await raw.eval("return redis.call('HGET', KEYS[1], '')", 1, `{${prefix}resend-bytes}:totals`))
  for (let i = 0; i < 100 && await counted() > 10_000; i++) await sleep(50)
  const bytes = await counted()
  t.ok(bytes > 1024 && bytes < 2048, `a delivered job counts its answer and its fields only (${bytes} bytes)`)
})

t.test('in broker mode a caller holds its max_queued_bytes, and others still queue', { skip }, async (t) => {
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, 503, {}) })
  const keys = { a: `caller-a-${randomBytes(8).toString('hex')}`, b: `caller-b-${randomBytes(8).toString('hex')}` }
  for (const key of Object.values(keys)) registerSecret(key)
  const sha = (value: string): string => createHash('sha256').update(value).digest('hex')
  const { app } = await build(t, {
    COZE_APPS: JSON.stringify({
      apps: { bills: { app_id: '1150000000001', api_base: 'https://api.coze.cn', keys: [{ kid: 'k1', private_key_env: 'APP_KEY' }] } },
      callers: { a: { key_sha256: sha(keys.a), apps: ['bills'], routes: ['resend'] }, b: { key_sha256: sha(keys.b), apps: ['bills'], routes: ['resend'], max_queued_bytes: 400_000 } }
    }),
    APP_KEY: testKeys().pkcs8,
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL,
    REDIS_KEY_PREFIX: redisKeyPrefix(t, 'share'),
    RESEND_RETRY_SCHEDULE: '1h',
    RESEND_MAX_QUEUED_BYTES: 1_000_000
  })
  const send = async (key: string) => await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': key }, payload: { location: `${upstream.url}/x`, params: { pad: 'x'.repeat(150_000) }, delivery: 'queued' } })
  const a = []
  for (let i = 0; i < 3; i++) a.push((await send(keys.a)).statusCode)
  t.same(a, [202, 503, 503], 'a quarter of the bound (250 kB) holds one job of 200 kB')
  t.same((await send(keys.a)).json().data, { error: 'SERVICE_UNAVAILABLE', reason: 'queue_full', limit: 250_000, variable: 'max_queued_bytes' })
  t.same([(await send(keys.b)).statusCode, (await send(keys.b)).statusCode], [202, 503], 'its own max_queued_bytes for b')
})

t.test('a Redis at maxmemory: 503 saying it refuses writes, /ready degraded, a metric and a log line; then it recovers', { skip }, async (t) => {
  const redis = await startRedisServer(t, ['--maxmemory-policy', 'noeviction'])
  const { call, logs, upstream } = await queued(t, (_request, res) => { sendJson(res, 200, {}) }, { REDIS_URL: redis.url, ROUTES: 'resend' })
  const admin = new Redis(redis.url)
  t.teardown(() => { admin.disconnect() })
  await admin.config('SET', 'maxmemory', '1')
  const refused = await call('POST', '/resend', { location: `${upstream.url}/x`, params: {}, delivery: 'queued' })
  t.equal(refused.statusCode, 503)
  t.same(refused.json().data, { error: 'SERVICE_UNAVAILABLE', reason: 'queue_unavailable', detail: 'Redis (REDIS_URL) refuses writes: it has reached its maxmemory' })
  const ready = await call('GET', '/ready')
  t.equal(ready.statusCode, 200, 'still ready: delivery now goes on')
  t.equal(ready.json().data.checks.resend_queue, 'degraded: refuses writes (maxmemory)')
  t.match((await call('GET', '/metrics')).body, /\nredis_writes_refused 1\n/)
  t.match(logs.text, /Redis refuses writes \(maxmemory reached\)/)
  await admin.config('SET', 'maxmemory', '0')
  t.equal((await call('GET', '/ready')).json().data.checks.resend_queue, 'ok')
  t.match((await call('GET', '/metrics')).body, /\nredis_writes_refused 0\n/)
  t.match(logs.text, /Redis takes writes again/)
  t.equal((await call('POST', '/resend', { location: `${upstream.url}/x`, params: {}, delivery: 'queued' })).statusCode, 202)
})

t.test('queued, a Feishu app\'s token goes to its base only: refused at acceptance, and again at each attempt', { skip }, async (t) => {
  const tokens: string[] = []
  const feishu = async (t: Test) => await startUpstream(t, (request, res) => {
    if (request.url === '/open-apis/auth/v3/tenant_access_token/internal') {
      const token = `t-queued-${randomBytes(6).toString('hex')}`
      registerSecret(token)
      tokens.push(token)
      sendJson(res, 200, { code: 0, msg: 'ok', tenant_access_token: token, expire: 7200 })
      return
    }
    sendJson(res, 200, { code: 0 })
  })
  const base = await feishu(t)
  const other = await feishu(t)
  const prefix = redisKeyPrefix(t, 'feishu-origin')
  const common = { EXPECTED_COZE_API_KEY: API_KEY, RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: SECRET, REDIS_URL, REDIS_KEY_PREFIX: prefix, RESEND_ALLOWED_HOSTS: `${base.url},${other.url}`, BILLS_SECRET: 'bills-secret-0123456789' }
  registerSecret(common.BILLS_SECRET)
  const apps = (at: string) => JSON.stringify({ bills: { app_id: 'cli_bills', app_secret_env: 'BILLS_SECRET', base: at } })
  const accepting = await build(t, { ...common, FEISHU_APPS: apps(base.url), RESEND_WORKERS: 0 })
  const send = async (location: string) => await accepting.app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location, params: {}, auth: { feishu_app: 'bills' }, delivery: 'queued' } })
  const refused = await send(`${other.url}/collect`)
  t.equal(refused.statusCode, 403)
  t.equal(refused.json().data.reason, 'feishu_app')
  const { id } = (await send(`${base.url}/open-apis/im/v1/messages`)).json().data
  // The app's base moves while the job waits: its token may not follow the stored location.
  const delivering = await build(t, { ...common, FEISHU_APPS: apps(other.url) })
  let view: Record<string, unknown> = {}
  for (let i = 0; i < 200 && view.status !== 'failed'; i++) {
    await sleep(50)
    view = (await delivering.app.inject({ method: 'GET', url: `/resend/jobs/${String(id)}`, headers: { 'x-api-key': API_KEY } })).json().data
  }
  t.equal(view.status, 'failed')
  t.equal((view.last_attempt as { error: string }).error, 'FORBIDDEN')
  t.equal(base.requests.length, 0, 'nothing reached the old base')
  t.equal(other.requests.length, 0, 'nothing reached the new one, no token was fetched')
})

t.test('Feishu refusing the app\'s secret fails the job at once, with feishu_<code>, counted and logged', { skip }, async (t) => {
  registerSecret('wrong-secret-0123456789')
  const { call, until, logs, upstream } = await queued(t, (request, res) => {
    if (request.url === '/open-apis/auth/v3/tenant_access_token/internal') { sendJson(res, 200, { code: 10014, msg: 'app secret invalid' }); return }
    sendJson(res, 200, { code: 0 })
  }, (upstream) => ({ FEISHU_APPS: JSON.stringify({ bills: { app_id: 'cli_x', app_secret_env: 'WRONG_SECRET', base: upstream.url } }), WRONG_SECRET: 'wrong-secret-0123456789' }))
  const now = await call('POST', '/resend', { location: `${upstream.url}/x`, params: {}, auth: { feishu_app: 'bills' } })
  t.equal(now.statusCode, 502)
  t.equal(now.json().message, '飞书 tenant_access_token 获取失败: 飞书错误码 10014 (app secret invalid)')
  t.equal((await call('POST', '/resend', { location: `${upstream.url}/x`, params: {}, auth: { feishu_app: 'bills' } }, { 'accept-language': 'en' })).json().message, 'Fetching the Feishu tenant_access_token failed: Feishu code 10014 (app secret invalid)')
  const { id } = (await call('POST', '/resend', { location: `${upstream.url}/x`, params: {}, auth: { feishu_app: 'bills' }, delivery: 'queued' })).json().data
  const failed = await until(id, 'failed')
  t.equal(failed.attempts, 1, 'not retried: waiting will not mend a wrong secret')
  t.equal((failed.last_attempt as { error: string }).error, 'feishu_10014')
  t.match((await call('GET', '/metrics')).body, /feishu_token_fetches_total\{app="bills",outcome="feishu_10014"\} [1-9]/)
  t.match(logs.text, /Feishu refuses the app's id or secret/)
  t.equal(upstream.requests.filter((request) => request.url === '/x').length, 0, 'nothing was sent without a token')
})

t.test('the attack of the third round: one caller sends 64 jobs of 1 MB at a Redis of 200 MB; the others still queue', { skip }, async (t) => {
  const redis = await startRedisServer(t, ['--maxmemory', '200mb', '--maxmemory-policy', 'noeviction'])
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, 503, {}) })
  const keys = { flood: `caller-flood-${randomBytes(8).toString('hex')}`, other: `caller-other-${randomBytes(8).toString('hex')}` }
  for (const key of Object.values(keys)) registerSecret(key)
  const sha = (value: string): string => createHash('sha256').update(value).digest('hex')
  const { app } = await build(t, {
    COZE_APPS: JSON.stringify({
      apps: { bills: { app_id: '1150000000001', api_base: 'https://api.coze.cn', keys: [{ kid: 'k1', private_key_env: 'APP_KEY' }] } },
      callers: { flood: { key_sha256: sha(keys.flood), apps: ['bills'], routes: ['resend'] }, other: { key_sha256: sha(keys.other), apps: ['bills'], routes: ['resend'] } }
    }),
    APP_KEY: testKeys().pkcs8,
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL: redis.url,
    REDIS_KEY_PREFIX: 'attack:',
    RESEND_RETRY_SCHEDULE: '1h',
    BODY_LIMIT_BYTES: 1_100_000,
    RESEND_MAX_QUEUED_BYTES: 134_217_728,
    TOKEN_CACHE: 'redis',
    TOKEN_CACHE_SECRET: randomBytes(32).toString('base64')
  })
  const send = async (key: string, pad: string) => await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': key }, payload: { location: `${upstream.url}/x`, params: { pad }, delivery: 'queued' } })
  const megabyte = '\u0001'.repeat(170_000) // 1 MB of JSON: each control character is written \u0001
  const flood: number[] = []
  for (let i = 0; i < 64; i++) flood.push((await send(keys.flood, megabyte)).statusCode)
  const accepted = flood.filter((status) => status === 202).length
  t.ok(accepted > 0 && accepted < 64, `the flooding caller: ${accepted} accepted, ${64 - accepted} refused at its share`)
  const other: number[] = []
  for (let i = 0; i < 10; i++) other.push((await send(keys.other, 'x'.repeat(100_000))).statusCode)
  t.same(other, Array(10).fill(202), 'another caller: 10 of 10 accepted')
  const admin = new Redis(redis.url)
  t.teardown(() => { admin.disconnect() })
  const used = Number(/used_memory:(\d+)/.exec(await admin.info('memory'))?.[1])
  t.ok(used < 150 * 1024 * 1024, `Redis holds ${(used / 1048576).toFixed(1)} MB of its 200 MB`)
  const ready = await app.inject('/ready')
  t.same([ready.json().data.checks.resend_queue, ready.json().data.checks.token_cache], ['ok', 'ok'])
  t.comment(`one caller, 64 jobs of 1 MB at a Redis of 200 MB: ${accepted} accepted, ${64 - accepted} refused; another caller 10/10; Redis ${(used / 1048576).toFixed(1)} MB`)
})
