import { type Attributes, type Span, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api'
import { BullMQOtel } from 'bullmq-otel'
import { tracingStarted } from './sdk.js'

const tracer = trace.getTracer('aibill-token-service')

/**
 * Runs `work` in a span of its own, a child of the active one; `work` may add attributes (the outcome). A thrown
 * error ends the span as an error, by its code or name only (messages may quote an upstream). With tracing off the
 * span is OpenTelemetry's no-op one.
 */
export async function inSpan<T> (name: string, attributes: Attributes, work: (span: Span) => Promise<T>): Promise<T> {
  return await tracer.startActiveSpan(name, { kind: SpanKind.INTERNAL, attributes }, async (span) => await work(span).then((value) => {
    span.end()
    return value
  }, (err: unknown) => {
    const code = (err as { code?: unknown }).code
    span.setStatus({ code: SpanStatusCode.ERROR, message: typeof code === 'string' ? code : (err as Error).name })
    span.end()
    throw err
  }))
}

/** Adds attributes to the active span (the job's delivery, a request's), if there is one. */
export function annotate (attributes: Attributes): void {
  trace.getActiveSpan()?.setAttributes(attributes)
}

/**
 * The ids of the active span, for a log line (pino's mixin), unless the line names them already; nothing outside a
 * span.
 */
export function traceLogFields (line: object): { trace_id?: string, span_id?: string } {
  if ('trace_id' in line) return {}
  const span = trace.getActiveSpan()
  if (span === undefined) return {}
  const { traceId, spanId } = span.spanContext()
  return { trace_id: traceId, span_id: spanId }
}

/**
 * BullMQ's telemetry while tracing is on (bullmq-otel): adding a job stores the trace context with it (its
 * `traceparent`: ids, nothing secret), and each delivery, on whichever instance and however late, is a span of that
 * trace. Undefined while tracing is off, and BullMQ traces nothing.
 */
export function queueTelemetry (): BullMQOtel | undefined {
  return tracingStarted() ? new BullMQOtel({ tracerName: 'aibill-token-service' }) : undefined
}
