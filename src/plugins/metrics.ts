import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import fp from 'fastify-plugin'
import promClient, { Histogram, Registry } from 'prom-client'
import { createApiKeyVerifier } from '../lib/api-keys.js'
import { childrenOf, createServiceMetrics, disabledMetrics, type ServiceMetrics } from '../lib/service-metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The service's own counters. */
    serviceMetrics: ServiceMetrics
    /** The registry and the scrape's access rule; null with METRICS_ENABLED=false. */
    prometheus: Prometheus | null
  }
  interface FastifyContextConfig {
    /** Leaves the route out of http_request_duration_seconds (probes, the scrape). */
    disableMetrics?: boolean
  }
}

export interface Prometheus {
  registry: Registry
  /** Whether a scrape may read the metrics: always without METRICS_TOKEN, else only with `Bearer <token>`. */
  authorize (authorization: string | undefined): boolean
  /** Whether METRICS_TOKEN is set. */
  readonly protected: boolean
}

/**
 * Prometheus metrics: requests by route and status, process metrics, and the service's own counters. Request
 * durations come from Fastify's own clock (reply.elapsedTime) in one callback hook: no timer and no per-request
 * map entry. The scrape is served by routes/metrics.ts on the API port, or here on METRICS_PORT, a listener of
 * its own that the load balancer need not expose.
 */
export default fp(async function metrics (fastify) {
  const { config } = fastify
  if (!config.METRICS_ENABLED) {
    fastify.decorate('serviceMetrics', disabledMetrics)
    fastify.decorate('prometheus', null)
    return
  }
  const registry = new Registry()
  promClient.collectDefaultMetrics({ register: registry })
  // Gauges named like counters, which Prometheus' own checker refuses; each is the sum of its per-type gauge
  // (nodejs_active_handles{type}, ...), which stays.
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name)
  const requestDuration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'Duration of API requests by method, route and status code',
    labelNames: ['method', 'route', 'status_code'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry]
  })

  // Registered routes only (a 404 for an unknown path has no route), and not the probes or the scrape itself.
  const durationOf = childrenOf<Histogram.Internal<string>>(requestDuration)
  fastify.addHook('onResponse', (request, reply, done) => {
    // (routeOptions is a getter that builds a new object: read once.)
    const { url: route, config } = request.routeOptions
    if (route !== undefined && config.disableMetrics !== true) {
      durationOf(request.method, route, String(reply.statusCode)).observe(reply.elapsedTime / 1000)
    }
    done()
  })

  const token = createApiKeyVerifier(config.METRICS_TOKEN)
  const prometheus: Prometheus = {
    registry,
    protected: token.configured,
    authorize (authorization) {
      if (!token.configured) return true
      return typeof authorization === 'string' && authorization.startsWith('Bearer ') && token.verify(authorization.slice(7))
    }
  }
  fastify.decorate('serviceMetrics', createServiceMetrics(registry))
  fastify.decorate('prometheus', prometheus)

  if (config.METRICS_PORT > 0) {
    const side = createServer((req, res) => {
      const path = (req.url as string).split('?', 1)[0]
      const status = req.method !== 'GET' || path !== '/metrics' ? 404 : prometheus.authorize(req.headers.authorization) ? 200 : 401
      if (status !== 200) { res.writeHead(status, { 'content-type': 'text/plain' }).end(status === 404 ? 'not found\n' : 'unauthorized\n'); return }
      registry.metrics().then((text) => { res.writeHead(200, { 'content-type': registry.contentType }).end(text) }, () => { res.writeHead(500).end() })
    })
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
