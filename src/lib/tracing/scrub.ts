import type { ExportResult } from '@opentelemetry/core'
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace'

/** A URL as a span may name it: its origin and path, never its query, fragment or user info. */
export function withoutQuery (value: string): string {
  try {
    const url = new URL(value)
    return `${url.origin}${url.pathname}`
  } catch {
    return value.split(/[?#]/, 1)[0] as string
  }
}

/** Whether an attribute may carry a secret: a URL's query, a header an instrumentation was told to copy. */
function sensitive (key: string, value: unknown): boolean {
  if (key === 'url.query' || key.startsWith('http.request.header.') || key.startsWith('http.response.header.')) return true
  if (typeof value !== 'string') return false
  if (key === 'url.full' || key === 'http.url') return withoutQuery(value) !== value
  return (key === 'url.path' || key === 'http.target') && /[?#]/.test(value)
}

const anySensitive = (attributes: Record<string, unknown> | undefined): boolean =>
  attributes !== undefined && Object.keys(attributes).some((key) => sensitive(key, attributes[key]))

/**
 * Removes from a span's attributes what may carry a secret: a URL's query (params, a client token) and user info,
 * and any header an instrumentation was told to copy. No instrumentation here records headers; undici's records
 * the URL as it was sent, which this takes the query from.
 */
export function scrubAttributes (attributes: Record<string, unknown>): void {
  for (const key of Object.keys(attributes)) {
    const value = attributes[key]
    if (!sensitive(key, value)) continue
    if (typeof value === 'string' && (key === 'url.full' || key === 'http.url')) attributes[key] = withoutQuery(value)
    else if (typeof value === 'string' && (key === 'url.path' || key === 'http.target')) attributes[key] = value.split(/[?#]/, 1)[0] as string
    else Reflect.deleteProperty(attributes, key)
  }
}

/** A span as exported: itself when nothing in it is sensitive, else seen through scrubbed copies of its attributes and events. */
function scrubbed (span: ReadableSpan): ReadableSpan {
  if (!anySensitive(span.attributes) && !span.events.some((event) => anySensitive(event.attributes))) return span
  const attributes = { ...span.attributes }
  scrubAttributes(attributes)
  const events = span.events.map((event) => {
    if (event.attributes === undefined) return event
    const copy = { ...event.attributes }
    scrubAttributes(copy)
    return { ...event, attributes: copy }
  })
  return Object.create(span, { attributes: { value: attributes }, events: { value: events } }) as ReadableSpan
}

/**
 * Wraps the exporter: every span is scrubbed on its way out, whoever made it, after every attribute was set. The
 * SDK's batch processor (and its OTEL_BSP_* settings) stays as the SDK builds it.
 */
export class ScrubbingSpanExporter implements SpanExporter {
  constructor (private readonly next: SpanExporter) {}

  export (spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.next.export(spans.map(scrubbed), done)
  }

  async shutdown (): Promise<void> {
    await this.next.shutdown()
  }

  async forceFlush (): Promise<void> {
    await this.next.forceFlush?.()
  }
}
