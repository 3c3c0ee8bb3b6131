import type { ServiceMetrics } from '../ops/index.js'
import type { DestinationView } from './destinations.js'
import type { JobQueue } from './jobs.js'

/**
 * What queued delivery shows Prometheus, read from its last snapshot (every 5 s). The destinations' figures are
 * shared by every instance (one state in Redis): each instance reports the same value, so aggregate them with
 * max, not sum.
 */
export function registerQueueGauges (metrics: Pick<ServiceMetrics, 'gauge' | 'gaugeByLabel'>, jobs: JobQueue, maxQueuedBytes: number): void {
  metrics.gaugeByLabel('resend_queue_jobs', 'Queued delivery jobs by status (queued, delivering, delivered, failed), read every 5 s', 'status', () => jobs.snapshot().counts)
  metrics.gauge('resend_queue_oldest_age_seconds', 'Age of the oldest job not yet delivered or failed, read every 5 s', () => jobs.snapshot().oldestSeconds)
  metrics.gauge('resend_queue_bytes', 'Bytes queued delivery keeps in Redis (requests and kept answers), read every 5 s', () => jobs.snapshot().bytes)
  metrics.gauge('resend_queue_bytes_limit', 'RESEND_MAX_QUEUED_BYTES: the bound on resend_queue_bytes', () => maxQueuedBytes)
  metrics.gauge('redis_writes_refused', 'Whether Redis refused the queue\'s last write for memory (maxmemory): 1, or 0', () => (jobs.writesRefused ? 1 : 0))
  const byHost = (read: (view: DestinationView) => number) => () => Object.fromEntries(jobs.snapshot().destinations.map((view) => [view.host, read(view)]))
  metrics.gaugeByLabel('resend_destination_paused', 'Whether deliveries to a host are paused (1: its breaker, or a pause it asked for), shared by every instance', 'host', byHost((view) => (view.state === 'paused' ? 1 : 0)))
  metrics.gaugeByLabel('resend_destination_waiting', 'Queued jobs to a host ready to go or held back (share, limit, pause), shared by every instance', 'host', byHost((view) => view.waiting))
  metrics.gaugeByLabel('resend_destination_attempts', 'Attempts to a host, now and queued, in this five-minute window and the one before, shared by every instance', 'host', byHost((view) => view.recent.attempts))
  metrics.gaugeByLabel('resend_destination_failures', 'Failed attempts to a host (no answer, timeout, 5xx) in the same window, shared by every instance', 'host', byHost((view) => view.recent.failed))
}
