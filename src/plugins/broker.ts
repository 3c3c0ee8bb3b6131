import fp from 'fastify-plugin'
import type { Dispatcher } from 'undici'
import { type Broker, brokerCallers, createBroker, createMemoryTokenStore, createRedisTokenStore, importApps, type TokenStore } from '../lib/coze/index.js'
import { redisReadiness } from '../lib/redis/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Several Coze apps and scoped callers (COZE_APPS_FILE or COZE_APPS); null in single-app mode. */
    broker: Broker | null
  }
}

export interface BrokerPluginOptions {
  dispatcher?: Dispatcher
}

/** The broker: apps and their keys, callers and what each may ask, one token cache (shared with TOKEN_CACHE=redis). */
export default fp<BrokerPluginOptions>(async function broker (fastify, opts) {
  const { config, brokerSetup: setup, serviceMetrics } = fastify
  if (setup === null) {
    fastify.decorate('broker', null)
    return
  }
  const memory = createMemoryTokenStore({ maxPending: config.COZE_MAX_PENDING_EXCHANGES })
  let store: TokenStore = memory
  if (config.TOKEN_CACHE === 'redis') {
    store = createRedisTokenStore({
      redis: fastify.redis,
      secret: Buffer.from(config.TOKEN_CACHE_SECRET as string, 'base64'),
      lockMs: config.COZE_TIMEOUT_MS + 1000,
      failureShareMs: config.COZE_FAILURE_SHARE_MS,
      fallback: memory,
      available: fastify.redisAvailable,
      onLockWithoutExpiry: () => { fastify.log.warn('token cache: a lock without an expiry was found and removed (locks are only ever set with one)') },
      onDegraded: (degraded) => {
        if (degraded) fastify.log.warn('token cache: Redis does not answer; each instance caches on its own until it does')
        else fastify.log.info('token cache: shared again')
      }
    })
  }
  serviceMetrics.gauge('token_cache_degraded', 'Whether the shared token cache has fallen back to this instance\'s memory (1) or not (0)', () => (store.status() === 'degraded' ? 1 : 0))
  // With Redis: a real round trip; while it fails each instance caches on its own (degraded, still ready).
  fastify.readiness.add('token_cache', async () => (config.TOKEN_CACHE === 'redis' ? await redisReadiness(fastify.redis, 'token-cache:probe', 'degraded') : 'ok'))

  const apps = await importApps(setup)
  for (const app of apps) fastify.log.info({ upstream: 'coze', app: app.name, app_id: app.appId, token_url: app.tokenUrl.href, kids: app.keys.map((key) => key.kid), audience: app.audience }, 'upstream configured')
  const instance = createBroker({
    apps,
    callers: brokerCallers(setup),
    store,
    timeoutMs: config.COZE_TIMEOUT_MS,
    jwtTtlSeconds: config.COZE_JWT_TTL_SECONDS,
    dispatcher: opts.dispatcher,
    onExchange: serviceMetrics.cozeExchange,
    onToken: (app, caller, outcome, logid) => {
      serviceMetrics.brokerToken(app, caller, outcome)
      fastify.activity.record('coze', app, outcome, logid)
    },
    onForcedExchange: serviceMetrics.forcedExchange,
    onFailover: (app, fromKid, toKid) => {
      fastify.log.warn({ app, kid: fromKid, next_kid: toKid }, 'Coze does not know this key of the app: trying its next key')
      serviceMetrics.keyFailover(app)
    }
  })
  fastify.decorate('broker', instance)
  fastify.addHook('onClose', async () => { await instance.close() })
}, { name: 'broker', fastify: '5.x', dependencies: ['config', 'metrics', 'readiness', 'redis'] })
