import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { decodeProtectedHeader, jwtVerify } from 'jose'
import t, { type Test } from 'tap'
import { API_KEY, build, KID, type RecordedRequest, sendJson, startUpstream, tempDir, testKeys, type UpstreamHandler } from '../helper.js'

const TOKEN_PATH = '/api/permission/oauth2/token'
const { pkcs8, pkcs1, publicKey } = testKeys()

interface Exchange {
  request: RecordedRequest
  header: Record<string, unknown>
  claims: Record<string, unknown>
}

/** A Coze token endpoint on loopback that verifies every JWT with the public key, as Coze does. */
async function startCoze (t: Test, answer: UpstreamHandler = (_req, res) => { sendJson(res, 200, { access_token: `czs_${Math.random()}`, expires_in: 1900000000, token_type: 'Bearer' }) }) {
  const exchanges: Exchange[] = []
  const upstream = await startUpstream(t, async (request, res) => {
    const jwt = (request.headers.authorization ?? '').replace(/^Bearer /, '')
    const { payload } = await jwtVerify(jwt, publicKey, { algorithms: ['RS256'] })
    exchanges.push({ request, header: decodeProtectedHeader(jwt) as Record<string, unknown>, claims: payload as Record<string, unknown> })
    await answer(request, res)
  })
  return { ...upstream, exchanges, tokenUrl: `${upstream.url}${TOKEN_PATH}` }
}

function tokenRequest (app: import('fastify').FastifyInstance, body: Record<string, unknown>, headers: Record<string, string> = {}) {
  return app.inject({ method: 'POST', url: '/token', headers, payload: body })
}

t.test('POST /token signs a JWT Coze accepts and answers the access token', async (t) => {
  const coze = await startCoze(t, (_req, res) => { sendJson(res, 200, { access_token: 'czs_issued', expires_in: 1900000000, token_type: 'Bearer' }) })
  const { app, logs } = await build(t, { JWT_PRIVATE_KEY: pkcs8, EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl, COZE_APP_ID: '1180000000001' })

  const before = Math.floor(Date.now() / 1000)
  const res = await tokenRequest(app, { public_key: KID, coze_api_key: API_KEY, session_name: 'user-42', duration_seconds: 3600 })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { success: true, data: { access_token: 'czs_issued', expires_in: 1900000000, token_type: 'Bearer' }, message: '令牌获取成功' })

  t.equal(coze.exchanges.length, 1)
  const [exchange] = coze.exchanges
  t.equal(exchange?.request.method, 'POST')
  t.equal(exchange?.request.url, TOKEN_PATH)
  t.match(exchange?.request.headers['content-type'], /^application\/json/)
  t.same(JSON.parse(exchange?.request.body ?? ''), { grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', duration_seconds: 3600 })
  t.same(exchange?.header, { alg: 'RS256', typ: 'JWT', kid: KID })
  const claims = exchange?.claims ?? {}
  t.equal(claims.iss, '1180000000001')
  t.equal(claims.aud, '127.0.0.1', 'the audience is the host of COZE_API_URL')
  t.match(logs.records().filter((line) => line.msg === 'upstream configured'), [
    { upstream: 'coze', app_id: '1180000000001', token_url: coze.tokenUrl, audience: '127.0.0.1' },
    { upstream: 'resend', allowed_hosts: 'open.feishu.cn,open.larksuite.com' },
    { upstream: 'augment', auth_url: 'https://auth.augmentcode.com/authorize', tenant_hosts: '*.augmentcode.com' }
  ], 'one line per upstream at start, no secret in it')
  t.ok((claims.iat as number) >= before && (claims.iat as number) <= before + 2)
  t.equal(claims.exp, (claims.iat as number) + 600)
  t.equal(claims.session_name, 'user-42')
  t.ok(typeof claims.jti === 'string' && Buffer.from(claims.jti, 'base64url').length >= 32, 'jti carries at least 32 random bytes')

  const text = logs.text
  for (const secret of [API_KEY, 'czs_issued', exchange?.request.headers.authorization ?? '', pkcs8.split('\n')[1] ?? '']) {
    t.notOk(text.includes(secret), 'no secret in the logs')
  }
  const line = logs.records().find((record) => record.msg === 'request completed')
  t.match(line, { method: 'POST', route: '/token', statusCode: 200 })
})

t.test('defaults: duration 86399, iss is COZE_APP_ID, aud from the URL, Bearer when Coze omits token_type', async (t) => {
  const coze = await startCoze(t, (_req, res) => { sendJson(res, 200, { access_token: 'czs_a', expires_in: 1900000000 }) })
  const { app } = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: `old-key, ${API_KEY}`, COZE_API_URL: coze.tokenUrl, COZE_JWT_AUDIENCE: 'api.coze.cn', COZE_JWT_TTL_SECONDS: 120 })
  const res = await tokenRequest(app, { public_key: KID, coze_api_key: API_KEY }, { 'accept-language': 'en-US,en;q=0.9' })
  t.equal(res.statusCode, 200)
  t.same(res.json(), { success: true, data: { access_token: 'czs_a', expires_in: 1900000000, token_type: 'Bearer' }, message: 'Access token issued' })
  const exchange = coze.exchanges[0]
  t.equal(JSON.parse(exchange?.request.body ?? '').duration_seconds, 86399)
  t.equal(exchange?.claims.iss, '1180000000001')
  t.equal(exchange?.claims.aud, 'api.coze.cn')
  t.equal((exchange?.claims.exp as number) - (exchange?.claims.iat as number), 120)
  t.notOk('session_name' in (exchange?.claims ?? {}))
  t.equal((await tokenRequest(app, { public_key: KID, coze_api_key: 'old-key' })).statusCode, 200, 'every key of the rotation list is accepted')
})

t.test('keys: PKCS#1 on one line with literal \\n, and a key file', async (t) => {
  const coze = await startCoze(t)
  const oneLine = pkcs1.trim().replace(/\n/g, '\\n')
  const first = await build(t, { JWT_PRIVATE_KEY: `"${oneLine}"`, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl })
  t.equal((await tokenRequest(first.app, { public_key: KID, coze_api_key: API_KEY })).statusCode, 200)

  const dir = await tempDir(t, 'aibill-key-')
  const file = join(dir, 'private_key.pem')
  await writeFile(file, pkcs8, { mode: 0o600 })
  const second = await build(t, { JWT_PRIVATE_KEY_FILE: file, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl })
  t.equal((await tokenRequest(second.app, { public_key: KID, coze_api_key: API_KEY })).statusCode, 200)
  t.equal(coze.exchanges.length, 2, 'both JWTs verified with the public key')
})

t.test('the cache reuses a token for identical requests and shares one exchange between concurrent ones', async (t) => {
  let issued = 0
  const coze = await startCoze(t, async (_req, res) => {
    await sleep(50)
    sendJson(res, 200, { access_token: `czs_${++issued}`, expires_in: 1900000000 })
  })
  const { app } = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl, COZE_TOKEN_REUSE_SECONDS: 60 })
  const body = { public_key: KID, coze_api_key: API_KEY, duration_seconds: 3600 }

  const concurrent = await Promise.all(Array.from({ length: 5 }, async () => await tokenRequest(app, body)))
  t.same(new Set(concurrent.map((res) => res.json().data.access_token)), new Set(['czs_1']), 'five concurrent requests, one exchange')
  t.equal((await tokenRequest(app, body)).json().data.access_token, 'czs_1', 'reused while young')
  t.equal((await tokenRequest(app, { ...body, session_name: 'other-user' })).json().data.access_token, 'czs_2', 'another session_name is another token')
  t.equal((await tokenRequest(app, { ...body, duration_seconds: 7200 })).json().data.access_token, 'czs_3', 'another duration is another token')
  t.equal((await tokenRequest(app, { ...body, public_key: 'another-kid' })).json().data.access_token, 'czs_4', 'another kid is another token')
  t.equal((await tokenRequest(app, { ...body, duration_seconds: 5 })).json().data.access_token, 'czs_5')
  await sleep(600)
  t.equal((await tokenRequest(app, { ...body, duration_seconds: 5 })).json().data.access_token, 'czs_6', 'reuse is capped at a tenth of the duration')
  t.equal(coze.exchanges.length, 6)
})

t.test('COZE_TOKEN_REUSE_SECONDS=0 exchanges every time; failures are never cached', async (t) => {
  let calls = 0
  const coze = await startCoze(t, (_req, res) => {
    calls += 1
    if (calls === 2) sendJson(res, 500, { error_code: 'internal_error', error_message: 'try again' })
    else sendJson(res, 200, { access_token: `czs_${calls}`, expires_in: 1900000000 })
  })
  const off = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl, COZE_TOKEN_REUSE_SECONDS: 0 })
  const body = { public_key: KID, coze_api_key: API_KEY }
  t.equal((await tokenRequest(off.app, body)).json().data.access_token, 'czs_1')
  const failed = await tokenRequest(off.app, body)
  t.equal(failed.statusCode, 502)

  const on = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl })
  calls = 1
  t.equal((await tokenRequest(on.app, body)).statusCode, 502, 'a failure')
  t.equal((await tokenRequest(on.app, body)).json().data.access_token, 'czs_3', 'is not reused: the next request exchanges again')
})

t.test('bad requests are 400 VALIDATION_FAILED naming the field; nothing is sent to Coze', async (t) => {
  const coze = await startCoze(t)
  const { app } = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl })
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ coze_api_key: API_KEY }, 'public_key'],
    [{ public_key: 42, coze_api_key: API_KEY }, 'public_key'],
    [{ public_key: '', coze_api_key: API_KEY }, 'public_key'],
    [{ public_key: '-----BEGIN PUBLIC KEY-----\nMIIB', coze_api_key: API_KEY }, 'public_key'],
    [{ public_key: KID, coze_api_key: API_KEY, duration_seconds: 86400 }, 'duration_seconds'],
    [{ public_key: KID, coze_api_key: API_KEY, duration_seconds: 0 }, 'duration_seconds'],
    [{ public_key: KID, coze_api_key: API_KEY, duration_seconds: '3600' }, 'duration_seconds'],
    [{ public_key: KID, coze_api_key: API_KEY, duration_seconds: 1.5 }, 'duration_seconds'],
    [{ public_key: KID, coze_api_key: API_KEY, session_name: 'x'.repeat(129) }, 'session_name'],
    [{ public_key: KID, coze_api_key: API_KEY, extra: true }, 'extra']
  ]
  for (const [body, field] of cases) {
    const res = await tokenRequest(app, body)
    t.equal(res.statusCode, 400, JSON.stringify(body).slice(0, 60))
    const answer = res.json()
    t.equal(answer.success, false)
    t.equal(answer.data.error, 'VALIDATION_FAILED')
    t.equal(answer.data.field, field)
    t.match(answer.message, new RegExp(`^无效的请求数据: ${field}`))
  }
  const wrongKey = await tokenRequest(app, { public_key: KID, coze_api_key: 'not-the-key' })
  t.equal(wrongKey.statusCode, 401)
  t.same(wrongKey.json(), { success: false, data: { error: 'UNAUTHORIZED' }, message: 'API 密钥无效或缺失' })
  t.equal((await tokenRequest(app, { public_key: KID })).statusCode, 401, 'no key at all')
  t.equal((await tokenRequest(app, { public_key: KID, coze_api_key: API_KEY }, { 'x-api-key': 'not-the-key' })).statusCode, 401, 'the header wins over the body')
  const pem = await tokenRequest(app, { public_key: '-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA', coze_api_key: API_KEY })
  t.equal(pem.json().data.reason, 'public_key is not valid: it takes the key fingerprint shown on the Coze app page (43 characters, the JWT kid), not the public key itself', 'a key where the fingerprint goes gets a hint')
  t.match((await tokenRequest(app, { public_key: 'x'.repeat(200), coze_api_key: API_KEY })).json().data.reason, /: it takes the key fingerprint/)
  t.equal(coze.requests.length, 0, 'Coze was never called')
})

t.test('not configured: 503 NOT_CONFIGURED, never an open door', async (t) => {
  const coze = await startCoze(t)
  const noKey = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl })
  const res = await tokenRequest(noKey.app, { public_key: KID, coze_api_key: API_KEY })
  t.equal(res.statusCode, 503)
  t.same(res.json().data, { error: 'NOT_CONFIGURED', missing: 'JWT_PRIVATE_KEY' })
  t.ok(noKey.logs.records().some((line) => line.level === 40 && String(line.msg).includes('JWT_PRIVATE_KEY')), 'a warning at start')

  const noApiKey = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: ' , ', COZE_API_URL: coze.tokenUrl })
  const open = await tokenRequest(noApiKey.app, { public_key: KID, coze_api_key: 'anything' })
  t.equal(open.statusCode, 503)
  t.same(open.json().data, { error: 'NOT_CONFIGURED', missing: 'EXPECTED_COZE_API_KEY' })
  t.equal(coze.requests.length, 0)
})

t.test('Coze errors: 502 COZE_EXCHANGE_FAILED with Coze\'s code and message', async (t) => {
  const answers: UpstreamHandler[] = [
    (_req, res) => { sendJson(res, 401, { error_code: 'invalid_client', error_message: 'invalid jwt: kid not been registred', error: 'invalid_client' }) },
    (_req, res) => { sendJson(res, 400, { code: 4100, msg: 'authentication is invalid' }) },
    (_req, res) => { res.writeHead(500, { 'content-type': 'text/html' }); res.end('<html>oops</html>') },
    (_req, res) => { sendJson(res, 200, { access_token: 'czs_x' }) },
    (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"access_token": "czs_trunc') },
    (_req, res) => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(Buffer.alloc(100 * 1024, 32)) }
  ]
  let index = 0
  const coze = await startCoze(t, async (req, res) => { await answers[index++]?.(req, res) })
  const { app, logs } = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl, COZE_TOKEN_REUSE_SECONDS: 0 })
  const body = { public_key: KID, coze_api_key: API_KEY }

  const kid = await tokenRequest(app, body)
  t.equal(kid.statusCode, 502)
  t.match(kid.json(), {
    success: false,
    data: { error: 'COZE_EXCHANGE_FAILED', upstream_status: 401, error_code: 'invalid_client', error_message: 'invalid jwt: kid not been registred', hint: /api\.coze\.cn or api\.coze\.com/ },
    message: 'Coze 令牌交换失败: HTTP 401'
  })
  t.same((await tokenRequest(app, body)).json().data, { error: 'COZE_EXCHANGE_FAILED', upstream_status: 400, error_code: '4100', error_message: 'authentication is invalid' })
  t.same((await tokenRequest(app, body)).json().data, { error: 'COZE_EXCHANGE_FAILED', upstream_status: 500 })
  t.same((await tokenRequest(app, body)).json().data, { error: 'COZE_EXCHANGE_FAILED', upstream_status: 200, reason: 'malformed response' })
  t.same((await tokenRequest(app, body)).json().data, { error: 'COZE_EXCHANGE_FAILED', upstream_status: 200, reason: 'malformed response' })
  const huge = await tokenRequest(app, body)
  t.equal(huge.statusCode, 502)
  t.same(huge.json().data, { error: 'COZE_EXCHANGE_FAILED', reason: 'response too large' })
  t.notOk(logs.text.includes('<html>'), 'upstream bodies are not logged')
})

t.test('Coze unreachable: 502 UPSTREAM_UNREACHABLE; too slow: 504 UPSTREAM_TIMEOUT', async (t) => {
  const closed = await startUpstream(t, () => {})
  const closedUrl = `${closed.url}${TOKEN_PATH}`
  closed.server.close()
  await new Promise((resolve) => setImmediate(resolve))
  const down = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: closedUrl })
  const unreachable = await tokenRequest(down.app, { public_key: KID, coze_api_key: API_KEY })
  t.equal(unreachable.statusCode, 502)
  t.same(unreachable.json(), { success: false, data: { error: 'UPSTREAM_UNREACHABLE', origin: closed.url, cause: 'ECONNREFUSED' }, message: '无法连接上游服务' }, 'the origin and the cause, never the path')
  t.ok(down.logs.records().some((line) => line.msg === 'request failed' && line.origin === closed.url && line.cause === 'ECONNREFUSED'), 'and the log line says the same')

  const silent = await startCoze(t, () => { /* never answers */ })
  const slow = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: silent.tokenUrl, COZE_TIMEOUT_MS: 300 })
  const started = Date.now()
  const timeout = await tokenRequest(slow.app, { public_key: KID, coze_api_key: API_KEY })
  t.equal(timeout.statusCode, 504)
  t.same(timeout.json(), { success: false, data: { error: 'UPSTREAM_TIMEOUT', origin: new URL(silent.tokenUrl).origin, cause: 'timeout' }, message: '上游服务响应超时' })
  t.ok(Date.now() - started < 1300, 'within the timeout plus a second')
})

t.test('without COZE_APP_ID the caller key never leaves: 503 NOT_CONFIGURED, unless COZE_ISS_FROM_CALLER_KEY', async (t) => {
  const coze = await startCoze(t)
  const { app, logs } = await build(t, { JWT_PRIVATE_KEY: pkcs8, EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl })
  const res = await tokenRequest(app, { public_key: KID }, { 'x-api-key': API_KEY })
  t.equal(res.statusCode, 503)
  t.same(res.json().data, { error: 'NOT_CONFIGURED', missing: 'COZE_APP_ID' })
  t.equal(coze.requests.length, 0, 'nothing was sent to Coze')
  t.notOk(logs.text.includes('COZE_ISS_FROM_CALLER_KEY'))
  t.ok(logs.records().some((line) => line.level === 40 && /^no COZE_APP_ID: POST \/token answers 503 NOT_CONFIGURED/.test(String(line.msg))), 'a warning at start, as for the key')

  const legacy = await build(t, { JWT_PRIVATE_KEY: pkcs8, EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl, COZE_ISS_FROM_CALLER_KEY: true })
  t.ok(legacy.logs.records().some((line) => line.level === 40 && /COZE_ISS_FROM_CALLER_KEY=true/.test(String(line.msg))), 'a warning at start names it')
  t.equal((await tokenRequest(legacy.app, { public_key: KID, coze_api_key: API_KEY })).statusCode, 200)
  t.equal(coze.exchanges[0]?.claims.iss, API_KEY, 'the Rust service\'s behaviour, on request')
})

t.test('the key in X-API-Key; token answers are never cached; User-Agent out, Coze\'s logid in', async (t) => {
  const coze = await startCoze(t, (req, res) => {
    res.setHeader('x-tt-logid', '20261129abcdef0123')
    if (JSON.parse(req.body).duration_seconds === 60) { sendJson(res, 401, { error_code: 'invalid_client', error_message: 'invalid jwt' }); return }
    sendJson(res, 200, { access_token: 'czs_header_0123456789', expires_in: 1900000000, token_type: 'Bearer' })
  })
  const { app, logs } = await build(t, { JWT_PRIVATE_KEY: pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: coze.tokenUrl })
  const res = await tokenRequest(app, { public_key: KID }, { 'x-api-key': API_KEY })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['cache-control'], 'no-store, max-age=0, private')
  t.equal(res.headers.pragma, 'no-cache')
  t.match(coze.requests[0]?.headers['user-agent'], /^aibill-token-service\/\d+\.\d+\.\d+$/)
  t.ok(logs.records().some((line) => line.route === '/token' && line.coze_logid === '20261129abcdef0123' && line.cache === 'miss'), 'the logid is in the log line')

  const failed = await tokenRequest(app, { public_key: KID, duration_seconds: 60 }, { 'x-api-key': API_KEY })
  t.equal(failed.statusCode, 502)
  t.match(failed.json().data, { error: 'COZE_EXCHANGE_FAILED', error_code: 'invalid_client', logid: '20261129abcdef0123' })
  t.equal(failed.headers['cache-control'], 'no-store, max-age=0, private', 'errors too')
  const refused = await tokenRequest(app, { public_key: KID }, { 'x-api-key': 'wrong' })
  t.equal(refused.headers['cache-control'], 'no-store, max-age=0, private')
})
