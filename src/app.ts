import type { FastifyInstance } from 'fastify'
import sensible from '@fastify/sensible'
import type { Dispatcher } from 'undici'
import type { Resolver } from './lib/upstream-policy.js'
import apiKeys from './plugins/api-keys.js'
import augment from './plugins/augment.js'
import body from './plugins/body.js'
import config, { type ConfigOptions } from './plugins/config.js'
import connections from './plugins/connections.js'
import coze from './plugins/coze.js'
import docs from './plugins/docs.js'
import errors from './plugins/errors.js'
import metrics from './plugins/metrics.js'
import pressure from './plugins/pressure.js'
import rateLimit from './plugins/rate-limit.js'
import readiness from './plugins/readiness.js'
import resend from './plugins/resend.js'
import signer from './plugins/signer.js'
import stateStore from './plugins/state-store.js'
import augmentRoutes from './routes/augment.js'
import healthRoutes from './routes/health.js'
import metricsRoutes from './routes/metrics.js'
import resendRoutes from './routes/resend.js'
import tokenRoutes from './routes/token.js'
import { ErrorEnvelope } from './schemas/envelope.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** Fields a route adds to the request's one log line (never secrets). */
    logFields: Record<string, unknown> | null
  }
}

export interface AppOptions {
  /** Configuration values that win over the environment; tests pass all of theirs here. */
  config?: ConfigOptions['data']
  /** Read process.env and `.env` (the server does; tests do not). */
  readEnvironment?: boolean
  /** Stand-in for the Coze connection pool (the bench and tests of the client). */
  cozeDispatcher?: Dispatcher
  /** Replaces DNS in the destination checks (tests resolve names without DNS). */
  resolver?: Resolver
}

/** The whole service, in dependency order. No listen here: src/server.ts does that. */
export default async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  fastify.addSchema(ErrorEnvelope)
  await fastify.register(config, { data: opts.config, readEnvironment: opts.readEnvironment })
  await fastify.register(body)
  await fastify.register(connections)
  await fastify.register(sensible)
  await fastify.register(readiness)
  await fastify.register(metrics)
  await fastify.register(pressure)
  await fastify.register(stateStore)
  // Before errors (its 404 handler is limited too) and before anything that adds routes: every route but the
  // probes is limited.
  await fastify.register(rateLimit)
  await fastify.register(errors)
  await fastify.register(docs)
  await fastify.register(apiKeys)
  await fastify.register(signer)
  await fastify.register(coze, { dispatcher: opts.cozeDispatcher })
  await fastify.register(resend, { resolver: opts.resolver })
  await fastify.register(augment, { resolver: opts.resolver })

  fastify.readiness.add('signer', async () => (fastify.signer === null ? 'not_configured' : 'ok'))

  // One line per request: the route, not the query string, which may carry user data; routes add their
  // own fields (request.logFields) to this line rather than writing a second one.
  fastify.decorateRequest('logFields', null)
  // (Hooks on every request are callback-style: an async hook costs a promise and a microtask each time.)
  // (The route's fields are assigned after the common ones: an object literal that starts with a spread costs
  // V8 a slow copy, several µs per request, measured.)
  fastify.addHook('onResponse', (request, reply, done) => {
    const line = {
      method: request.method,
      route: request.routeOptions.url ?? null,
      path: request.url.split('?', 1)[0],
      statusCode: reply.statusCode,
      durationMs: Math.round(reply.elapsedTime * 10) / 10
    }
    request.log.info(request.logFields === null ? line : Object.assign(line, request.logFields), 'request completed')
    done()
  })

  // While closing, answers end their connection so keep-alive clients move to another instance at once.
  fastify.addHook('onSend', (_request, reply, payload, done) => {
    if (!fastify.server.listening) void reply.header('connection', 'close')
    done(null, payload)
  })

  await fastify.register(healthRoutes)
  await fastify.register(metricsRoutes)
  await fastify.register(tokenRoutes)
  await fastify.register(resendRoutes)
  await fastify.register(augmentRoutes, { prefix: '/api' })
}
