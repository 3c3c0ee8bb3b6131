import { hash } from 'node:crypto'
import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyRequest {
    /** Fields a route adds to the request's one log line (never secrets). */
    logFields: Record<string, unknown> | null
    /** The request's trace_id and span_id, set when tracing is on (lib/tracing). */
    traceIds: Record<string, string> | null
  }
}

/** How a log line names a value that must not appear in it (a sign-in state, a session name): a short digest. */
export function logRef (value: string): string {
  return hash('sha256', value, 'base64url').slice(0, 10)
}

/**
 * One log line per request: the route and the path, never the query string (it may carry user data); routes add
 * their own fields (request.logFields) to this line rather than writing a second one. The hook is callback-style
 * (an async hook costs a promise per request), and the route's fields are assigned onto the common ones (an
 * object literal that starts with a spread takes V8's slow copy).
 */
export default fp(async function requestLog (fastify) {
  fastify.decorateRequest('logFields', null)
  fastify.decorateRequest('traceIds', null)
  fastify.addHook('onResponse', (request, reply, done) => {
    const line = {
      method: request.method,
      route: request.routeOptions.url ?? null,
      path: request.url.split('?', 1)[0],
      statusCode: reply.statusCode,
      durationMs: Math.round(reply.elapsedTime * 10) / 10
    }
    if (request.traceIds !== null) Object.assign(line, request.traceIds)
    request.log.info(request.logFields === null ? line : Object.assign(line, request.logFields), 'request completed')
    done()
  })
}, { name: 'request-log', fastify: '5.x' })
