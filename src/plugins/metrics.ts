import fp from 'fastify-plugin'
import promClient, { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { NEVER_SHED } from './pressure.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The service's own counters. */
    serviceMetrics: ServiceMetrics
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

/**
 * GET /metrics in Prometheus text format: requests by route and status, process metrics, and the service's own.
 * Request durations come from Fastify's own clock (reply.elapsedTime) in one callback hook: no timer and no
 * per-request map entry, which the general-purpose plugin used before needed. (Turning metrics off made /token
 * with the cache on about a fifth cheaper with that plugin, about an eighth with this hook; bench, median of rounds.)
 */
export default fp(async function metrics (fastify) {
  if (!fastify.config.METRICS_ENABLED) {
    fastify.decorate('serviceMetrics', disabledMetrics)
    return
  }
  const registry = new Registry()
  promClient.collectDefaultMetrics({ register: registry })
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

  // Scrapers are never rate limited or shed.
  fastify.get('/metrics', {
    logLevel: 'warn',
    config: { rateLimit: false, disableMetrics: true, ...NEVER_SHED },
    schema: { hide: true }
  }, async (_request, reply) => {
    void reply.type(registry.contentType)
    return await registry.metrics()
  })
  fastify.decorate('serviceMetrics', createServiceMetrics(registry))
}, { name: 'metrics', fastify: '5.x', dependencies: ['config'] })
