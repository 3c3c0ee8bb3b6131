import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import Fastify from 'fastify'
import { SignJWT } from 'jose'
import { Pool } from 'undici'
import { importRsaPrivateKey } from '../src/lib/coze-jwt.js'
import { serverOptions } from '../src/options.js'
import { Envelope, successEnvelope } from '../src/schemas/envelope.js'
import { HealthData } from '../src/schemas/health.js'
import { TokenBody, TokenData } from '../src/schemas/token.js'

/**
 * The ceilings of the bench: the least a server can do for the same work.
 * GET /hello: a bare Fastify 5 route with the service's logger settings (one line per request, same level).
 * POST /sign-and-post: sign the same JWT with jose and post it to the same Coze mock with an undici pool.
 * GET /same-health and POST /same-token: the service's own answers (same schemas, same envelope, same body
 * validation), sent by a bare server with nothing else: what the service adds to its answers, not the answers'
 * own cost. These are not targets; they say where the rest of a ratio goes.
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
await app.listen({ port: 0, host: '127.0.0.1' })
const address = app.server.address() as { port: number }
process.stdout.write(`${JSON.stringify({ port: address.port })}\n`)
process.on('SIGTERM', () => { void app.close().then(async () => { await pool.close() }) })
