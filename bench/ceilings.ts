import { hash, randomBytes, randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import Fastify from 'fastify'
import { SignJWT } from 'jose'
import { Pool } from 'undici'
import { importRsaPrivateKey } from '../src/lib/coze/jwt.js'
import { serverOptions } from '../src/options.js'
import { successEnvelope } from '../src/lib/http/envelope.js'
import { Envelope } from '../src/schemas/envelope.js'
import { AuthUrlData, CompleteAuthBody, CompleteAuthData } from '../src/schemas/augment.js'
import { HealthData } from '../src/schemas/health.js'
import { TokenBody, TokenData } from '../src/schemas/token.js'

/**
 * The ceilings of the bench: the least a server can do for the same work.
 * GET /hello: a bare Fastify 5 route with the service's logger settings (one line per request, same level).
 * POST /sign-and-post: sign the same JWT with jose and post it to the same Coze mock with an undici pool.
 * GET /same-health and POST /same-token: the service's own answers (same schemas, same envelope, same body
 * validation), sent by a bare server with nothing else: what the service adds to its answers, not the answers'
 * own cost. GET /reference/auth-url and POST /reference/complete-auth: the sign-in as a bare server would do it
 * (the same PKCE work, a Map for the states, the same round trip to the tenant, the same schemas).
 * POST /bare-relay: the relay with nothing but the work itself: the body parsed by Fastify, the seed's json_parse
 * done inline with JSON.parse when asked for, the params sent with the caller's headers through an undici pool to
 * the Feishu mock, the answer read and returned. No policy, no envelope, no limits: the ceiling of POST /resend.
 */
// The service's name and version, as its /health says them (build/bench/ sits two levels below the root).
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { name: string, version: string }
const key = await importRsaPrivateKey(process.env.JWT_PRIVATE_KEY as string)
const cozeUrl = new URL(process.env.COZE_API_URL as string)
const pool = new Pool(cozeUrl.origin, { connections: 64, keepAliveTimeout: 30_000 })

const app = Fastify(serverOptions({ logLevel: process.env.LOG_LEVEL ?? 'info' }))
app.addHook('onResponse', (request, reply, done) => {
  request.log.info({ method: request.method, route: request.routeOptions.url, statusCode: reply.statusCode, durationMs: reply.elapsedTime }, 'request completed')
  done()
})
app.get('/hello', async () => ({ hello: 'world' }))
app.get('/same-health', { schema: { response: { 200: Envelope(HealthData) } } }, async (request) =>
  successEnvelope(request.headers['accept-language'], 'HEALTH_OK', { status: 'ok' as const, service: pkg.name, version: pkg.version, timestamp: new Date().toISOString() }))
const TOKEN = { access_token: `czs_${'x'.repeat(60)}`, expires_in: 1900000000, token_type: 'Bearer' }
app.post('/same-token', { schema: { body: TokenBody, response: { 200: Envelope(TokenData) } } }, async (request) =>
  successEnvelope(request.headers['accept-language'], 'TOKEN_OK', TOKEN))
app.post('/sign-and-post', async () => {
  const now = Math.floor(Date.now() / 1000)
  const jwt = await new SignJWT({})
    .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: 'bench-kid' })
    .setIssuer('bench-app').setAudience('api.coze.cn').setIssuedAt(now).setExpirationTime(now + 600)
    .setJti(randomBytes(32).toString('base64url'))
    .sign(key)
  const response = await pool.request({
    path: cozeUrl.pathname,
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${jwt}` },
    body: JSON.stringify({ grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', duration_seconds: 86399 })
  })
  return await response.body.json()
})
const feishuPool = new Pool(process.env.FEISHU_ORIGIN as string, { connections: 64, keepAliveTimeout: 30_000 })
interface RelayBody { location: string, headers?: Record<string, string>, params: { records: Array<{ fields: unknown }> }, commands?: { json_parse?: string[] } }
app.post('/bare-relay', async (request) => {
  const { location, headers, params, commands } = request.body as RelayBody
  if (commands?.json_parse !== undefined) for (const record of params.records) if (typeof record.fields === 'string') record.fields = JSON.parse(record.fields)
  const response = await feishuPool.request({ path: new URL(location).pathname, method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify(params) })
  return { status: response.statusCode, body: await response.body.json() }
})
const tenant = new URL(process.env.TENANT_URL as string)
const tenantPool = new Pool(tenant.origin, { connections: 64, keepAliveTimeout: 30_000 })
const states = new Map<string, string>()
app.get('/reference/auth-url', { schema: { response: { 200: Envelope(AuthUrlData) } } }, async (request) => {
  const verifier = randomBytes(32).toString('base64url')
  const state = randomBytes(16).toString('base64url')
  states.set(state, verifier)
  const query = new URLSearchParams([['response_type', 'code'], ['code_challenge', hash('sha256', verifier, 'base64url')], ['client_id', 'v'], ['state', state], ['prompt', 'login']])
  return successEnvelope(request.headers['accept-language'], 'AUTH_URL_OK', { authorize_url: `https://auth.augmentcode.com/authorize?${query.toString()}`, state })
})
app.post('/reference/complete-auth', { schema: { body: CompleteAuthBody, response: { 200: Envelope(CompleteAuthData) } } }, async (request) => {
  const { code, state, tenant_url: tenantUrl } = request.body as { code: string, state: string, tenant_url: string }
  const verifier = states.get(state)
  states.delete(state)
  const response = await tenantPool.request({
    path: new URL('token', tenant).pathname,
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ grant_type: 'authorization_code', client_id: 'v', code_verifier: verifier, redirect_uri: '', code })
  })
  const answer = await response.body.json() as { access_token: string }
  return successEnvelope(request.headers['accept-language'], 'COMPLETE_AUTH_OK', { status: 'success' as const, token: answer.access_token, tenant_url: tenantUrl, token_info: { id: randomUUID(), created_at: new Date().toISOString() } })
})
await app.listen({ port: 0, host: '127.0.0.1' })
const address = app.server.address() as { port: number }
process.stdout.write(`${JSON.stringify({ port: address.port })}\n`)
process.on('SIGTERM', () => { void app.close().then(async () => { await Promise.all([pool.close(), tenantPool.close(), feishuPool.close()]) }) })
