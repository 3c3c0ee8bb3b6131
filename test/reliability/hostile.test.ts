import { connect, createServer as createNetServer, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { Ajv } from 'ajv'
import { decodeJwt } from 'jose'
import t, { type Test } from 'tap'
import { Agent, request } from 'undici'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import { ServiceError } from '../../src/lib/http/errors.js'
import { MAX_MATCHED_VALUES } from '../../src/lib/relay/index.js'
import { serverOptions } from '../../src/options.js'
import { answerClientError } from '../../src/lib/http/error-answers.js'
import errors from '../../src/plugins/errors.js'
import { ResendHeaders } from '../../src/schemas/resend.js'
import { privateResolver } from '../fixtures/ssrf.js'
import { startServer } from '../fixtures/server-process.js'
import { API_KEY, build, KID, LogCapture, sendJson, startUpstream, testKeys, type UpstreamHandler } from '../helper.js'

// Attacks a hostile or careless caller can make, each once found to hurt the service; each must stay bounded.

const nested = (depth: number, inner = '0'): string => '['.repeat(depth) + inner + ']'.repeat(depth)
const TOKEN_PATH = '/api/permission/oauth2/token'

async function relay (t: Test, handler: UpstreamHandler, config: Record<string, unknown> = {}) {
  const upstream = await startUpstream(t, handler)
  const built = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`, ...config }, { resolver: privateResolver })
  const resend = async (body: unknown) =>
    await built.app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, payload: typeof body === 'string' ? body : JSON.stringify(body) })
  return { ...built, upstream, resend, location: `${upstream.url}/open-apis/x` }
}

const echo: UpstreamHandler = (req, res) => { sendJson(res, 200, { received: req.body.length }) }

t.test('JSONPath work is bounded: the 292-byte freeze is refused for its depth, the worst walks are 400 COMMAND_FAILED, nothing sent', async (t) => {
  const { resend, location, upstream, app } = await relay(t, echo)
  // The body that froze the service for 35 s: 100 nested arrays and three recursive descents (292 bytes).
  const freeze = `{"location":"${location}","params":${nested(100)},"commands":{"json_parse":["$..*..*..*"]}}`
  const tooDeep = await resend(freeze)
  t.equal(tooDeep.statusCode, 400)
  t.match(tooDeep.json(), { success: false, data: { error: 'VALIDATION_FAILED', field: 'body' } }, 'refused for its depth before any walk')
  const refused = await resend(freeze.replace(nested(100), nested(60)))
  t.equal(refused.statusCode, 400)
  t.match(refused.json(), { success: false, data: { error: 'COMMAND_FAILED', command: 'json_parse', reason: /match more than 10000 values|took longer than 200 ms|recursion limit/ } })

  // One descent over 60 levels is allowed and cheap.
  const deepButFine = await resend({ location, params: JSON.parse(nested(60, '"1"')), commands: { json_parse: ['$.params..*'] } })
  t.equal(deepButFine.statusCode, 200, deepButFine.body)
  t.match(deepButFine.json().data.commands, { json_parse: [{ parsed: 1 }] })

  // 200,000 elements: the walk stops at the match bound (with time enough for it on a loaded machine).
  const patient = await relay(t, echo, { JSONPATH_TIMEOUT_MS: 20_000 })
  const wide = await patient.resend({ location: patient.location, params: Array.from({ length: 200_000 }, () => '0'), commands: { json_parse: ['$.params..*'] } })
  t.equal(wide.statusCode, 400)
  t.match(wide.json(), { data: { error: 'COMMAND_FAILED', reason: `the expressions match more than ${MAX_MATCHED_VALUES} values`, limit: MAX_MATCHED_VALUES } })
  t.equal(upstream.requests.length + patient.upstream.requests.length, 1, 'only the allowed request was sent')

  // While the worst requests arrive at once, a probe still answers: the walks run in a worker thread.
  const started = performance.now()
  const attacks = Array.from({ length: 8 }, async () => await resend({ location, params: Array.from({ length: 200_000 }, () => 0), commands: { json_parse: ['$..*..*'] } }))
  const health = await app.inject('/health')
  const healthMs = performance.now() - started
  t.equal(health.statusCode, 200)
  const statuses = (await Promise.all(attacks)).map((res) => res.statusCode)
  t.ok(statuses.every((status) => status === 400 || status === 503), `each refused (400) or turned away by the full queue (503): ${statuses.join(',')}`)
  t.comment(`/health answered ${healthMs.toFixed(0)} ms after 8 worst-case relays were sent at once`)
})

t.test('4 connections sending the worst expressions back to back leave /health answering (a real server)', async (t) => {
  const upstream = await startUpstream(t, echo)
  const server = await startServer(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}` })
  t.ok(server.url, server.output())
  const location = `${upstream.url}/open-apis/x`
  const limit = 1048576
  const widest = `{"location":"${location}","params":[${Array.from({ length: Math.floor((limit - 200) / 2) }, () => '0').join(',')}],"commands":{"json_parse":["$..*"]}}`
  let deep = '"x"'
  for (let i = 0; i < 60; i++) deep = `[${deep},{"a":"1"}]`
  const copies = Math.floor((limit - 200) / (deep.length + 1))
  const deepest = `{"location":"${location}","params":[${Array.from({ length: copies }, () => deep).join(',')}],"commands":{"json_parse":["$..*..*"]}}`
  const filtered = deepest.replace('"$..*..*"', '"$..[?@..[?@..a]]"')
  const agent = new Agent({ connections: 8 })
  t.teardown(async () => { await agent.close() })
  let stop = false
  const statuses = new Map<number | string, number>()
  const attacker = async (body: string): Promise<void> => {
    while (!stop) {
      const status = await request(`${server.url as string}/resend`, { method: 'POST', dispatcher: agent, headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, body })
        .then(async (res) => { await res.body.dump(); return res.statusCode }, (err: NodeJS.ErrnoException) => String(err.code))
      statuses.set(status, (statuses.get(status) ?? 0) + 1)
      if (typeof status === 'string') await sleep(100)
    }
  }
  const attackers = [widest, deepest, filtered, widest].map(attacker)
  await sleep(500)
  const times: number[] = []
  const until = performance.now() + 5000
  while (performance.now() < until && server.child.exitCode === null) {
    const started = performance.now()
    const answered = await request(`${server.url as string}/health`, { dispatcher: agent }).then(async (res) => { await res.body.dump(); return true }, () => false)
    if (answered) times.push(performance.now() - started)
    await sleep(10)
  }
  stop = true
  await Promise.all(attackers)
  t.equal(server.child.exitCode, null, `the server is still up${server.child.exitCode === null ? '' : `: ${server.output().slice(-2000)}`}`)
  times.sort((a, b) => a - b)
  const p99 = times[Math.ceil(times.length * 0.99) - 1] as number
  t.ok([...statuses.keys()].every((status) => status === 400 || status === 503), `attacks answered ${JSON.stringify([...statuses])}`)
  // Loose on purpose: the figure (under 50 ms on the 2-core machine) goes in docs/reliability.md.
  t.ok(p99 < 250, `/health p99 ${p99.toFixed(1)} ms over ${times.length} probes`)
  t.comment(`worst expressions: /health p50 ${(times[Math.floor(times.length / 2)] as number).toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${(times.at(-1) as number).toFixed(1)} ms; attacks ${JSON.stringify([...statuses])}`)
})

t.test('deep JSON: bodies past BODY_MAX_DEPTH are 400 on every route; deep answers stay inside the envelope', async (t) => {
  const deepAnswer = nested(5000)
  const { resend, location, app, upstream } = await relay(t, (req, res) => {
    res.writeHead(req.url.endsWith('fail') ? 400 : 200, { 'content-type': 'application/json' })
    res.end(deepAnswer)
  })
  for (const depth of [64, 3000, 100_000]) {
    const res = await resend(`{"location":"${location}","params":${nested(depth)}}`)
    t.equal(res.statusCode, 400, `params nested ${depth} deep`)
    t.match(res.json(), { success: false, data: { error: 'VALIDATION_FAILED', field: 'body', limit: 64 } })
  }
  const limit = await resend(`{"location":"${location}/fail","params":${nested(63)}}`)
  t.equal(limit.statusCode, 502, 'a body at the limit is accepted')
  t.equal(upstream.requests.length, 1)

  const ok = await resend({ location, params: {} })
  t.equal(ok.statusCode, 200)
  t.equal(ok.json().data.body, deepAnswer, 'a 2xx answer too deep to carry as JSON is passed as text')
  const failed = await resend({ location: `${location}/fail`, params: {} })
  t.equal(failed.statusCode, 502)
  t.match(failed.json(), { success: false, data: { error: 'UPSTREAM_ERROR', status: 400, body: deepAnswer } })

  for (const [url, headers] of [['/token', {}], ['/api/complete-auth', {}]] as const) {
    const res = await app.inject({ method: 'POST', url, headers: { ...headers, 'content-type': 'application/json' }, payload: `{"a":${nested(3000)}}` })
    t.equal(res.statusCode, 400, url)
    t.match(res.json(), { data: { error: 'VALIDATION_FAILED', field: 'body' } })
  }
  // Brackets inside strings are text, not depth.
  const text = await resend({ location, params: { s: '['.repeat(10_000) } })
  t.equal(text.statusCode, 200)
})

t.test('no detail can take an error answer out of the envelope', async (t) => {
  const logs = new LogCapture()
  const server = Fastify(serverOptions({ logStream: logs }))
  t.teardown(async () => await server.close())
  await server.register(fp(errors))
  const cyclic: Record<string, unknown> = {}
  cyclic.self = cyclic
  server.get('/cyclic', async () => { throw new ServiceError('UPSTREAM_ERROR', { body: cyclic }) })
  server.get('/big-int', async () => { throw new ServiceError('COMMAND_FAILED', { value: 10n }) })
  const res = await server.inject('/cyclic')
  t.equal(res.statusCode, 502)
  t.same(res.json(), { success: false, data: { error: 'UPSTREAM_ERROR', details: 'omitted: not serializable' }, message: '上游服务返回错误' })
  t.same((await server.inject('/big-int')).json().data, { error: 'COMMAND_FAILED', details: 'omitted: not serializable' })
  t.ok(logs.records().some((line) => line.msg === 'error details could not be serialized; left out'))
})

t.test('the token cache never drops a waiting caller; past COZE_MAX_PENDING_EXCHANGES the answer is 503', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const coze = await startUpstream(t, async (req, res) => {
    await gate
    const session = decodeJwt((req.headers.authorization ?? '').slice(7)).session_name
    sendJson(res, 200, { access_token: `czs_for_${String(session)}_0123456789`, expires_in: Math.floor(Date.now() / 1000) + 900, token_type: 'Bearer' })
  })
  const { app, logs } = await build(t, {
    JWT_PRIVATE_KEY: testKeys().pkcs8, EXPECTED_COZE_API_KEY: API_KEY, COZE_APP_ID: '1180000000001', COZE_API_URL: `${coze.url}${TOKEN_PATH}`, COZE_MAX_PENDING_EXCHANGES: 5
  })
  const ask = async (session: string) => await app.inject({ method: 'POST', url: '/token', payload: { public_key: KID, coze_api_key: API_KEY, session_name: session } })
  const waiting = Array.from({ length: 5 }, async (_unused, i) => await ask(`user-${i}`))
  for (let i = 0; i < 100 && coze.requests.length < 5; i++) await sleep(20)
  const refused = await ask('user-extra')
  t.equal(refused.statusCode, 503)
  t.match(refused.json(), { data: { error: 'SERVICE_UNAVAILABLE', reason: 'pending_exchanges', limit: 5 } })
  const joined = ask('user-0')
  release()
  const answers = await Promise.all(waiting)
  t.same(answers.map((res) => res.statusCode), [200, 200, 200, 200, 200])
  t.same(answers.map((res) => res.json().data.access_token), Array.from({ length: 5 }, (_unused, i) => `czs_for_user-${i}_0123456789`), 'each caller gets its own token')
  t.equal((await joined).json().data.access_token, 'czs_for_user-0_0123456789', 'a caller that joined an exchange in flight shares its outcome')
  t.equal(coze.requests.length, 5)
  t.notOk(logs.text.includes('evicted'))
})

t.test('MAX_CONNECTIONS: idle connections make room once they have served nothing for a while; busy ones are kept and the newcomer is refused', async (t) => {
  let hold = true
  const { app, location } = await relay(t, async (_req, res) => {
    while (hold) await sleep(20)
    sendJson(res, 200, { ok: true })
  }, { MAX_CONNECTIONS: 3 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const origin = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const idle = new Agent({ connections: 3, pipelining: 1 })
  t.teardown(async () => { await idle.destroy() })
  const first = await Promise.all([1, 2, 3].map(async () => await request(`${origin}/health`, { dispatcher: idle })))
  for (const res of first) await res.body.dump()
  const early = new Agent()
  t.teardown(async () => { await early.destroy() })
  await t.rejects(request(`${origin}/health`, { dispatcher: early }), 'kept-alive connections that served a moment ago are a pool\'s: kept')
  // (POOLED_FOR_MS in lib/http/connection-guard.ts: 10 s.)
  await sleep(10_500)
  const fresh = new Agent()
  t.teardown(async () => { await fresh.destroy() })
  const served = await request(`${origin}/health`, { dispatcher: fresh })
  t.equal(served.statusCode, 200, 'an idle keep-alive connection was closed to make room')
  await served.body.dump()

  const busy = new Agent({ connections: 3 })
  t.teardown(async () => { await busy.destroy() })
  await fresh.close()
  await idle.close()
  const inFlight = [1, 2, 3].map(async () => await request(`${origin}/resend`, {
    dispatcher: busy, method: 'POST', headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, body: JSON.stringify({ location, params: {} })
  }))
  for (let i = 0; i < 100; i++) {
    await sleep(20)
    if (await new Promise<number>((resolve) => { app.server.getConnections((_err, count) => { resolve(count) }) }) >= 3) break
  }
  const newcomer = new Agent()
  t.teardown(async () => { await newcomer.destroy() })
  await t.rejects(request(`${origin}/health`, { dispatcher: newcomer }), 'the fourth connection is refused while three are busy')
  hold = false
  t.same((await Promise.all(inFlight)).map((res) => res.statusCode), [200, 200, 200], 'the busy ones finish')
})

t.test('/resend headers: the compiled validator refuses what HTTP cannot carry, and nothing is sent', async (t) => {
  const schema = ResendHeaders()
  const compiled = TypeCompiler.Compile(schema)
  const ajv = new Ajv({ strict: false }).compile(schema)
  const bad: Array<Record<string, unknown>> = [
    { 'X A': 'v' }, { '': 'v' }, { 'X:A': 'v' }, { ['X'.repeat(257)]: 'v' }, { X: 'a\u0001b' }, { X: 'a\u007fb' }, { X: '中文' },
    { X: 'a\r\nb' }, { X: ['a'] }, { X: 1 }, { ['X'.repeat(300)]: ['a'] }, { X: 'x'.repeat(16385) }
  ]
  for (const headers of bad) {
    t.notOk(ajv(headers), `Ajv refuses ${JSON.stringify(headers).slice(0, 60)}`)
    t.notOk(compiled.Check(headers), `TypeBox refuses ${JSON.stringify(headers).slice(0, 60)}`)
  }
  for (const headers of [{ Authorization: 'Bearer t-1' }, { 'X-Latin': 'caf\u00e9\ttab' }, { ['X'.repeat(256)]: '' }]) t.ok(ajv(headers), JSON.stringify(headers).slice(0, 60))

  const { resend, location, upstream } = await relay(t, echo)
  for (const headers of bad) {
    const res = await resend({ location, headers, params: {} })
    t.equal(res.statusCode, 400, JSON.stringify(headers).slice(0, 60))
    t.match(res.json().data, { error: 'VALIDATION_FAILED', field: /^headers/ })
  }
  t.equal(upstream.requests.length, 0, 'nothing was sent')
})

/** Sends raw bytes and reads until the server closes. */
async function rawExchange (port: number, bytes: string): Promise<string> {
  return await new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1')
    let text = ''
    socket.on('data', (chunk) => { text += chunk.toString() })
    socket.on('error', () => {})
    socket.on('close', () => { resolve(text) })
    socket.write(bytes)
  })
}

t.test('malformed HTTP: the envelope where the socket can take it, and no raw bytes in the logs', async (t) => {
  const { app, logs } = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, LOG_LEVEL: 'trace' })
  app.log.level = 'trace'
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const secretBody = '{"coze_api_key":"body-secret-0123456789"}'
  const broken = await rawExchange(port, `POST /token HTTP/1.1\r\nHost: x\r\nX-API-Key: ${API_KEY}\r\nBroken header line\r\nContent-Length: ${secretBody.length}\r\n\r\n${secretBody}`)
  t.match(broken, /^HTTP\/1\.1 400 Bad Request\r\n/)
  t.match(broken, /content-type: application\/json/i)
  t.same(JSON.parse(broken.slice(broken.indexOf('\r\n\r\n') + 4)), { success: false, data: { error: 'BAD_REQUEST' }, message: '请求无效' })
  const smuggle = await rawExchange(port, `POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`)
  t.match(smuggle, /^HTTP\/1\.1 400 Bad Request\r\n/)
  t.match(JSON.parse(smuggle.slice(smuggle.indexOf('\r\n\r\n') + 4)), { success: false, data: { error: 'BAD_REQUEST' } })
  const huge = await rawExchange(port, `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`)
  t.match(huge, /^HTTP\/1\.1 431 /)
  t.match(JSON.parse(huge.slice(huge.indexOf('\r\n\r\n') + 4)), { data: { error: 'HEADERS_TOO_LARGE' } })
  for (const secret of [API_KEY, 'body-secret-0123456789', 'rawPacket']) t.notOk(logs.text.includes(secret), `no ${secret.slice(0, 8)} in the logs`)
  t.ok(logs.records().some((line) => line.msg === 'malformed request refused' && line.code === 'HPE_INVALID_HEADER_TOKEN'), 'logged by its parser code')
})

t.test('a request that arrives too slowly is 408 in the envelope', async (t) => {
  const { app } = await build(t)
  const listener = createNetServer()
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { listener.close() })
  const accepted = new Promise<Socket>((resolve) => listener.once('connection', resolve))
  const client = connect((listener.address() as { port: number }).port, '127.0.0.1')
  let text = ''
  client.on('data', (chunk) => { text += chunk.toString() })
  const closed = new Promise((resolve) => client.on('close', resolve))
  answerClientError.call(app, Object.assign(new Error('timeout'), { code: 'ERR_HTTP_REQUEST_TIMEOUT' }), await accepted)
  await closed
  t.match(text, /^HTTP\/1\.1 408 Request Timeout\r\n/)
  t.match(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4)), { data: { error: 'REQUEST_TIMEOUT' } })
})

t.test('a reset or already closed connection gets nothing written, and no log line', async (t) => {
  const { app, logs } = await build(t)
  const listener = createNetServer()
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { listener.close() })
  const port = (listener.address() as { port: number }).port
  const accepted = new Promise<Socket>((resolve) => listener.once('connection', resolve))
  const client = connect(port, '127.0.0.1')
  t.teardown(() => { client.destroy() })
  const socket = await accepted
  const before = socket.bytesWritten
  answerClientError.call(app, Object.assign(new Error('reset'), { code: 'ECONNRESET' }), socket)
  t.equal(socket.bytesWritten, before, 'nothing written to a reset connection')
  t.notOk(socket.destroyed, 'Node closes it itself')
  socket.destroy()
  answerClientError.call(app, Object.assign(new Error('bad'), { code: 'HPE_INVALID_METHOD' }), socket)
  t.equal(socket.bytesWritten, before, 'nothing written to a destroyed socket')
  t.notOk(logs.records().some((line) => line.msg === 'malformed request refused'), 'neither is logged')
})

t.test('TRUST_PROXY: a hop count believes only what the balancer appended; true warns at start', async (t) => {
  const { app } = await build(t, { TRUST_PROXY: '1', RATE_LIMIT_MAX: 100, RATE_LIMIT_AUTH_URL_MAX: 20 })
  const statuses: number[] = []
  for (let i = 0; i < 40; i++) {
    // The client writes a new leftmost entry each time; the balancer appends the address it saw.
    const res = await app.inject({ url: '/api/auth-url', remoteAddress: '10.0.0.1', headers: { 'x-forwarded-for': `198.51.100.${i}, 203.0.113.7` } })
    statuses.push(res.statusCode)
  }
  t.equal(statuses.filter((status) => status === 200).length, 20, 'a spoofing client still gets 20')
  t.equal(statuses.filter((status) => status === 429).length, 20)
  const other = await app.inject({ url: '/api/auth-url', remoteAddress: '10.0.0.1', headers: { 'x-forwarded-for': '203.0.113.8' } })
  t.equal(other.statusCode, 200, 'another client behind the same balancer has its own budget')

  const unsafe = await build(t, { TRUST_PROXY: 'true' })
  t.ok(unsafe.logs.records().some((line) => line.level === 40 && /TRUST_PROXY=true/.test(String(line.msg))), 'a warning names TRUST_PROXY')
  const safe = await build(t, { TRUST_PROXY: '10.0.0.0/8' })
  t.notOk(safe.logs.records().some((line) => /TRUST_PROXY/.test(String(line.msg))))
})

t.test('rate limits: auth-url never looser than the global limit; /metrics behind METRICS_TOKEN or on METRICS_PORT', async (t) => {
  const { app } = await build(t, { RATE_LIMIT_MAX: 5, RATE_LIMIT_AUTH_URL_MAX: 20 })
  const statuses: number[] = []
  for (let i = 0; i < 6; i++) statuses.push((await app.inject('/api/auth-url')).statusCode)
  t.same(statuses, [200, 200, 200, 200, 200, 429])

  const guarded = await build(t, { METRICS_TOKEN: 'scrape-token-0123456789' })
  t.equal((await guarded.app.inject('/metrics')).statusCode, 401)
  t.match((await guarded.app.inject('/metrics')).json(), { success: false, data: { error: 'UNAUTHORIZED' } })
  t.equal((await guarded.app.inject({ url: '/metrics', headers: { authorization: 'Bearer wrong' } })).statusCode, 401)
  const scraped = await guarded.app.inject({ url: '/metrics', headers: { authorization: 'Bearer scrape-token-0123456789' } })
  t.equal(scraped.statusCode, 200)
  t.match(scraped.body, /http_request_duration_seconds/)

  const side = await build(t, { METRICS_PORT: 0 })
  t.equal((await side.app.inject('/metrics')).statusCode, 200, 'METRICS_PORT=0: on the API port')
  const separate = await build(t, { METRICS_PORT: 1, METRICS_TOKEN: 'scrape-token-0123456789' })
  t.equal((await separate.app.inject('/metrics')).statusCode, 404, 'with METRICS_PORT, not on the API port')
})

t.test('METRICS_PORT: the scrape has a listener of its own, closed with the service', async (t) => {
  const probe = await startUpstream(t, (_req, res) => { res.end() })
  const port = probe.port
  await new Promise((resolve) => probe.server.close(resolve))
  const { app } = await build(t, { METRICS_PORT: port, METRICS_TOKEN: 'scrape-token-0123456789' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const scrape = async (path: string, authorization?: string) => {
    const res = await request(`http://127.0.0.1:${port}${path}`, { headers: authorization === undefined ? {} : { authorization } })
    return { status: res.statusCode, text: await res.body.text() }
  }
  t.equal((await scrape('/metrics')).status, 401)
  const ok = await scrape('/metrics', 'Bearer scrape-token-0123456789')
  t.equal(ok.status, 200)
  t.match(ok.text, /process_cpu_seconds_total/)
  t.equal((await scrape('/health')).status, 404)
  await app.close()
  const refused = await new Promise((resolve) => { connect(port, '127.0.0.1').on('error', (err: NodeJS.ErrnoException) => { resolve(err.code) }).on('connect', () => { resolve('connected') }) })
  t.equal(refused, 'ECONNREFUSED', 'closed with the service')
})

t.test('load shedding waits out start-up and one slow sample; sustained lag sheds', async (t) => {
  const block = (ms: number): void => { const end = performance.now() + ms; while (performance.now() < end) { /* busy */ } }
  const lagFor = async (ms: number): Promise<void> => {
    const end = performance.now() + ms
    while (performance.now() < end) { block(150); await sleep(1) }
  }
  const warming = await build(t, { PRESSURE_MAX_EVENT_LOOP_DELAY_MS: 20, PRESSURE_WARMUP_MS: 600_000 })
  await lagFor(2000)
  t.equal((await warming.app.inject('/api/auth-url')).statusCode, 200, 'no shedding while warming up')

  const warm = await build(t, { PRESSURE_MAX_EVENT_LOOP_DELAY_MS: 20, PRESSURE_WARMUP_MS: 0 })
  await sleep(600)
  block(300)
  await sleep(1)
  t.equal((await warm.app.inject('/api/auth-url')).statusCode, 200, 'one slow moment is not overload')
  await lagFor(2500)
  const shed = await warm.app.inject('/api/auth-url')
  t.equal(shed.statusCode, 503, 'sustained lag sheds')
  t.match(shed.json(), { data: { error: 'SERVICE_UNAVAILABLE', reason: 'eventLoopDelay' } })
  t.equal((await warm.app.inject('/health')).statusCode, 200, 'probes are never shed')
})
