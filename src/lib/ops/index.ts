/**
 * What the operator sees: the service's counters (`metrics.ts`), the Prometheus registry and scrape
 * (`prometheus.ts`), the checks behind GET /ready (`readiness.ts`), what this instance saw of each app for the
 * console (`activity.ts`), and the reader of the configuration documents.
 */
export { type Activity, type ActivityKind, type AppActivity, createActivity } from './activity.js'
export { readConfigDocument } from './config-document.js'
export { createServiceMetrics, disabledMetrics, type ServiceMetrics } from './metrics.js'
export { createMetricsServer, createPrometheus, type Prometheus } from './prometheus.js'
export { configurationStatus, createReadiness, type Readiness } from './readiness.js'
