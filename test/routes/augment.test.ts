import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { privateResolver, SSRF_TRICKS } from '../fixtures/ssrf.js'
import { API_KEY, build, KID, REDIS_URL, redisKeyPrefix, sendJson, skipWithoutRedis, startRedisServer, startUpstream, testKeys, type UpstreamHandler } from '../helper.js'

const CODE = '_000baec407c57c4bf9a1b2c3d4e5f6a7b8'
const tokenAnswer: UpstreamHandler = (_req, res) => { sendJson(res, 200, { access_token: 'augment-access-token-xyz', token_type: 'Bearer', expires_in: 3600 }) }

async function setup (t: Test, handler: UpstreamHandler = tokenAnswer, config: Record<string, unknown> = {}) {
  const tenant = await startUpstream(t, handler)
  const built = await build(t, { AUGMENT_TENANT_HOSTS: `http://127.0.0.1:${tenant.port}`, ...config }, { resolver: privateResolver })
  return { ...built, tenant, tenantUrl: `${tenant.url}/` }
}

async function authorize (app: FastifyInstance, query = '') {
  const res = await app.inject(`/api/auth-url${query}`)
  const { authorize_url: authorizeUrl, state } = res.json().data as { authorize_url: string, state: string }
  return { res, authorizeUrl, state, challenge: new URL(authorizeUrl).searchParams.get('code_challenge') }
}

async function complete (app: FastifyInstance, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  return await app.inject({ method: 'POST', url: '/api/complete-auth', headers, payload: body })
}

t.test('the whole sign-in: an authorize link as Augment\'s client makes it, then the code exchange', async (t) => {
  const { app, tenant, tenantUrl, logs } = await setup(t)
  const { res, authorizeUrl, state, challenge } = await authorize(app, '?user_id=user-7')
  t.equal(res.statusCode, 200)
  t.equal(res.json().message, '授权链接生成成功')
  t.match(state, /^[A-Za-z0-9_-]{22}$/, '16 random bytes, base64url')
  const url = new URL(authorizeUrl)
  t.equal(`${url.origin}${url.pathname}`, 'https://auth.augmentcode.com/authorize')
  t.same([...url.searchParams.keys()], ['response_type', 'code_challenge', 'client_id', 'state', 'prompt'], 'exactly these, in this order')
  t.same(Object.fromEntries(url.searchParams), { response_type: 'code', code_challenge: challenge, client_id: 'v', state, prompt: 'login' })
  t.match(challenge, /^[A-Za-z0-9_-]{43}$/)

  const done = await complete(app, { code: CODE, state, tenant_url: tenantUrl })
  t.equal(done.statusCode, 200)
  const body = done.json()
  t.match(body, { success: true, data: { status: 'success', token: 'augment-access-token-xyz', tenant_url: tenantUrl }, message: 'OAuth授权完成成功' })
  t.match(body.data.token_info.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
  t.ok(Math.abs(Date.parse(body.data.token_info.created_at) - Date.now()) < 5000)

  t.equal(tenant.requests.length, 1)
  const sent = tenant.requests[0]
  t.equal(sent?.method, 'POST')
  t.equal(sent?.url, '/token', 'new URL("token", tenant_url)')
  t.match(sent?.headers['content-type'], /^application\/json/)
  const exchange = JSON.parse(sent?.body ?? '')
  t.same(Object.keys(exchange), ['grant_type', 'client_id', 'code_verifier', 'redirect_uri', 'code'])
  t.match(exchange, { grant_type: 'authorization_code', client_id: 'v', redirect_uri: '', code: CODE })
  t.match(exchange.code_verifier, /^[A-Za-z0-9_-]{43}$/)
  t.equal(createHash('sha256').update(exchange.code_verifier, 'ascii').digest('base64url'), challenge, 'S256 of the verifier is the challenge')

  t.equal((await complete(app, { code: CODE, state, tenant_url: tenantUrl })).json().data.error, 'OAUTH_STATE_NOT_FOUND', 'a replay fails')
  for (const secret of [CODE, exchange.code_verifier, 'augment-access-token-xyz', state]) t.notOk(logs.text.includes(secret), 'no code, verifier, token or state in the logs')
  t.ok(logs.records().some((line) => line.user_id === 'user-7'), 'user_id is logged')
})

t.test('pasted values: stray white space and line breaks are removed', async (t) => {
  const { app, tenantUrl, tenant } = await setup(t)
  const { state } = await authorize(app)
  const res = await complete(app, { code: `  ${CODE.slice(0, 10)}\n${CODE.slice(10)}\r\n`, state: `\t${state} `, tenant_url: ` ${tenantUrl}\n` })
  t.equal(res.statusCode, 200)
  t.equal(JSON.parse(tenant.requests[0]?.body ?? '').code, CODE)
})

t.test('missing or empty fields: 400 with the documented message, and the state stays', async (t) => {
  const { app, tenantUrl, tenant } = await setup(t)
  const { state } = await authorize(app)
  const message = '无效的请求数据: code, state, tenant_url 都是必需的'
  const bodies = [{}, { code: CODE, state }, { code: '', state, tenant_url: tenantUrl }, { code: CODE, state: '  \n ', tenant_url: tenantUrl }, { code: CODE, state, tenant_url: 42 }, { code: CODE, state, tenant_url: tenantUrl, extra: 1 }]
  for (const body of bodies) {
    const res = await complete(app, body)
    t.equal(res.statusCode, 400)
    t.equal(res.json().data.error, 'VALIDATION_FAILED')
    t.equal(res.json().message, message)
  }
  t.equal(tenant.requests.length, 0)
  t.equal((await complete(app, { code: CODE, state, tenant_url: tenantUrl })).statusCode, 200)
})

t.test('tenant URLs the policy refuses: 400 TENANT_URL_NOT_ALLOWED, nothing contacted, the state left in place', async (t) => {
  const { app, tenant, tenantUrl } = await setup(t)
  const { state } = await authorize(app)
  const refused: Array<[string, string]> = [
    [`${tenantUrl}?next=x`, 'query'], [`${tenantUrl}#frag`, 'query'], [`${tenantUrl}?`, 'query'], [`https://127.0.0.1:${tenant.port}/`, 'scheme'],
    [`http://user@127.0.0.1:${tenant.port}/`, 'userinfo'], [`http://127.0.0.1:${tenant.port + 1}/`, 'port'],
    ['https://d12.api.augmentcode.com.evil.example/', 'host'], ['https://evil.example/', 'host'], ['not a url', 'url']
  ]
  for (const [tenantUrlCandidate, reason] of refused) {
    const res = await complete(app, { code: CODE, state, tenant_url: tenantUrlCandidate }, { 'accept-language': 'en' })
    t.equal(res.statusCode, 400, tenantUrlCandidate)
    t.same(res.json(), { success: false, data: { error: 'TENANT_URL_NOT_ALLOWED', reason }, message: `This tenant_url is not allowed: ${reason}` })
    t.equal(res.headers['cache-control'], 'no-store, max-age=0, private', 'no answer of complete-auth is stored')
  }
  t.equal(tenant.requests.length, 0)
  const done = await complete(app, { code: CODE, state, tenant_url: tenantUrl })
  t.equal(done.statusCode, 200, 'the state was still there')
  t.equal(done.headers['cache-control'], 'no-store, max-age=0, private')
  t.equal(done.headers.pragma, 'no-cache')
  t.match(tenant.requests[0]?.headers['user-agent'], /^aibill-token-service\//, 'Augment is told who calls')
})

t.test('the shared SSRF corpus against complete-auth, with the default tenant policy', async (t) => {
  const recorder = await startUpstream(t, tokenAnswer)
  const { app } = await build(t, {}, { resolver: privateResolver })
  const extra = ['https://d12.api.augmentcode.com/', 'https://internal.augmentcode.com/', 'https://augmentcode.com/', 'https://d1.api.augmentcode.com:8443/']
  for (const trick of [...SSRF_TRICKS, ...extra]) {
    const location = trick.replaceAll('PORT', String(recorder.port))
    // A name that passes the URL check is refused at connect time, after the state is taken: a new one each time.
    const { state } = await authorize(app)
    const res = await complete(app, { code: CODE, state, tenant_url: location })
    t.equal(res.statusCode, 400, location)
    t.equal(res.json().data.error, 'TENANT_URL_NOT_ALLOWED', location)
  }
  t.equal(recorder.requests.length, 0, 'nothing reached the recording server')
})

t.test('states: unknown, expired, used once even when the exchange fails, one winner among concurrent requests', async (t) => {
  let answer: 'ok' | 'fail' = 'fail'
  const { app, tenantUrl, tenant } = await setup(t, async (req, res) => {
    await sleep(30)
    if (answer === 'fail') sendJson(res, 400, { error: 'invalid_grant', echoed_code: JSON.parse(req.body).code })
    else await tokenAnswer(req, res)
  }, { OAUTH_STATE_TTL_SECONDS: 10 })

  const unknown = await complete(app, { code: CODE, state: 'never-issued', tenant_url: tenantUrl })
  t.same(unknown.json(), { success: false, data: { error: 'OAUTH_STATE_NOT_FOUND' }, message: '未找到OAuth状态，请重新获取授权链接' })

  await app.stateStore.save('aged', { verifier: 'v'.repeat(43), createdAt: Date.now() - 11_000 })
  const expired = await complete(app, { code: CODE, state: 'aged', tenant_url: tenantUrl })
  t.same(expired.json(), { success: false, data: { error: 'OAUTH_STATE_EXPIRED' }, message: 'OAuth状态已过期，请重新获取授权链接' })
  t.equal(tenant.requests.length, 0, 'an expired state contacts nobody')

  const { state } = await authorize(app)
  const failed = await complete(app, { code: CODE, state, tenant_url: tenantUrl })
  t.equal(failed.statusCode, 502)
  t.same(failed.json(), { success: false, data: { error: 'TOKEN_EXCHANGE_FAILED', upstream_status: 400 }, message: 'Token交换失败: HTTP 400' })
  t.notOk(failed.body.includes(CODE), 'the upstream body is not passed on')
  answer = 'ok'
  t.equal((await complete(app, { code: CODE, state, tenant_url: tenantUrl })).json().data.error, 'OAUTH_STATE_NOT_FOUND', 'a failed exchange used the state up')

  const second = await authorize(app)
  const before = tenant.requests.length
  const racing = await Promise.all(Array.from({ length: 10 }, async () => await complete(app, { code: CODE, state: second.state, tenant_url: tenantUrl })))
  t.equal(racing.filter((res) => res.statusCode === 200).length, 1, 'exactly one of ten concurrent requests wins')
  t.equal(racing.filter((res) => res.json().data.error === 'OAUTH_STATE_NOT_FOUND').length, 9)
  t.equal(tenant.requests.length - before, 1, 'one exchange')
})

t.test('exchange failures: no token 502, unreachable 502, slow 504, a private address behind a wildcard 400', async (t) => {
  const { app, tenant, tenantUrl } = await setup(t, async (req, res) => {
    if (req.url === '/silent/token') return
    if (req.url === '/big/token') { res.writeHead(200, { 'content-type': 'application/json' }); res.end(`{"pad":"${'x'.repeat(70 * 1024)}"}`); return }
    sendJson(res, 200, { token_type: 'Bearer' })
  }, { AUGMENT_TIMEOUT_MS: 300 })
  const run = async (tenantUrlCandidate: string, target = app) => await complete(target, { code: CODE, state: (await authorize(target)).state, tenant_url: tenantUrlCandidate })

  t.same((await run(tenantUrl)).json().data, { error: 'TOKEN_EXCHANGE_FAILED', upstream_status: 200, reason: 'no access_token' })
  t.same((await run(`${tenantUrl}big/`)).json().data, { error: 'TOKEN_EXCHANGE_FAILED', reason: 'response too large' })
  const started = Date.now()
  const slow = await run(`${tenantUrl}silent/`)
  t.equal(slow.statusCode, 504)
  t.match(slow.json().data, { error: 'UPSTREAM_TIMEOUT', origin: /^http:\/\/127\.0\.0\.1:\d+$/, cause: 'timeout' })
  t.ok(Date.now() - started < 1300)

  tenant.server.closeAllConnections()
  await new Promise((resolve) => tenant.server.close(resolve))
  const down = await run(tenantUrl)
  t.equal(down.statusCode, 502)
  t.match(down.json().data, { error: 'UPSTREAM_UNREACHABLE', origin: /^http:\/\/127\.0\.0\.1:\d+$/, cause: 'ECONNREFUSED' })

  const wildcard = await build(t, {}, { resolver: privateResolver })
  const rebinding = await run('https://d12.api.augmentcode.com/', wildcard.app)
  t.equal(rebinding.statusCode, 400)
  t.same(rebinding.json().data, { error: 'TENANT_URL_NOT_ALLOWED', reason: 'address' }, 'the name resolved to loopback: refused at connect time')
})

t.test('two instances on one Redis share states: start on one, finish on the other, no replay on either', { skip: await skipWithoutRedis() }, async (t) => {
  const tenant = await startUpstream(t, tokenAnswer)
  const config = { STATE_STORE: 'redis', REDIS_URL, REDIS_KEY_PREFIX: redisKeyPrefix(t, 'states'), AUGMENT_TENANT_HOSTS: `http://127.0.0.1:${tenant.port}` }
  const first = await build(t, config)
  const second = await build(t, config)
  const { state } = await authorize(first.app)
  const done = await complete(second.app, { code: CODE, state, tenant_url: `${tenant.url}/` })
  t.equal(done.statusCode, 200)
  t.equal(done.json().data.token, 'augment-access-token-xyz')
  for (const instance of [first.app, second.app]) {
    t.equal((await complete(instance, { code: CODE, state, tenant_url: `${tenant.url}/` })).json().data.error, 'OAUTH_STATE_NOT_FOUND')
  }
  t.same((await first.app.inject('/ready')).json().data.checks.state_store, 'ok')
})

t.test('Redis outage: 503 STATE_STORE_UNAVAILABLE fast, /ready 503, the rest keeps working, all recover without a restart', { skip: await skipWithoutRedis() }, async (t) => {
  const redis = await startRedisServer(t)
  const tenant = await startUpstream(t, tokenAnswer)
  const coze = await startUpstream(t, (_req, res) => { sendJson(res, 200, { access_token: 'czs_during_outage', expires_in: 1900000000 }) })
  const feishu = await startUpstream(t, (_req, res) => { sendJson(res, 200, { code: 0 }) })
  const { app, logs } = await build(t, {
    STATE_STORE: 'redis',
    REDIS_URL: redis.url,
    AUGMENT_TENANT_HOSTS: `http://127.0.0.1:${tenant.port}`,
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${feishu.port}`,
    JWT_PRIVATE_KEY: testKeys().pkcs8, COZE_APP_ID: '1180000000001',
    EXPECTED_COZE_API_KEY: API_KEY,
    COZE_API_URL: `${coze.url}/api/permission/oauth2/token`
  })
  const pending = await authorize(app)
  t.equal(pending.res.statusCode, 200)

  await redis.stop()
  await sleep(100)
  const started = Date.now()
  const down = await app.inject('/api/auth-url')
  t.equal(down.statusCode, 503)
  t.same(down.json(), { success: false, data: { error: 'STATE_STORE_UNAVAILABLE' }, message: '状态存储暂不可用，请稍后再试' })
  t.equal((await complete(app, { code: CODE, state: pending.state, tenant_url: `${tenant.url}/` })).statusCode, 503)
  t.ok(Date.now() - started < 2500, `answered in ${Date.now() - started} ms`)
  const ready = await app.inject('/ready')
  t.equal(ready.statusCode, 503)
  t.match(ready.json().data, { error: 'NOT_READY', checks: { state_store: 'down: does not answer' } })
  const token = await app.inject({ method: 'POST', url: '/token', payload: { public_key: KID, coze_api_key: API_KEY } })
  t.equal(token.statusCode, 200, '/token does not need Redis')
  const relayed = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${feishu.url}/x`, params: {} } })
  t.equal(relayed.statusCode, 200, '/resend does not need Redis')

  await redis.start()
  let recovered = false
  for (let i = 0; i < 50 && !recovered; i++) {
    await sleep(200)
    recovered = (await app.inject('/ready')).statusCode === 200
  }
  t.ok(recovered, 'ready again without a restart')
  const again = await authorize(app)
  t.equal(again.res.statusCode, 200)
  t.equal((await complete(app, { code: CODE, state: again.state, tenant_url: `${tenant.url}/` })).statusCode, 200)
  t.ok(logs.records().some((line) => line.msg === 'redis connection lost; retrying'))
  t.ok(logs.records().some((line) => line.msg === 'redis connection restored'))
})

t.test('STATE_STORE=redis with no Redis answering stops the start, naming REDIS_URL but not its password', async (t) => {
  const redis = await startRedisServer(t)
  await redis.stop()
  const url = new URL(redis.url)
  url.password = 'hunter2'
  const err = await build(t, { STATE_STORE: 'redis', REDIS_URL: url.toString() }).then(() => new Error('started'), (error: unknown) => error as Error)
  t.match(err.message, /STATE_STORE=redis: Redis at 127\.0\.0\.1:\d+ \(REDIS_URL\) cannot be reached: it does not answer \(ECONNREFUSED\)/)
  t.notOk(err.message.includes('hunter2'))
})
