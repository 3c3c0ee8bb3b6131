import fp from 'fastify-plugin'
import { STATE_KEY_PREFIX as KEY_PREFIX, createMemoryStateStore, createRedisStateStore, type StateStore } from '../lib/augment/index.js'
import { redisReadiness } from '../lib/redis/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    stateStore: StateStore
  }
}

/** The OAuth state store: in memory for one instance, in Redis when several share the work. */
export default fp(async function stateStore (fastify) {
  const { config } = fastify
  const validityMs = config.OAUTH_STATE_TTL_SECONDS * 1000
  let store: StateStore
  if (config.STATE_STORE === 'redis') {
    store = createRedisStateStore(fastify.redis, { validityMs })
  } else {
    const memory = createMemoryStateStore({ maxEntries: config.OAUTH_STATE_MAX_ENTRIES, validityMs })
    fastify.serviceMetrics.gauge('oauth_states_stored', 'OAuth states waiting in the memory store', () => memory.size)
    store = memory
  }
  fastify.decorate('stateStore', store)
  // A real round trip in Redis: a PING answers where no key can be kept (full, or a cluster node that owns none).
  fastify.readiness.add('state_store', async () => (config.STATE_STORE === 'redis' ? await redisReadiness(fastify.redis, `${KEY_PREFIX}probe`, 'down') : 'ok'))
  fastify.addHook('onClose', async () => { await store.close() })
}, { name: 'state-store', fastify: '5.x', dependencies: ['config', 'readiness', 'metrics', 'redis'] })
