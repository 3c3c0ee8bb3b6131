import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ServiceError } from '../lib/http/index.js'
import { NEVER_SHED } from '../plugins/pressure.js'

/** GET /metrics on the API port, unless METRICS_PORT gives the scrape a listener of its own. */
const metricsRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { prometheus, config } = fastify
  if (prometheus === null || config.METRICS_PORT > 0) return
  // The broker's metrics name its callers and apps, which a refused caller must not learn (403 says "app" alike
  // for an app that does not exist and one it may not use): on the API port they need METRICS_TOKEN.
  if (fastify.brokerSetup !== null && !prometheus.protected) {
    fastify.log.info('/metrics is not served on the API port: with an apps document it needs METRICS_TOKEN, or METRICS_PORT')
    return
  }
  // Rate limited like every route but the probes; never shed, and not timed itself.
  fastify.get('/metrics', {
    logLevel: 'warn',
    config: { disableMetrics: true, ...NEVER_SHED },
    schema: { hide: true },
    preHandler: (request, _reply, done) => {
      done(prometheus.authorize(request.headers.authorization) ? undefined : new ServiceError('UNAUTHORIZED'))
    }
  }, async (_request, reply) => {
    void reply.type(prometheus.registry.contentType)
    return await prometheus.registry.metrics()
  })
}

export default metricsRoutes
