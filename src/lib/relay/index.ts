/**
 * The relay behind POST /resend, as its callers see it. A request meets, in order: the destination policy and
 * the commands (`send.ts` prepares, with `commands.ts` run by the JSONPath workers of `json-path-pool.ts`), then
 * either the sending with its retries (`send.ts`, now) or the queue (`jobs.ts`, queued), both attaching Feishu's
 * tokens (`feishu-tokens.ts`). `service.ts` builds them together.
 */
export { createRelayService, type RelayService, type RelayServiceOptions } from './service.js'
export { DEFAULT_METHOD, RESEND_METHODS, type RelayRequest, type ResendMethod } from './request.js'
export type { Relay, RelayAnswer } from './send.js'
export { JOB_STATUSES, LIST_SCAN, type JobQueue, type JobStatus, type JobView } from './jobs.js'
export { CommandsSchema } from './commands.js'
export { MAX_MATCHED_VALUES, MAX_REPORTED_PATHS } from './json-path.js'
