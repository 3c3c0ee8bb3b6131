/**
 * The relay behind POST /resend, as its callers see it. A request meets, in order: the request and its policy
 * (`request.ts`, `destination.ts`), the commands (`commands.ts`, run by the JSONPath workers of
 * `json-path-pool.ts`), then either the sending with its retries (`send.ts`, now) or the queue (`jobs.ts`, queued:
 * its verdicts and schedule in `verdict.ts`, what a caller sees in `views.ts`), both attaching Feishu's tokens
 * (`feishu.ts`). `service.ts` builds them together.
 */
export { createRelayService, type RelayService, type RelayServiceOptions } from './service.js'
export { DEFAULT_METHOD, RESEND_METHODS, type RelayRequest, type ResendMethod } from './request.js'
export type { Relay, RelayAnswer } from './send.js'
export { BULK_LIMIT, LIST_SCAN, type JobFilter, type JobQueue } from './jobs.js'
export { canonicalRequest } from './idempotency.js'
export { type DestinationView, parseHostLimits } from './destinations.js'
export { parseDuration } from './verdict.js'
export { registerQueueGauges } from './metrics.js'
export { JOB_STATUSES, type JobStatus, type JobView } from './views.js'
export { CommandsSchema } from './commands.js'
export { MAX_MATCHED_VALUES, MAX_REPORTED_PATHS } from './json-path.js'
