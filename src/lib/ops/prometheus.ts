import { createServer, type Server } from 'node:http'
import promClient, { Histogram, Registry } from 'prom-client'
import { createApiKeyVerifier } from '../http/index.js'
import { childrenOf } from './metrics.js'

export interface Prometheus {
  registry: Registry
  /** Whether a scrape may read the metrics: always without METRICS_TOKEN, else only with `Bearer <token>`. */
  authorize (authorization: string | undefined): boolean
  /** Whether METRICS_TOKEN is set. */
  readonly protected: boolean
  /** An API request's duration, by method, route and status. */
  observeRequest (method: string, route: string, status: number, seconds: number): void
}

/** A registry with Node's process metrics and the request durations, and the scrape's access rule. */
export function createPrometheus (metricsToken: string | undefined): Prometheus {
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
  const durationOf = childrenOf<Histogram.Internal<string>>(requestDuration)
  const token = createApiKeyVerifier(metricsToken)
  return {
    registry,
    protected: token.configured,
    authorize (authorization) {
      if (!token.configured) return true
      return typeof authorization === 'string' && authorization.startsWith('Bearer ') && token.verify(authorization.slice(7))
    },
    observeRequest (method, route, status, seconds) {
      durationOf(method, route, String(status)).observe(seconds)
    }
  }
}

/** The scrape on a listener of its own (METRICS_PORT): GET /metrics and nothing else. */
export function createMetricsServer (prometheus: Prometheus): Server {
  const { registry } = prometheus
  return createServer((req, res) => {
    const path = (req.url as string).split('?', 1)[0]
    const status = req.method !== 'GET' || path !== '/metrics' ? 404 : prometheus.authorize(req.headers.authorization) ? 200 : 401
    if (status !== 200) { res.writeHead(status, { 'content-type': 'text/plain' }).end(status === 404 ? 'not found\n' : 'unauthorized\n'); return }
    registry.metrics().then((text) => { res.writeHead(200, { 'content-type': registry.contentType }).end(text) }, () => { res.writeHead(500).end() })
  })
}
