import type { FastifyReply, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { errorEnvelope, sendError, ServiceError, successEnvelope, type SuccessText } from '../lib/http/index.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Replaces the details (field, reason) of a schema validation failure on this route. */
    validationDetails?: Record<string, unknown>
    /** Said after the reason when validation fails on the field named (a hint at the usual mistake). */
    validationHints?: Record<string, string>
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The onRequest hook of routes whose answers carry a token: never stored (RFC 6749 §5.1), errors included. */
    noStore: onRequestHookHandler
  }
  interface FastifyReply {
    /** The success envelope of `data`, its message in the language the request asked for. */
    ok<T> (text: SuccessText, data: T): { success: true, data: T, message: string }
  }
}

/** The envelope of every answer: the one error handler, the not-found handler, and reply.ok for successes. */
export default fp(async function errors (fastify) {
  fastify.decorate('noStore', function noStore (_request, reply, done) {
    void reply.preventCache()
    done()
  } satisfies onRequestHookHandler)
  fastify.decorateReply('ok', function <T> (this: FastifyReply, text: SuccessText, data: T) {
    return successEnvelope(this.request.headers['accept-language'], text, data)
  })
  fastify.setErrorHandler(sendError)
  // Unknown paths count toward the caller's rate limit like any other request (app.ts registers the limiter
  // first; a test that builds this plugin alone has none).
  const limited = fastify.hasDecorator('rateLimit') ? { preHandler: fastify.rateLimit() } : {}
  // A path the service has, asked with another method, is 405 with the methods it takes (Fastify says 404).
  const methodsByPath = new Map<string, Set<string>>()
  fastify.addHook('onRoute', (route) => {
    const methods = methodsByPath.get(route.url) ?? new Set<string>()
    for (const method of [route.method].flat()) methods.add(method)
    methodsByPath.set(route.url, methods)
  })
  fastify.setNotFoundHandler(limited, (request, reply) => {
    const allowed = methodsByPath.get(request.url.split('?', 1)[0] as string)
    if (allowed !== undefined) void reply.header('allow', [...allowed].sort().join(', '))
    const error = new ServiceError(allowed === undefined ? 'NOT_FOUND' : 'METHOD_NOT_ALLOWED')
    void reply.code(error.statusCode).send(errorEnvelope(error, request.headers['accept-language']))
  })
}, { name: 'errors', fastify: '5.x' })
