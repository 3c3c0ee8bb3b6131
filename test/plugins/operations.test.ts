import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { API_KEY, build, KID, REDIS_URL, redisKeyPrefix, sendJson, skipWithoutRedis, startUpstream, testKeys } from '../helper.js'

t.test('OpenAPI: every route with its answers, the UI at /docs; DOCS_ENABLED=false removes both', async (t) => {
  const { app } = await build(t)
  const res = await app.inject('/docs/json')
  t.equal(res.statusCode, 200)
  const doc = res.json()
  t.equal(doc.openapi, '3.0.3')
  const expected: Record<string, string[]> = {
    '/health': ['get'], '/ready': ['get'], '/token': ['post'], '/resend': ['post'], '/resend/jobs': ['get', 'delete'], '/resend/jobs/retry': ['post'], '/resend/destinations': ['get'], '/resend/jobs/{id}': ['get', 'delete'], '/resend/jobs/{id}/retry': ['post'], '/api/auth-url': ['get'], '/api/complete-auth': ['post']
  }
  t.same(Object.keys(doc.paths).sort(), Object.keys(expected).sort(), 'exactly the API routes (no /metrics, no /docs)')
  for (const [path, methods] of Object.entries(expected)) {
    for (const method of methods) {
      const operation = doc.paths[path][method]
      t.ok(operation.summary, `${method} ${path} has a summary`)
      t.same(Object.keys(operation.responses).sort(), path === '/resend' ? ['200', '202', '4XX', '5XX'] : ['200', '4XX', '5XX'], `${method} ${path} documents its answers`)
      t.ok(operation.responses['200'].content['application/json'].schema, `${method} ${path} 200 has a schema`)
    }
  }
  t.ok(doc.paths['/token'].post.requestBody.content['application/json'].schema.properties.public_key.description)
  t.ok(doc.components.schemas.ErrorEnvelope, 'the error envelope is a shared component')
  const ui = await app.inject('/docs/')
  t.equal(ui.statusCode, 200)
  t.match(ui.headers['content-type'], /text\/html/)

  const off = await build(t, { DOCS_ENABLED: false })
  t.equal((await off.app.inject('/docs/json')).statusCode, 404)
})

function metricValue (text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((row) => row.startsWith(`${name}${labels === '' ? ' ' : `{${labels}}`}`))
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1))
}

t.test('metrics: request counts by route and status, Coze exchanges, cache, resend, OAuth states, process', async (t) => {
  const coze = await startUpstream(t, (_req, res) => { sendJson(res, 200, { access_token: 'czs_m', expires_in: 1900000000 }) })
  const feishu = await startUpstream(t, (_req, res) => { sendJson(res, 200, { code: 0 }) })
  const { app } = await build(t, {
    JWT_PRIVATE_KEY: testKeys().pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: `${coze.url}/token`, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${feishu.port}`
  })
  const scrape = async (): Promise<string> => {
    const res = await app.inject('/metrics')
    t.match(res.headers['content-type'], /^text\/plain/)
    return res.body
  }
  const before = await scrape()
  const token = { method: 'POST' as const, url: '/token', payload: { public_key: KID, coze_api_key: API_KEY } }
  await app.inject(token)
  await app.inject(token)
  await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${feishu.url}/x`, params: {} } })
  await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: 'https://evil.example/' } })
  await app.inject('/api/auth-url')
  await app.inject({ method: 'POST', url: '/api/complete-auth', payload: { code: 'c', state: 'unknown', tenant_url: 'https://d1.api.augmentcode.com/' } })
  const after = await scrape()

  const delta = (name: string, labels = ''): number => metricValue(after, name, labels) - metricValue(before, name, labels)
  t.equal(delta('http_request_duration_seconds_count', 'method="POST",route="/token",status_code="200"'), 2)
  t.equal(delta('coze_token_exchanges_total', 'outcome="success"'), 1)
  t.equal(delta('coze_token_exchange_duration_seconds_count', 'outcome="success"'), 1)
  t.equal(delta('coze_token_requests_total', 'cache="miss"'), 1)
  t.equal(delta('coze_token_requests_total', 'cache="hit"'), 1)
  t.equal(delta('resend_requests_total', 'outcome="success"'), 1)
  t.equal(delta('resend_requests_total', 'outcome="destination_not_allowed"'), 1)
  t.equal(delta('resend_attempts_count'), 2)
  t.equal(delta('oauth_states_issued_total'), 1)
  t.equal(metricValue(after, 'oauth_states_stored'), 1)
  t.equal(delta('oauth_completions_total', 'outcome="oauth_state_not_found"'), 1)
  t.ok(metricValue(after, 'process_cpu_user_seconds_total') > 0, 'process metrics')
  t.notOk(after.includes('route="/metrics"'), 'scrapes are not counted')
  await app.inject('/health')
  t.notOk((await scrape()).includes('route="/health"'), 'nor are probes')

  const off = await build(t, { METRICS_ENABLED: false })
  t.equal((await off.app.inject('/metrics')).statusCode, 404)
  t.equal((await off.app.inject('/api/auth-url')).statusCode, 200, 'everything works without metrics')
})

t.test('rate limits: per client IP, 429 RATE_LIMITED with Retry-After, stricter for auth-url, probes exempt', async (t) => {
  const { app } = await build(t, { RATE_LIMIT_MAX: 3, RATE_LIMIT_AUTH_URL_MAX: 2, RATE_LIMIT_WINDOW: '1 minute' })
  const post = async (ip = '127.0.0.1') => await app.inject({ method: 'POST', url: '/token', remoteAddress: ip, payload: {} })
  // (No key is configured: each is 503 NOT_CONFIGURED, decided before the body; what counts is that it is answered.)
  for (let i = 0; i < 3; i++) t.equal((await post()).statusCode, 503)
  const limited = await post()
  t.equal(limited.statusCode, 429)
  t.match(limited.json(), { success: false, data: { error: 'RATE_LIMITED', limit: 3 }, message: '请求过于频繁，请稍后再试' })
  t.ok(Number(limited.headers['retry-after']) > 0, 'Retry-After')
  t.equal((await post('10.9.8.7')).statusCode, 503, 'another client has its own budget')
  for (let i = 0; i < 10; i++) {
    t.equal((await app.inject('/health')).statusCode, 200)
    t.equal((await app.inject('/ready')).statusCode, 503, 'answered, not limited (unready only for lack of configuration)')
  }
  for (const url of ['/metrics', '/docs/json', '/docs', '/no-such-route', '/docs/static/index.css']) {
    t.equal((await app.inject(url)).statusCode, 429, `${url} counts toward the limit too`)
  }
  t.equal((await app.inject({ url: '/api/auth-url', remoteAddress: '10.0.0.2' })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/auth-url', remoteAddress: '10.0.0.2' })).statusCode, 200)
  t.equal((await app.inject({ url: '/api/auth-url', remoteAddress: '10.0.0.2' })).statusCode, 429, 'auth-url allocates state: a stricter limit')
})

t.test('TRUST_PROXY: behind a load balancer the client is the X-Forwarded-For address', async (t) => {
  const run = async (trustProxy: string) => {
    const { app } = await build(t, { RATE_LIMIT_MAX: 1, TRUST_PROXY: trustProxy })
    const from = async (client: string) =>
      (await app.inject({ method: 'POST', url: '/token', remoteAddress: '10.0.0.1', headers: { 'x-forwarded-for': client }, payload: {} })).statusCode
    return [await from('203.0.113.1'), await from('203.0.113.2')]
  }
  t.same(await run('true'), [503, 503], 'two clients behind one balancer')
  t.same(await run('10.0.0.0/8'), [503, 503], 'trusting the balancer\'s subnet')
  t.same(await run('192.0.2.1'), [503, 429], 'a balancer that is not the peer is not believed')
  t.same(await run('false'), [503, 429], 'untrusted: the balancer is the client')
})

t.test('rate limits across instances share counters in Redis', { skip: await skipWithoutRedis() }, async (t) => {
  const config = { STATE_STORE: 'redis', REDIS_URL, REDIS_KEY_PREFIX: redisKeyPrefix(t, 'rate-limit'), RATE_LIMIT_MAX: 3 }
  const first = await build(t, config)
  const second = await build(t, config)
  const statuses: number[] = []
  for (const app of [first.app, second.app, first.app, second.app]) statuses.push((await app.inject({ method: 'POST', url: '/token', payload: {} })).statusCode)
  t.same(statuses, [503, 503, 503, 429])
})

t.test('CORS for the browser-facing /api routes only, and only for listed origins', async (t) => {
  const { app } = await build(t, { CORS_ORIGINS: 'https://app.example, https://admin.example' })
  const origin = { origin: 'https://app.example' }
  const get = await app.inject({ url: '/api/auth-url', headers: origin })
  t.equal(get.headers['access-control-allow-origin'], 'https://app.example')
  const preflight = await app.inject({ method: 'OPTIONS', url: '/api/complete-auth', headers: { ...origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' } })
  t.equal(preflight.statusCode, 204)
  t.match(preflight.headers['access-control-allow-methods'], /POST/)
  t.equal((await app.inject({ url: '/api/auth-url', headers: { origin: 'https://evil.example' } })).headers['access-control-allow-origin'], undefined)
  t.equal((await app.inject({ url: '/health', headers: origin })).headers['access-control-allow-origin'], undefined, 'not on other routes')

  const none = await build(t)
  t.equal((await none.app.inject({ url: '/api/auth-url', headers: origin })).headers['access-control-allow-origin'], undefined, 'no origins, no CORS headers')
})

t.test('load shedding: 503 SERVICE_UNAVAILABLE under pressure, while probes and scrapes still answer', async (t) => {
  const { app } = await build(t, { PRESSURE_MAX_HEAP_USED_BYTES: 1 })
  let res = await app.inject('/api/auth-url')
  for (let i = 0; i < 20 && res.statusCode !== 503; i++) {
    await sleep(100)
    res = await app.inject('/api/auth-url')
  }
  t.equal(res.statusCode, 503)
  t.same(res.json(), { success: false, data: { error: 'SERVICE_UNAVAILABLE', reason: 'heapUsedBytes' }, message: '服务繁忙，请稍后再试' })
  t.equal(res.headers['retry-after'], '5')
  const probes: FastifyInstance['inject'] = app.inject.bind(app)
  t.equal((await probes('/health')).statusCode, 200)
  t.equal((await probes('/ready')).statusCode, 503, 'answered (not shed): unready only for lack of configuration')
  t.equal((await probes('/metrics')).statusCode, 200)
})
