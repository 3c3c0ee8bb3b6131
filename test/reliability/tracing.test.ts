import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { API_KEY, KID, type RecordedRequest, REDIS_URL, redisKeyPrefix, registerSecret, sendJson, skipWithoutRedis, startUpstream, testKeys, type Upstream } from '../helper.js'
import { type Started, startServer } from '../fixtures/server-process.js'

// The server as `npm start` runs it (src/instrument.ts first), exporting to an OTLP/HTTP receiver on loopback.
const skipRedis = await skipWithoutRedis()

interface ExportedSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  kind: number
  scope: string
  resource: Record<string, unknown>
  attributes: Record<string, unknown>
}

interface Receiver {
  upstream: Upstream
  spans: () => ExportedSpan[]
  /** Every body the receiver got, as text: what a marker must never be found in. */
  raw: () => string
}

type AnyValue = Record<string, unknown>
const valueOf = (value: AnyValue): unknown => value.stringValue ?? value.boolValue ?? (value.intValue === undefined ? value.doubleValue : Number(value.intValue))
const attributesOf = (list: Array<{ key: string, value: AnyValue }> = []): Record<string, unknown> => Object.fromEntries(list.map(({ key, value }) => [key, valueOf(value)]))

/** An OTLP/HTTP collector on loopback: it takes http/json (decoded) and http/protobuf (kept as bytes). */
async function startReceiver (t: Test): Promise<Receiver> {
  const spans: ExportedSpan[] = []
  let raw = ''
  const upstream = await startUpstream(t, (request, res) => {
    raw += request.body
    if (request.url === '/v1/traces' && request.headers['content-type']?.startsWith('application/json') === true) {
      const sent = JSON.parse(request.body) as { resourceSpans: Array<{ resource: { attributes: Array<{ key: string, value: AnyValue }> }, scopeSpans: Array<{ scope: { name: string }, spans: Array<Omit<ExportedSpan, 'scope' | 'resource' | 'attributes'> & { attributes: Array<{ key: string, value: AnyValue }> }> }> }> }
      for (const resourceSpans of sent.resourceSpans) {
        const resource = attributesOf(resourceSpans.resource.attributes)
        for (const scopeSpans of resourceSpans.scopeSpans) {
          for (const span of scopeSpans.spans) spans.push({ ...span, scope: scopeSpans.scope.name, resource, attributes: attributesOf(span.attributes) })
        }
      }
    }
    sendJson(res, 200, {})
  })
  return { upstream, spans: () => spans, raw: () => raw }
}

async function waitFor (check: () => boolean | Promise<boolean>, ms = 30_000): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(50)
  }
  return await check()
}

/** A caller's trace: a new trace id and the caller's span, as a W3C traceparent. */
function callerTrace (): { traceId: string, spanId: string, traceparent: string } {
  const traceId = randomBytes(16).toString('hex')
  const spanId = randomBytes(8).toString('hex')
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` }
}

const traceOf = (traceparent: unknown): string | undefined => /^00-([0-9a-f]{32})-[0-9a-f]{16}-0[01]$/.exec(String(traceparent))?.[1]

function tracingEnv (receiver: Receiver, extra: Record<string, string> = {}): Record<string, string> {
  return { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.upstream.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '100', ...extra }
}

async function started (t: Test, env: Record<string, string>, options: { instrument?: boolean, dotenv?: string } = { instrument: true }): Promise<Started & { url: string }> {
  const server = await startServer(t, { LOG_LEVEL: 'info', EXPECTED_COZE_API_KEY: API_KEY, RATE_LIMIT_MAX: '1000000', ...env }, options)
  t.ok(server.url, `the server started: ${server.url === undefined ? server.output() : 'yes'}`)
  return server as Started & { url: string }
}

async function post (url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': API_KEY, ...headers }, body: JSON.stringify(body) })
  return { status: res.status, body: await res.json() as Record<string, unknown> }
}

/** The log line of a request, by its route. */
function logLine (server: Started, route: string): Record<string, unknown> | undefined {
  return server.output().split('\n').filter((line) => line.includes('"request completed"') && line.includes(`"route":"${route}"`))
    .map((line) => JSON.parse(line) as Record<string, unknown>).at(-1)
}

const SERVER_KIND = 2
const CLIENT_KIND = 3

t.test('/token: the server span is in the caller\'s trace, with a client span for the exchange, and Coze gets the trace', async (t) => {
  const receiver = await startReceiver(t)
  const coze = await startUpstream(t, (_request, res) => { sendJson(res, 200, { access_token: `czs_${randomBytes(12).toString('hex')}`, expires_in: Math.floor(Date.now() / 1000) + 900 }) })
  const server = await started(t, tracingEnv(receiver, { OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=test', JWT_PRIVATE_KEY: testKeys().pkcs8, COZE_APP_ID: '1180000000001', COZE_API_URL: `${coze.url}/api/permission/oauth2/token` }))
  const caller = callerTrace()
  const answer = await post(`${server.url}/token`, { public_key: KID, coze_api_key: API_KEY }, { traceparent: caller.traceparent })
  t.equal(answer.status, 200)
  t.equal(traceOf(coze.requests[0]?.headers.traceparent), caller.traceId, 'Coze\'s stand-in received the trace\'s traceparent')
  t.ok(await waitFor(() => receiver.spans().some((span) => span.traceId === caller.traceId && span.kind === CLIENT_KIND)), 'the spans arrived')
  const spans = receiver.spans().filter((span) => span.traceId === caller.traceId)
  const request = spans.find((span) => span.kind === SERVER_KIND)
  t.equal(request?.name, 'POST /token', 'the server span names the route')
  t.equal(request?.parentSpanId, caller.spanId, 'a child of the caller\'s span')
  t.equal(request?.attributes['http.response.status_code'], 200)
  const exchange = spans.find((span) => span.kind === CLIENT_KIND)
  t.equal(exchange?.attributes['url.full'], `${coze.url}/api/permission/oauth2/token`, 'the exchange, as a client span')
  t.equal(exchange?.parentSpanId, request?.spanId, 'a child of the request\'s span')
  t.equal(traceOf(coze.requests[0]?.headers.traceparent) !== undefined && (coze.requests[0]?.headers.traceparent as string).split('-')[2], exchange?.spanId, 'the traceparent Coze got names the client span')
  t.equal(request?.resource['service.name'], 'aibill-token-service', 'the service\'s name by default')
  t.equal(request?.resource['deployment.environment.name'], 'test', 'OTEL_RESOURCE_ATTRIBUTES')
  t.match(logLine(server, '/token'), { trace_id: caller.traceId, span_id: request?.spanId }, 'the log line joins the trace')
})

t.test('/resend now, with a Feishu app: the token fetch and the attempt are in the trace; no query, header or secret in a span', async (t) => {
  const receiver = await startReceiver(t)
  const appSecret = `feishu-secret-${randomBytes(8).toString('hex')}`
  const token = `t-${randomBytes(10).toString('hex')}`
  const markers = { header: `hdr-${randomBytes(8).toString('hex')}`, query: `qry-${randomBytes(8).toString('hex')}`, param: `prm-${randomBytes(8).toString('hex')}` }
  for (const secret of [appSecret, token, ...Object.values(markers)]) registerSecret(secret)
  const feishu = await startUpstream(t, (request, res) => {
    if (request.url.startsWith('/open-apis/auth/')) { sendJson(res, 200, { code: 0, msg: 'ok', tenant_access_token: token, expire: 7200 }); return }
    sendJson(res, 200, { code: 0, msg: 'success', data: {} })
  })
  const server = await started(t, tracingEnv(receiver, {
    ROUTES: 'resend',
    RESEND_ALLOWED_HOSTS: feishu.url,
    FEISHU_APPS: JSON.stringify({ bills: { app_id: 'cli_test', app_secret_env: 'FEISHU_BILLS_SECRET', base: feishu.url } }),
    FEISHU_BILLS_SECRET: appSecret
  }))
  const caller = callerTrace()
  const answer = await post(`${server.url}/resend`, {
    location: `${feishu.url}/open-apis/bitable/v1/apps/A/tables/T/records?user_id_type=${markers.query}`,
    headers: { 'x-custom': markers.header },
    params: { fields: { note: markers.param } },
    auth: { feishu_app: 'bills' }
  }, { traceparent: caller.traceparent })
  t.equal(answer.status, 200, JSON.stringify(answer.body))
  t.equal(feishu.requests.length, 2, 'the token fetch, then the write')
  for (const request of feishu.requests) t.equal(traceOf(request.headers.traceparent), caller.traceId, `${request.url.split('?')[0] as string} carries the trace`)
  t.ok(await waitFor(() => receiver.spans().filter((span) => span.traceId === caller.traceId && span.kind === CLIENT_KIND).length === 2), 'the spans arrived')
  const spans = receiver.spans().filter((span) => span.traceId === caller.traceId)
  t.ok(spans.some((span) => span.kind === CLIENT_KIND && span.attributes['url.path'] === '/open-apis/auth/v3/tenant_access_token/internal'), 'Feishu\'s token fetch is in the trace')
  const attempt = spans.find((span) => span.name === 'resend attempt')
  t.match(attempt?.attributes, { 'aibill.resend.destination': `127.0.0.1:${feishu.port}/open-apis/bitable/v1/apps/A/tables/T/records`, 'aibill.resend.attempt': 1, 'aibill.resend.outcome': 'answered', 'http.response.status_code': 200 })
  t.equal(spans.find((span) => span.kind === SERVER_KIND)?.name, 'POST /resend')
  const write = spans.find((span) => span.kind === CLIENT_KIND && String(span.attributes['url.path']).includes('records'))
  t.equal(write?.attributes['url.full'], `${feishu.url}/open-apis/bitable/v1/apps/A/tables/T/records`, 'the URL without its query')
  t.equal(write?.attributes['url.query'], undefined)
  for (const [what, secret] of Object.entries({ ...markers, appSecret, token, callerKey: API_KEY })) t.notOk(receiver.raw().includes(secret), `no ${what} in any span`)
})

t.test('Augment\'s exchange is in the trace, and its code and verifier in no span', async (t) => {
  const receiver = await startReceiver(t)
  const code = `code-${randomBytes(10).toString('hex')}`
  registerSecret(code)
  const tenant = await startUpstream(t, (_request, res) => { sendJson(res, 200, { access_token: `aug-${randomBytes(10).toString('hex')}` }) })
  const server = await started(t, tracingEnv(receiver, { ROUTES: 'augment', AUGMENT_TENANT_HOSTS: tenant.url }))
  const link = await (await fetch(`${server.url}/api/auth-url?user_id=user-7`)).json() as { data: { state: string } }
  const { state } = link.data
  const caller = callerTrace()
  const res = await fetch(`${server.url}/api/complete-auth`, { method: 'POST', headers: { 'content-type': 'application/json', traceparent: caller.traceparent }, body: JSON.stringify({ code, state, tenant_url: `${tenant.url}/` }) })
  t.equal(res.status, 200, await res.text())
  t.equal(traceOf(tenant.requests[0]?.headers.traceparent), caller.traceId, 'the tenant received the trace')
  const verifier = (JSON.parse(tenant.requests[0]?.body ?? '{}') as { code_verifier?: string }).code_verifier as string
  t.ok(await waitFor(() => receiver.spans().some((span) => span.traceId === caller.traceId && span.kind === CLIENT_KIND)), 'the exchange\'s span arrived')
  t.equal(receiver.spans().find((span) => span.traceId === caller.traceId && span.kind === SERVER_KIND)?.name, 'POST /api/complete-auth')
  for (const [what, secret] of Object.entries({ code, verifier, state })) t.notOk(receiver.raw().includes(secret), `no ${what} in any span`)
  t.notOk(receiver.raw().includes('user-7'), 'nor the query of /api/auth-url')
  t.same([...new Set(receiver.upstream.requests.map((request) => request.url))], ['/v1/traces'], 'traces only: no metrics or logs unless asked for')
})

t.test('a request without traceparent starts a trace, and its log line carries its id; probes are not traced', async (t) => {
  const receiver = await startReceiver(t)
  const destination = await startUpstream(t, (_request, res) => { sendJson(res, 200, { ok: true }) })
  const server = await started(t, tracingEnv(receiver, { ROUTES: 'resend', RESEND_ALLOWED_HOSTS: destination.url }))
  t.equal((await fetch(`${server.url}/health`)).status, 200)
  t.equal((await post(`${server.url}/resend`, { location: `${destination.url}/x`, params: {} })).status, 200)
  const traceId = traceOf(destination.requests[0]?.headers.traceparent)
  t.ok(traceId, 'the destination got a traceparent')
  t.ok(await waitFor(() => receiver.spans().some((span) => span.traceId === traceId && span.kind === SERVER_KIND)), 'the request\'s span arrived')
  const request = receiver.spans().find((span) => span.traceId === traceId && span.kind === SERVER_KIND)
  t.equal(request?.parentSpanId ?? '', '', 'a new trace: the request is its root')
  t.match(logLine(server, '/resend'), { trace_id: traceId, span_id: request?.spanId })
  t.notOk(receiver.spans().some((span) => span.name.includes('/health')), '/health has no span')
  t.equal((await fetch(`${server.url}/no-such-route?x=1`)).status, 404)
  t.ok(await waitFor(() => receiver.spans().some((span) => span.kind === SERVER_KIND && span.attributes['http.response.status_code'] === 404)), 'a path without a route has a span')
  const unrouted = receiver.spans().find((span) => span.kind === SERVER_KIND && span.attributes['http.response.status_code'] === 404)
  t.equal(unrouted?.name, 'GET', 'named by its method alone (a path is not a route)')
  t.equal(unrouted?.attributes['url.path'], '/no-such-route')
  t.notOk(logLine(server, '/health')?.trace_id, 'nor its log line a trace')
})

t.test('http/protobuf (the default protocol) exports too; OTEL_TRACES_SAMPLER=always_off exports nothing but still passes the trace on', async (t) => {
  const receiver = await startReceiver(t)
  const destination = await startUpstream(t, (_request, res) => { sendJson(res, 200, { ok: true }) })
  const proto = await started(t, { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.upstream.url}/v1/traces`, OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_SERVICE_NAME: 'billing-relay', ROUTES: 'resend', RESEND_ALLOWED_HOSTS: destination.url })
  t.equal((await post(`${proto.url}/resend`, { location: `${destination.url}/x`, params: {} })).status, 200)
  t.ok(await waitFor(() => receiver.upstream.requests.length > 0), 'an export arrived')
  t.equal(receiver.upstream.requests[0]?.url, '/v1/traces')
  t.equal(receiver.upstream.requests[0]?.headers['content-type'], 'application/x-protobuf')
  t.ok(receiver.raw().includes('billing-relay'), 'OTEL_SERVICE_NAME, in the protobuf')

  const off = await startReceiver(t)
  const sampledOut = await started(t, tracingEnv(off, { OTEL_TRACES_SAMPLER: 'always_off', ROUTES: 'resend', RESEND_ALLOWED_HOSTS: destination.url }))
  const caller = callerTrace()
  t.equal((await post(`${sampledOut.url}/resend`, { location: `${destination.url}/y`, params: {} }, { traceparent: caller.traceparent })).status, 200)
  t.equal(traceOf(destination.requests.at(-1)?.headers.traceparent), caller.traceId, 'the trace goes on to the destination')
  await sleep(500)
  t.equal(off.upstream.requests.length, 0, 'nothing exported')
})

t.test('with no endpoint set nothing is exported and nothing changes; an endpoint in .env turns it on, an empty one off', async (t) => {
  const destination = await startUpstream(t, (_request, res) => { sendJson(res, 200, { ok: true }) })
  const receiver = await startReceiver(t)
  const plain = await started(t, { ROUTES: 'resend', RESEND_ALLOWED_HOSTS: destination.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }, { instrument: true, dotenv: 'OTEL_EXPORTER_OTLP_ENDPOINT=\n' })
  const caller = callerTrace()
  t.equal((await post(`${plain.url}/resend`, { location: `${destination.url}/x`, params: {} }, { traceparent: caller.traceparent })).status, 200)
  t.equal(destination.requests[0]?.headers.traceparent, undefined, 'no traceparent is sent: nothing traces')
  t.notOk(logLine(plain, '/resend')?.trace_id, 'no trace id in the log')
  const fromFile = await started(t, { ROUTES: 'resend', RESEND_ALLOWED_HOSTS: destination.url }, { instrument: true, dotenv: `OTEL_EXPORTER_OTLP_ENDPOINT=${receiver.upstream.url}\nOTEL_EXPORTER_OTLP_PROTOCOL=http/json\nOTEL_BSP_SCHEDULE_DELAY=100\n` })
  t.equal((await post(`${fromFile.url}/resend`, { location: `${destination.url}/x`, params: {} }, { traceparent: caller.traceparent })).status, 200)
  t.ok(await waitFor(() => receiver.spans().some((span) => span.traceId === caller.traceId)), 'the endpoint in .env traces')
  t.equal(receiver.spans().filter((span) => span.resource['service.name'] !== 'aibill-token-service').length, 0)
})

t.test('a protocol the SDK does not speak stops the start, naming the variable', async (t) => {
  const server = await startServer(t, { EXPECTED_COZE_API_KEY: API_KEY, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/xml' }, { instrument: true })
  t.equal(await server.exited, 1)
  t.match(server.output(), /OTEL_EXPORTER_OTLP_PROTOCOL must be one of http\/protobuf, http\/json, grpc/)
})

t.test('a queued job that fails twice, then succeeds: three attempts in the caller\'s trace, across two instances', { skip: skipRedis }, async (t) => {
  const receiver = await startReceiver(t)
  const queueSecret = randomBytes(32).toString('base64')
  const marker = `qmk-${randomBytes(8).toString('hex')}`
  registerSecret(queueSecret)
  registerSecret(marker)
  let answered = 0
  const seen: RecordedRequest[] = []
  const destination = await startUpstream(t, (request, res) => {
    seen.push(request)
    answered++
    if (answered <= 2) sendJson(res, 503, { busy: true })
    else sendJson(res, 200, { ok: true })
  })
  const prefix = redisKeyPrefix(t, 'tracing')
  const env = tracingEnv(receiver, {
    ROUTES: 'resend',
    RESEND_ALLOWED_HOSTS: destination.url,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: queueSecret,
    REDIS_URL,
    REDIS_KEY_PREFIX: prefix,
    RESEND_RETRY_SCHEDULE: '300ms'
  })
  // One instance accepts (it delivers nothing); two others deliver.
  const [accepting, one, two] = await Promise.all([
    started(t, { ...env, RESEND_WORKERS: '0', OTEL_RESOURCE_ATTRIBUTES: 'service.instance.id=accepting' }),
    started(t, { ...env, RESEND_WORKERS: '1', OTEL_RESOURCE_ATTRIBUTES: 'service.instance.id=one' }),
    started(t, { ...env, RESEND_WORKERS: '1', OTEL_RESOURCE_ATTRIBUTES: 'service.instance.id=two' })
  ])
  t.ok(one !== undefined && two !== undefined)
  const caller = callerTrace()
  const accepted = await post(`${accepting.url}/resend`, { location: `${destination.url}/records?token=${marker}`, params: { note: marker }, delivery: 'queued' }, { traceparent: caller.traceparent })
  t.equal(accepted.status, 202, JSON.stringify(accepted.body))
  t.ok(await waitFor(() => answered >= 3), 'three attempts reached the destination')
  for (const request of seen) t.equal(traceOf(request.headers.traceparent), caller.traceId, 'each attempt carries the caller\'s trace')
  const attempts = (): ExportedSpan[] => receiver.spans().filter((span) => span.traceId === caller.traceId && span.name === 'resend attempt')
  t.ok(await waitFor(() => attempts().length === 3 && receiver.spans().filter((span) => span.traceId === caller.traceId && span.name.startsWith('process')).length === 3), 'the three attempts\' spans arrived')
  t.same(attempts().map((span) => span.attributes['aibill.resend.attempt']).sort(), [1, 2, 3])
  t.same(attempts().map((span) => span.attributes['http.response.status_code']).sort(), [200, 503, 503])
  const jobId = (accepted.body.data as { id: string }).id
  t.ok(attempts().every((span) => span.attributes['aibill.resend.job_id'] === jobId), 'each attempt names the job')
  const deliveries = receiver.spans().filter((span) => span.traceId === caller.traceId && span.name.startsWith('process'))
  t.same(deliveries.map((span) => span.attributes['aibill.resend.outcome']).sort(), ['delivered', 'retry', 'retry'], 'each delivery says how it went')
  t.ok(deliveries.every((span) => span.resource['service.instance.id'] === 'one' || span.resource['service.instance.id'] === 'two'), 'delivered by the instances with workers')
  const add = receiver.spans().find((span) => span.traceId === caller.traceId && span.name.startsWith('add'))
  t.equal(add?.resource['service.instance.id'], 'accepting', 'the job was queued in the request\'s trace')
  t.ok(deliveries.every((span) => span.parentSpanId === add?.spanId), 'each delivery is a child of the queuing')
  t.notOk(receiver.raw().includes(marker), 'the query and params of the job are in no span')
  t.notOk(receiver.raw().includes(queueSecret))
})
