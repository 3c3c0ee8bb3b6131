import { SpanStatusCode, trace } from '@opentelemetry/api'
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace'
import t from 'tap'
import { annotate, inSpan, queueTelemetry, scrubAttributes, startTracing, stopTracing, traceLogFields, tracesProtocol, tracingStarted, tracingWanted, withoutQuery } from '../../../src/lib/tracing/index.js'
import { ScrubbingSpanExporter } from '../../../src/lib/tracing/scrub.js'
import { startSilentServer } from '../../fixtures/silent-server.js'

t.test('withoutQuery keeps the origin and path of a URL, and the path of anything else', async (t) => {
  t.equal(withoutQuery('https://user:pass@open.feishu.cn/open-apis/x?token=secret#frag'), 'https://open.feishu.cn/open-apis/x')
  t.equal(withoutQuery('/resend/jobs?idempotency_key=k#f'), '/resend/jobs')
  t.equal(withoutQuery('/plain'), '/plain')
})

t.test('scrubAttributes: queries, headers and user info go; the rest stays', async (t) => {
  const attributes: Record<string, unknown> = {
    'url.full': 'http://a:b@127.0.0.1:9/x?client_token=s',
    'http.url': 'http://127.0.0.1:9/y?q=1',
    'url.path': '/x?secret=1',
    'http.target': '/y?secret=2',
    'url.query': '?secret=3',
    'http.request.header.authorization': ['Bearer s'],
    'http.response.header.set-cookie': ['s'],
    'http.route': '/resend',
    'server.port': 9
  }
  scrubAttributes(attributes)
  t.same(attributes, { 'url.full': 'http://127.0.0.1:9/x', 'http.url': 'http://127.0.0.1:9/y', 'url.path': '/x', 'http.target': '/y', 'http.route': '/resend', 'server.port': 9 })
  const clean: Record<string, unknown> = { 'url.full': 'http://127.0.0.1:9/x', 'url.path': '/x', 'http.target': '/y' }
  scrubAttributes(clean)
  t.same(clean, { 'url.full': 'http://127.0.0.1:9/x', 'url.path': '/x', 'http.target': '/y' }, 'nothing to take out: nothing changes')
  const numeric: Record<string, unknown> = { 'url.full': 42, 'url.path': 7 }
  scrubAttributes(numeric)
  t.same(numeric, { 'url.full': 42, 'url.path': 7 }, 'values that are not text are left alone')
})

t.test('the exporter wrapper scrubs what it hands on, and leaves the span itself as it was', async (t) => {
  const memory = new InMemorySpanExporter()
  const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter: new ScrubbingSpanExporter(memory) })] })
  const span = provider.getTracer('test').startSpan('POST', { attributes: { 'url.full': 'http://127.0.0.1:9/x?k=secret-value', 'url.query': '?k=secret-value' } })
  span.addEvent('redirect', { 'url.full': 'http://127.0.0.1:9/y?k=secret-value' })
  span.addEvent('plain')
  span.end()
  const plain = provider.getTracer('test').startSpan('resend attempt', { attributes: { 'url.path': '/x', 'http.route': '/resend' } })
  plain.addEvent('note', { 'aibill.resend.attempt': 1 })
  plain.end()
  await provider.forceFlush()
  const [exported, untouched] = memory.getFinishedSpans()
  t.equal(untouched, plain, 'a span with nothing to take out is handed on as it is')
  t.same(exported?.attributes, { 'url.full': 'http://127.0.0.1:9/x' })
  t.same(exported?.events.map((event) => event.attributes), [{ 'url.full': 'http://127.0.0.1:9/y' }, undefined])
  t.equal(exported?.spanContext().spanId, span.spanContext().spanId, 'the same span, seen through the copy')
  t.notOk(JSON.stringify(memory.getFinishedSpans().map((one) => [one.attributes, one.events])).includes('secret-value'))
  t.equal((span as unknown as { attributes: Record<string, unknown> }).attributes['url.query'], '?k=secret-value', 'the span itself is not changed')
  await provider.shutdown()
  t.same(memory.getFinishedSpans(), [], 'shutting down reaches the wrapped exporter (it forgets its spans)')
})

t.test('tracingWanted: an endpoint set and not empty, and the SDK not disabled', async (t) => {
  t.equal(tracingWanted({}), false)
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: '' }), false, 'empty is unset')
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' }), true)
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:4318/v1/traces' }), true)
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', OTEL_SDK_DISABLED: 'TRUE ' }), false)
})

t.test('tracesProtocol: the traces\' own variable first, http/protobuf by default, anything else refused by name', async (t) => {
  t.equal(tracesProtocol({}), 'http/protobuf')
  t.equal(tracesProtocol({ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }), 'http/json')
  t.equal(tracesProtocol({ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc' }), 'grpc')
  t.throws(() => tracesProtocol({ OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'udp' }), /OTEL_EXPORTER_OTLP_TRACES_PROTOCOL must be one of http\/protobuf, http\/json, grpc \(found "udp"\)/)
})

t.test('inSpan and annotate do nothing visible with tracing off; errors keep their code', async (t) => {
  t.equal(tracingStarted(), false)
  t.equal(queueTelemetry(), undefined, 'BullMQ traces nothing')
  annotate({ 'aibill.resend.outcome': 'none' })
  t.same(traceLogFields({ msg: 'x' }), {}, 'a log line outside a span gets no ids')
  t.equal(await inSpan('work', {}, async () => 7), 7)
  await t.rejects(inSpan('work', {}, async () => { throw Object.assign(new Error('x'), { code: 'UPSTREAM_ERROR' }) }), { code: 'UPSTREAM_ERROR' })
})

t.test('started (gRPC to a collector that never answers): spans are made, errors marked; stopping is bounded', async (t) => {
  const env: NodeJS.ProcessEnv = { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${await startSilentServer(t)}`, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }
  await startTracing(env)
  t.equal(tracingStarted(), true)
  t.match(env, { OTEL_SERVICE_NAME: 'aibill-token-service', OTEL_PROPAGATORS: 'tracecontext', OTEL_METRICS_EXPORTER: 'none', OTEL_LOGS_EXPORTER: 'none' }, 'the defaults, set where unset')
  t.ok(queueTelemetry(), 'BullMQ gets its telemetry')
  let seen: { recording: boolean, traceId: string } | undefined
  await t.rejects(inSpan('failing', {}, async (span) => {
    annotate({ 'aibill.test': true })
    seen = { recording: span.isRecording(), traceId: trace.getActiveSpan()?.spanContext().traceId ?? '' }
    t.same(traceLogFields({ msg: 'x' }), { trace_id: span.spanContext().traceId, span_id: span.spanContext().spanId }, 'a log line within a span carries its ids')
    t.same(traceLogFields({ trace_id: 'named' }), {}, 'unless it names them already')
    throw new TypeError('no code')
  }), TypeError)
  t.equal(seen?.recording, true, 'a recording span')
  t.match(seen?.traceId, /^[0-9a-f]{32}$/)
  t.equal(SpanStatusCode.ERROR, 2)
  const started = Date.now()
  await stopTracing(300)
  t.ok(Date.now() - started < 5000, 'the silent collector did not hold the stop')
  t.equal(tracingStarted(), false)
  await stopTracing()
  t.pass('stopping twice is harmless')
})
