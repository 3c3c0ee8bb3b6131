import fp from 'fastify-plugin'
import { createRelayService, type JobQueue, parseDuration, parseHostLimits, type Relay, registerQueueGauges } from '../lib/relay/index.js'
import type { Resolver } from '../lib/http/index.js'
import type { RedisSettings } from '../lib/redis/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    relay: Relay
    /** Queued delivery; null unless RESEND_QUEUE=redis with RESEND_QUEUE_SECRET. */
    resendJobs: JobQueue | null
    /** What queued delivery lacks: the variables to set; empty when it works. */
    resendQueueMissing: string[]
  }
}

export interface ResendPluginOptions {
  /** Replaces DNS for the destination check (tests: names that resolve to private addresses, without DNS). */
  resolver?: Resolver
}

/** The relay of POST /resend: its allow-list, limits, Feishu's tokens, counters and queue. */
export default fp<ResendPluginOptions>(async function resend (fastify, opts) {
  const { config, log, serviceMetrics } = fastify
  const missing = [config.RESEND_QUEUE === 'redis' ? '' : 'RESEND_QUEUE=redis', config.RESEND_QUEUE_SECRET !== undefined ? '' : 'RESEND_QUEUE_SECRET'].filter(Boolean)
  // A broker caller holds its max_queued_bytes, a quarter of the bound by default; single-app mode, the bound.
  const shares = new Map((fastify.brokerSetup?.callers ?? []).map((caller) => [caller.name, caller.maxQueuedBytes ?? Math.floor(config.RESEND_MAX_QUEUED_BYTES / 4)]))
  const ownerMaxBytes = (owner: string): number => shares.get(owner) ?? config.RESEND_MAX_QUEUED_BYTES
  const redisSecret = config.RESEND_QUEUE === 'redis' && missing.length === 0 ? config.RESEND_QUEUE_SECRET : config.TOKEN_CACHE === 'redis' ? config.TOKEN_CACHE_SECRET : undefined
  const service = await createRelayService({
    allowedHosts: config.RESEND_ALLOWED_HOSTS,
    timeoutMs: config.RESEND_TIMEOUT_MS,
    maxResponseBytes: config.RESEND_MAX_RESPONSE_BYTES,
    bodyLimitBytes: config.BODY_LIMIT_BYTES,
    maxDepth: config.BODY_MAX_DEPTH,
    jsonPathWorkers: config.JSONPATH_WORKERS,
    jsonPathTimeoutMs: config.JSONPATH_TIMEOUT_MS,
    feishuApps: fastify.feishuApps,
    queue: missing.length > 0 ? null : { redisSettings: fastify.redisSettings as RedisSettings, keyPrefix: config.REDIS_KEY_PREFIX, partitions: config.RESEND_QUEUE_PARTITIONS, secret: Buffer.from(config.RESEND_QUEUE_SECRET as string, 'base64'), concurrency: config.RESEND_WORKERS, lockMs: config.RESEND_JOB_LOCK_MS, retrySchedule: config.RESEND_RETRY_SCHEDULE, maxAge: config.RESEND_MAX_AGE, maxQueued: config.RESEND_MAX_QUEUED, maxQueuedBytes: config.RESEND_MAX_QUEUED_BYTES, ownerMaxBytes, closeGraceMs: config.SHUTDOWN_GRACE_MS, hostLimits: parseHostLimits(config.RESEND_HOST_LIMITS), destinationControls: config.RESEND_DESTINATION_CONTROLS === 'on', breakerFailures: config.RESEND_BREAKER_FAILURES, breakerCooldown: config.RESEND_BREAKER_COOLDOWN },
    redis: redisSecret === undefined ? undefined : { client: fastify.redis, secret: Buffer.from(redisSecret, 'base64'), available: fastify.redisAvailable },
    resolver: opts.resolver,
    onOutcome: serviceMetrics.resend,
    onRefusedAddress: (trace) => { log.warn({ destination: trace.destination, method: trace.upstream_method }, 'resend refused: destination resolves to a non-public address') },
    onJob: serviceMetrics.resendJob,
    onFeishuFetch: (app, outcome) => {
      serviceMetrics.feishuTokenFetch(app, outcome)
      fastify.activity.record('feishu', app, outcome)
    },
    onFeishuSettingsRefused: (app, code, msg) => { log.error({ feishu_app: app, feishu_code: code, feishu_msg: msg }, 'Feishu refuses the app\'s id or secret: fix its settings (queued jobs that need its token fail at once)') },
    onWarning: (message) => { log.warn(message) },
    onError: (err) => { log.warn({ err: { message: err.message } }, 'resend queue: Redis failed') },
    alerts: config.RESEND_ALERT_WEBHOOK === undefined ? undefined : { webhook: new URL(config.RESEND_ALERT_WEBHOOK), secret: config.RESEND_ALERT_SECRET, intervalMs: parseDuration(config.RESEND_ALERT_INTERVAL), onFailure: (reason) => { log.warn({ reason }, 'resend: the alert webhook did not take a message (deliveries go on)') } },
    onBreaker: (host, state, detail) => {
      if (state === 'opened') log.warn({ host, failures: detail.failures, cooldown_ms: detail.cooldownMs, error: detail.error }, 'resend: destination paused after consecutive failures (its breaker opened)')
      else log.info({ host }, 'resend: destination answers again (its breaker closed)')
    },
    onWritesRefused: (refused) => {
      if (refused) log.error('resend queue: Redis refuses writes (maxmemory reached): queued delivery answers 503 until it has room')
      else log.info('resend queue: Redis takes writes again')
    }
  })
  log.info({ upstream: 'resend', allowed_hosts: config.RESEND_ALLOWED_HOSTS, queue: service.jobs === null ? 'off' : 'redis', feishu_apps: fastify.feishuApps.map((app) => `${app.name} ${app.appId} ${app.base.origin}`) }, 'upstream configured')
  fastify.decorate('relay', service.relay)
  fastify.decorate('resendJobs', service.jobs)
  fastify.decorate('resendQueueMissing', missing)
  if (service.jobs !== null) registerQueueGauges(serviceMetrics, service.jobs, config.RESEND_MAX_QUEUED_BYTES)
  fastify.addHook('onClose', async () => { await service.close() })
}, { name: 'resend', fastify: '5.x', dependencies: ['config', 'metrics', 'redis'] })
