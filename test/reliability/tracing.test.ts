import { randomBytes } from 'node:crypto'
import t from 'tap'
import { API_KEY, KID, registerSecret, sendJson, startUpstream, testKeys } from '../helper.js'
import { CLIENT_KIND, callerTrace, logLine, post, SERVER_KIND, started, startReceiver, traceOf, tracingEnv, waitFor } from '../fixtures/otlp-receiver.js'

// The server as `npm start` runs it, exporting to an OTLP/HTTP receiver on loopback: what each route traces.

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
