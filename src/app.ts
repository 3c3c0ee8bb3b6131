import type { FastifyInstance } from 'fastify'
import sensible from '@fastify/sensible'
import type { Dispatcher } from 'undici'
import type { Resolver } from './lib/http/index.js'
import apiKeys from './plugins/api-keys.js'
import augment from './plugins/augment.js'
import body from './plugins/body.js'
import broker from './plugins/broker.js'
import config, { type ConfigOptions } from './plugins/config.js'
import connections from './plugins/connections.js'
import consolePages from './plugins/console.js'
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
  // The limiter comes before errors (its 404 handler is limited too) and before anything that adds routes: every
  // route but the probes is limited.
  for (const plugin of [requestLog, body, sensible, readiness, metrics, connections, pressure, redis, stateStore, rateLimit, errors, cors, docs]) {
    await fastify.register(plugin)
  }
  await fastify.register(broker, { dispatcher: opts.cozeDispatcher })
  await fastify.register(apiKeys)
  await fastify.register(signer)
  await fastify.register(coze, { dispatcher: opts.cozeDispatcher })
  await fastify.register(resend, { resolver: opts.resolver })
  await fastify.register(augment, { resolver: opts.resolver })
  // The operators' pages read what the plugins above hold: the queue, the apps, the callers.
  await fastify.register(consolePages)

  for (const routes of [healthRoutes, metricsRoutes, tokenRoutes, resendRoutes]) await fastify.register(routes)
  await fastify.register(augmentRoutes, { prefix: '/api' })
}
