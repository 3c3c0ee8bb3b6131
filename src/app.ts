import type { FastifyInstance } from 'fastify'
import sensible from '@fastify/sensible'
import type { Dispatcher } from 'undici'
import type { Resolver } from './lib/upstream-policy.js'
import apiKeys from './plugins/api-keys.js'
import augment from './plugins/augment.js'
import body from './plugins/body.js'
import broker from './plugins/broker.js'
import config, { type ConfigOptions } from './plugins/config.js'
import connections from './plugins/connections.js'
import cors from './plugins/cors.js'
import coze from './plugins/coze.js'
import docs from './plugins/docs.js'
import errors from './plugins/errors.js'
import metrics from './plugins/metrics.js'
import pressure from './plugins/pressure.js'
import rateLimit from './plugins/rate-limit.js'
import readiness from './plugins/readiness.js'
import redis from './plugins/redis.js'
import requestLog from './plugins/request-log.js'
import resend from './plugins/resend.js'
import signer from './plugins/signer.js'
import stateStore from './plugins/state-store.js'
import augmentRoutes from './routes/augment.js'
import healthRoutes from './routes/health.js'
import metricsRoutes from './routes/metrics.js'
import resendRoutes from './routes/resend.js'
import tokenRoutes from './routes/token.js'
import { ErrorEnvelope } from './schemas/envelope.js'

export interface AppOptions extends ConfigOptions {
  /** Stand-in for the Coze connection pool (the bench and tests of the client). */
  cozeDispatcher?: Dispatcher
  /** Replaces DNS in the destination checks (tests resolve names without DNS). */
  resolver?: Resolver
}

/** The whole service, in dependency order: the table of contents. No listen here: src/server.ts does that. */
export default async function app (fastify: FastifyInstance, opts: AppOptions): Promise<void> {
  fastify.addSchema(ErrorEnvelope)
  await fastify.register(config, { config: opts.config, broker: opts.broker, feishuApps: opts.feishuApps, warnings: opts.warnings })
  await fastify.register(requestLog)
  await fastify.register(body)
  await fastify.register(sensible)
  await fastify.register(readiness)
  await fastify.register(metrics)
  await fastify.register(connections)
  await fastify.register(pressure)
  await fastify.register(redis)
  await fastify.register(stateStore)
  // Before errors (its 404 handler is limited too) and before anything that adds routes: every route but the
  // probes is limited.
  await fastify.register(rateLimit)
  await fastify.register(errors)
  await fastify.register(cors)
  await fastify.register(docs)
  await fastify.register(broker, { dispatcher: opts.cozeDispatcher })
  await fastify.register(apiKeys)
  await fastify.register(signer)
  await fastify.register(coze, { dispatcher: opts.cozeDispatcher })
  await fastify.register(resend, { resolver: opts.resolver })
  await fastify.register(augment, { resolver: opts.resolver })

  await fastify.register(healthRoutes)
  await fastify.register(metricsRoutes)
  await fastify.register(tokenRoutes)
  await fastify.register(resendRoutes)
  await fastify.register(augmentRoutes, { prefix: '/api' })
}
