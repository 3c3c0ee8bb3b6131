import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import fp from 'fastify-plugin'
import promClient, { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { createApiKeyVerifier } from '../lib/api-keys.js'

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

/** What the service counts, beyond requests: the plugins and routes report here. */
export interface ServiceMetrics {
  cozeExchange (outcome: string, seconds: number): void
  tokenRequest (cache: string): void
  resend (outcome: string, attempts: number): void
  oauthStateIssued (): void
  oauthCompletion (outcome: string): void
  /** A value read when Prometheus scrapes (states in memory, Redis up). */
  gauge (name: string, help: string, read: () => number): void
}

const noop = (): void => {}
export const disabledMetrics: ServiceMetrics = {
  cozeExchange: noop, tokenRequest: noop, resend: noop, oauthStateIssued: noop, oauthCompletion: noop, gauge: noop
}

/** Counters in the given registry (one per app, so several apps in one process do not collide). */
export function createServiceMetrics (registry: Registry): ServiceMetrics {
  const registers = [registry]
  const cozeExchanges = new Counter({ name: 'coze_token_exchanges_total', help: 'Coze token exchanges by outcome', labelNames: ['outcome'], registers })
  const cozeDuration = new Histogram({
    name: 'coze_token_exchange_duration_seconds', help: 'Duration of Coze token exchanges', labelNames: ['outcome'], registers, buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
  })
  const tokenRequests = new Counter({ name: 'coze_token_requests_total', help: 'POST /token answers by token cache outcome (hit, miss, shared, off)', labelNames: ['cache'], registers })
  const resends = new Counter({ name: 'resend_requests_total', help: 'POST /resend by outcome', labelNames: ['outcome'], registers })
  const resendAttempts = new Histogram({ name: 'resend_attempts', help: 'Attempts per resend', registers, buckets: [1, 2, 3, 4, 5] })
  const statesIssued = new Counter({ name: 'oauth_states_issued_total', help: 'OAuth states stored by GET /api/auth-url', registers })
  const completions = new Counter({ name: 'oauth_completions_total', help: 'POST /api/complete-auth by outcome', labelNames: ['outcome'], registers })
  return {
    cozeExchange (outcome, seconds) {
      cozeExchanges.inc({ outcome })
      cozeDuration.observe({ outcome }, seconds)
    },
    tokenRequest (cache) { tokenRequests.inc({ cache }) },
    resend (outcome, attempts) {
      resends.inc({ outcome })
      resendAttempts.observe(attempts)
    },
    oauthStateIssued () { statesIssued.inc() },
    oauthCompletion (outcome) { completions.inc({ outcome }) },
    gauge (name, help, read) {
      // prom-client calls collect() on each scrape; the registry keeps the gauge.
      new Gauge({ name, help, registers, collect () { this.set(read()) } })
    }
  }
}

export interface Prometheus {
  registry: Registry
  /** Whether a scrape may read the metrics: always without METRICS_TOKEN, else only with `Bearer <token>`. */
  authorize (authorization: string | undefined): boolean
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
  fastify.addHook('onResponse', (request, reply, done) => {
    // (routeOptions is a getter that builds a new object: read once.)
    const { url: route, config } = request.routeOptions
    if (route !== undefined && config.disableMetrics !== true) {
      requestDuration.observe({ method: request.method, route, status_code: reply.statusCode }, reply.elapsedTime / 1000)
    }
    done()
  })

  const token = createApiKeyVerifier(config.METRICS_TOKEN)
  const prometheus: Prometheus = {
    registry,
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
