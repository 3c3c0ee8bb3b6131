import type { AddressInfo } from 'node:net'
import fp from 'fastify-plugin'
import { type Activity, createActivity, createMetricsServer, createPrometheus, createServiceMetrics, disabledMetrics, type Prometheus, type ServiceMetrics } from '../lib/ops/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The service's own counters. */
    serviceMetrics: ServiceMetrics
    /** The registry and the scrape's access rule; null with METRICS_ENABLED=false. */
    prometheus: Prometheus | null
    /** What this instance saw of each Coze and Feishu app lately (the console reads it), metrics on or off. */
    activity: Activity
  }
  interface FastifyContextConfig {
    /** Leaves the route out of http_request_duration_seconds (probes, the scrape). */
    disableMetrics?: boolean
  }
}

/**
 * Prometheus metrics: requests by route and status, process metrics, and the service's own counters. Request
 * durations come from Fastify's own clock (reply.elapsedTime) in one callback hook: no timer and no per-request
 * map entry. The scrape is served by routes/metrics.ts on the API port, or here on METRICS_PORT, a listener of
 * its own that the load balancer need not expose.
 */
export default fp(async function metrics (fastify) {
  const { config } = fastify
  fastify.decorate('activity', createActivity())
  if (!config.METRICS_ENABLED) {
    fastify.decorate('serviceMetrics', disabledMetrics)
    fastify.decorate('prometheus', null)
    return
  }
  const prometheus = createPrometheus(config.METRICS_TOKEN)
  // Registered routes only (a 404 for an unknown path has no route), and not the probes or the scrape itself.
  fastify.addHook('onResponse', (request, reply, done) => {
    // (routeOptions is a getter that builds a new object: read once.)
    const { url: route, config } = request.routeOptions
    if (route !== undefined && config.disableMetrics !== true) prometheus.observeRequest(request.method, route, reply.statusCode, reply.elapsedTime / 1000)
    done()
  })
  fastify.decorate('serviceMetrics', createServiceMetrics(prometheus.registry))
  fastify.decorate('prometheus', prometheus)

  if (config.METRICS_PORT > 0) {
    const side = createMetricsServer(prometheus)
    fastify.addHook('onListen', async () => {
      await new Promise<void>((resolve, reject) => { side.once('error', reject).listen(config.METRICS_PORT, config.HOST, resolve) })
      fastify.log.info({ port: (side.address() as AddressInfo).port }, 'metrics listening')
    })
    fastify.addHook('onClose', async () => {
      side.closeAllConnections()
      await new Promise((resolve) => side.close(resolve))
    })
  }
}, { name: 'metrics', fastify: '5.x', dependencies: ['config'] })
