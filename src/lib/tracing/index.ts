/**
 * Tracing with OpenTelemetry, on when an OTLP endpoint is set: `sdk.ts` starts the SDK (loaded first, by
 * `src/instrument.ts`) with Fastify's and undici's instrumentations, `scrub.ts` keeps secrets out of every span,
 * and `spans.ts` is what the relay and the queue add (a span per attempt, the job's trace context).
 */
export { startTracing, stopTracing, tracingStarted, tracingWanted, tracesProtocol, TRACING_SERVICE_NAME, TRACING_VARIABLES } from './sdk.js'
export { annotate, inSpan, queueTelemetry, traceLogFields } from './spans.js'
export { scrubAttributes, withoutQuery } from './scrub.js'
