import type { Span } from '@opentelemetry/api'
import type { NodeSDK } from '@opentelemetry/sdk-node'
import type { SpanExporter } from '@opentelemetry/sdk-trace'
import { ScrubbingSpanExporter } from './scrub.js'

/** The service's name in traces unless OTEL_SERVICE_NAME says another. */
export const TRACING_SERVICE_NAME = 'aibill-token-service'

/**
 * The OpenTelemetry SDK's variables the documentation names (the SDK reads them, and others of its own), with the
 * defaults this service gives them ('' where there is none).
 */
export const TRACING_VARIABLES: Record<string, string> = {
  OTEL_EXPORTER_OTLP_ENDPOINT: '',
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '',
  OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
  OTEL_SERVICE_NAME: TRACING_SERVICE_NAME,
  OTEL_RESOURCE_ATTRIBUTES: '',
  OTEL_TRACES_SAMPLER: 'parentbased_always_on',
  OTEL_TRACES_SAMPLER_ARG: '',
  OTEL_PROPAGATORS: 'tracecontext'
}

/** Routes probes and scrapers call every few seconds: no trace of their own (they would drown the rest). */
const UNTRACED_PATHS = new Set(['/health', '/ready', '/metrics', '/favicon.ico'])

const PROTOCOLS = ['http/protobuf', 'http/json', 'grpc'] as const
type Protocol = typeof PROTOCOLS[number]

/** Whether tracing is asked for: an OTLP endpoint is set (empty is unset) and the SDK is not disabled. */
export function tracingWanted (env: NodeJS.ProcessEnv): boolean {
  const endpoint = (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? '') !== '' || (env.OTEL_EXPORTER_OTLP_ENDPOINT ?? '') !== ''
  return endpoint && env.OTEL_SDK_DISABLED?.trim().toLowerCase() !== 'true'
}

/** The traces' protocol, as OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL says. */
export function tracesProtocol (env: NodeJS.ProcessEnv): Protocol {
  const name = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL !== undefined ? 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL' : 'OTEL_EXPORTER_OTLP_PROTOCOL'
  const value = (env[name] ?? 'http/protobuf').trim()
  if (!(PROTOCOLS as readonly string[]).includes(value)) throw new Error(`${name} must be one of ${PROTOCOLS.join(', ')} (found ${JSON.stringify(value)})`)
  return value as Protocol
}

/** The exporter each protocol takes; each reads its endpoint, headers and timeout from the standard variables. */
async function exporterFor (protocol: Protocol): Promise<SpanExporter> {
  if (protocol === 'http/json') return new (await import('@opentelemetry/exporter-trace-otlp-http')).OTLPTraceExporter()
  if (protocol === 'grpc') return new (await import('@opentelemetry/exporter-trace-otlp-grpc')).OTLPTraceExporter()
  return new (await import('@opentelemetry/exporter-trace-otlp-proto')).OTLPTraceExporter()
}

/**
 * Names the span of a request by its route (`POST /resend`) and keeps its ids for the request's log line (read by
 * the request-log plugin; a child logger per request would cost more than the span).
 */
function onRequestSpan (span: Span, request: { method: string, url: string, routeOptions: { url?: string | undefined }, traceIds: Record<string, string> | null }): void {
  const { traceId, spanId } = span.spanContext()
  request.traceIds = { trace_id: traceId, span_id: spanId }
  if (!span.isRecording()) return
  const route = request.routeOptions.url
  span.updateName(route === undefined ? request.method : `${request.method} ${route}`)
  // The path as it came, without its query (it may carry a caller's data).
  span.setAttribute('url.path', request.url.split(/[?#]/, 1)[0] as string)
}

let running: NodeSDK | undefined

/**
 * Starts OpenTelemetry: the SDK (sampler, resource, batch processor from the standard variables, the exporter of
 * the protocol asked for, behind scrub.ts), Fastify's own
 * instrumentation (registered on every Fastify instance as it is created) and undici's (every request out carries
 * `traceparent`). Only W3C trace context is propagated unless OTEL_PROPAGATORS says otherwise: a caller's baggage
 * is its data, and is neither stored with a job nor sent on. Traces alone are exported unless OTEL_METRICS_EXPORTER or
 * OTEL_LOGS_EXPORTER asks for more. Must run before the server is created.
 */
export async function startTracing (env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const protocol = tracesProtocol(env)
  env.OTEL_SERVICE_NAME ??= TRACING_SERVICE_NAME
  env.OTEL_PROPAGATORS ??= 'tracecontext'
  // Traces only: the metrics are Prometheus's (/metrics) and the logs are JSON lines on stdout, unless the operator
  // asks the SDK for them as well.
  env.OTEL_METRICS_EXPORTER ??= 'none'
  env.OTEL_LOGS_EXPORTER ??= 'none'
  const [{ NodeSDK }, { FastifyOtelInstrumentation }, { UndiciInstrumentation }] = await Promise.all([
    import('@opentelemetry/sdk-node'),
    import('@fastify/otel'),
    import('@opentelemetry/instrumentation-undici')
  ])
  const sdk = new NodeSDK({
    traceExporter: new ScrubbingSpanExporter(await exporterFor(protocol)),
    instrumentations: [
      new FastifyOtelInstrumentation({
        registerOnInitialization: true,
        // One span per request: the handler's calls out are its children (the context flows from its onRequest
        // hook). A span for the handler and one per hook would double and treble the cost for little.
        instrumentHooks: false,
        instrumentHandler: false,
        ignorePaths: ({ url }) => UNTRACED_PATHS.has(url.split('?', 1)[0] as string),
        requestHook: onRequestSpan as never
      }),
      // No header is copied into a span; the URL's query is taken out on export (scrub.ts).
      new UndiciInstrumentation()
    ]
  })
  sdk.start()
  running = sdk
}

/** Sends the spans still held and stops; bounded, so that a silent collector never holds the shutdown. */
export async function stopTracing (timeoutMs = 2000): Promise<void> {
  const sdk = running
  running = undefined
  if (sdk === undefined) return
  let timer: NodeJS.Timeout | undefined
  await Promise.race([sdk.shutdown().catch(() => {}), new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs) })])
  clearTimeout(timer)
}

/** Whether this process traces (startTracing ran). */
export const tracingStarted = (): boolean => running !== undefined
