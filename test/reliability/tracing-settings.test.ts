import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { API_KEY, type RecordedRequest, REDIS_URL, redisKeyPrefix, registerSecret, sendJson, skipWithoutRedis, startUpstream } from '../helper.js'
import { startServer } from '../fixtures/server-process.js'
import { callerTrace, type ExportedSpan, logLine, post, started, startReceiver, traceOf, tracingEnv, waitFor } from '../fixtures/otlp-receiver.js'

// The server as `npm start` runs it: the settings of tracing, and a queued job's trace across instances.
const skipRedis = await skipWithoutRedis()

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
