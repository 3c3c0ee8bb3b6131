import type { RedisClient, RedisSettings } from '../redis/index.js'
import { createMemoryTokenStore, createRedisTokenStore, type TokenStore } from '../coze/index.js'
import { parseAllowList, type Resolver } from '../http/index.js'
import { createFeishuTokens, type FeishuApp } from './feishu.js'
import { createAlerts, type Alerts } from './alerts.js'
import type { HostLimit } from './destinations.js'
import { createJobQueue, type JobQueue } from './jobs.js'
import { parseDuration } from './verdict.js'
import { createJsonPathPool } from './json-path-pool.js'
import { createRelay, type Relay, type RelayTrace } from './send.js'

/** Everything the relay is built from, as the configuration gives it. */
export interface RelayServiceOptions {
  allowedHosts: string
  timeoutMs: number
  maxResponseBytes: number
  bodyLimitBytes: number
  maxDepth: number
  jsonPathWorkers: number
  jsonPathTimeoutMs: number
  feishuApps: FeishuApp[]
  /** Queued delivery, when RESEND_QUEUE=redis and RESEND_QUEUE_SECRET are set; null leaves only "now". */
  queue: null | {
    redisSettings: RedisSettings
    keyPrefix: string
    partitions: number
    secret: Buffer
    concurrency: number
    lockMs: number
    retrySchedule: string
    maxAge: string
    maxQueued: number
    maxQueuedBytes: number
    /** A caller's share of maxQueuedBytes. */
    ownerMaxBytes: (owner: string) => number
    closeGraceMs: number
    /** RESEND_HOST_LIMITS, RESEND_BREAKER_FAILURES, RESEND_BREAKER_COOLDOWN. */
    hostLimits: HostLimit[]
    destinationControls: boolean
    breakerFailures: number
    breakerCooldown: string
  }
  /** The shared Redis client, when there is one: the queue's idempotency keys, and Feishu tokens for every instance. */
  redis?: { client: RedisClient, secret: Buffer, available: () => boolean } | undefined
  resolver?: Resolver | undefined
  onOutcome?: (outcome: string, attempts: number) => void
  onRefusedAddress?: (trace: RelayTrace) => void
  onJob?: (outcome: string, attempts?: number) => void
  onFeishuFetch?: (app: string, outcome: string) => void
  onFeishuSettingsRefused?: (app: string, code: number, msg: string | undefined) => void
  onWarning: (message: string) => void
  onError: (err: Error) => void
  onWritesRefused?: (refused: boolean) => void
  onBreaker?: (host: string, state: 'opened' | 'closed', detail: { failures: number, cooldownMs: number, error?: string | undefined }) => void
  /** RESEND_ALERT_WEBHOOK, RESEND_ALERT_SECRET, RESEND_ALERT_INTERVAL (ms): the bot told of failures and pauses. */
  alerts?: { webhook: URL, secret?: string | undefined, intervalMs: number, onFailure: (reason: string) => void } | undefined
}

export interface RelayService {
  relay: Relay
  /** Null without queued delivery. */
  jobs: JobQueue | null
  /** Deliveries in flight finish, then every pool and connection closes. */
  close (): Promise<void>
}

/** The relay with its JSONPath workers, Feishu's tokens and, when configured, its queue. */
export async function createRelayService (options: RelayServiceOptions): Promise<RelayService> {
  // A worker's heap: room for a body at its largest, parsed, and the nodes an expression walks.
  const jsonPath = createJsonPathPool({
    workers: options.jsonPathWorkers,
    timeoutMs: options.jsonPathTimeoutMs,
    memoryMb: 128 + 32 * Math.ceil(options.bodyLimitBytes / 1048576),
    maxQueue: 64 * options.jsonPathWorkers,
    maxDepth: options.maxDepth,
    /* c8 ignore next - see json-path-pool.ts: a safety net */
    onWorkerError: (err) => { options.onWarning(`a JSONPath worker failed outside a request: ${err.message}`) }
  })
  const memory = createMemoryTokenStore({ maxPending: 1000 })
  let store: TokenStore = memory
  if (options.redis !== undefined) {
    store = createRedisTokenStore({ redis: options.redis.client, secret: options.redis.secret, lockMs: options.timeoutMs + 1000, fallback: memory, available: options.redis.available })
  }
  const feishu = createFeishuTokens({ apps: options.feishuApps, store, timeoutMs: options.timeoutMs, onFetch: options.onFeishuFetch, onSettingsRefused: options.onFeishuSettingsRefused })
  let jobs: JobQueue | null = null
  const relay = createRelay({
    jsonPath,
    destinations: () => jobs?.destinations,
    feishu,
    allowList: parseAllowList('RESEND_ALLOWED_HOSTS', options.allowedHosts),
    timeoutMs: options.timeoutMs,
    maxResponseBytes: options.maxResponseBytes,
    maxDepth: options.maxDepth,
    resolver: options.resolver,
    onOutcome: options.onOutcome,
    onRefusedAddress: options.onRefusedAddress
  })
  let alerts: Alerts | undefined
  if (options.queue !== null && options.redis !== undefined) {
    const { queue } = options
    if (options.alerts !== undefined) alerts = createAlerts({ ...options.alerts, redis: options.redis.client, timeoutMs: options.timeoutMs })
    const statusPath = '/resend/jobs/'
    jobs = await createJobQueue({
      relay,
      redisSettings: queue.redisSettings,
      keyPrefix: queue.keyPrefix,
      partitions: queue.partitions,
      redis: options.redis.client,
      secret: queue.secret,
      concurrency: queue.concurrency,
      lockMs: queue.lockMs,
      scheduleMs: queue.retrySchedule.split(',').map(parseDuration),
      maxAgeMs: parseDuration(queue.maxAge),
      maxQueued: queue.maxQueued,
      maxQueuedBytes: queue.maxQueuedBytes,
      ownerMaxBytes: queue.ownerMaxBytes,
      onWritesRefused: options.onWritesRefused,
      closeGraceMs: queue.closeGraceMs,
      hostLimits: queue.hostLimits,
      destinationControls: queue.destinationControls,
      breakerFailures: queue.breakerFailures,
      breakerCooldownMs: parseDuration(queue.breakerCooldown),
      attemptMs: options.timeoutMs,
      onBreaker: (host, state, detail) => {
        options.onBreaker?.(host, state, detail)
        alerts?.note(state === 'opened' ? { kind: 'opened', host, ...detail } : { kind: 'closed', host })
      },
      onFailed: (failed) => { alerts?.note({ kind: 'failed', ...failed, statusPath }) },
      statusPath,
      onJob: options.onJob,
      onWarning: options.onWarning,
      onError: options.onError
    })
  }
  return {
    relay,
    jobs,
    async close () {
      await jobs?.close()
      await alerts?.close()
      await relay.close()
      await feishu.close()
      await jsonPath.close()
    }
  }
}
