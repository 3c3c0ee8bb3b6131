import fastifyRedis from '@fastify/redis'
import type { FastifyBaseLogger } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import { createMemoryStateStore, createRedisStateStore, type StateStore } from '../lib/state-store.js'

declare module 'fastify' {
  interface FastifyInstance {
    stateStore: StateStore
  }
}

const START_TIMEOUT_MS = 5000

/** Connects once at start; a Redis that does not answer then stops the start with a clear message. */
async function connectRedis (url: string, keyPrefix: string, log: FastifyBaseLogger): Promise<Redis> {
  const client = new Redis(url, {
    keyPrefix,
    lazyConnect: true,
    // While Redis is away, commands fail at once (503) instead of queueing; reconnection goes on by itself.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    commandTimeout: 2000,
    retryStrategy: (times) => Math.min(times * 200, 2000)
  })
  // Without a listener ioredis prints every failed reconnection; the 'close' and 'ready' events below say enough.
  client.on('error', (err: NodeJS.ErrnoException) => { log.debug({ code: err.code }, 'redis error') })
  try {
    await Promise.race([
      client.connect(),
      new Promise((_resolve, reject) => setTimeout(reject, START_TIMEOUT_MS, new Error('no answer')).unref())
    ])
    return client
  } catch (err) {
    client.disconnect()
    // The URL may hold a password: name only its host.
    throw new Error(`STATE_STORE=redis: Redis at ${new URL(url).host} (REDIS_URL) does not answer: ${(err as Error).message}`)
  }
}

/** The OAuth state store: in memory for one instance, in Redis when several share the work. */
export default fp(async function stateStore (fastify) {
  const { config } = fastify
  const validityMs = config.OAUTH_STATE_TTL_SECONDS * 1000
  let store: StateStore
  if (config.STATE_STORE === 'redis') {
    const client = await connectRedis(config.REDIS_URL, config.REDIS_KEY_PREFIX, fastify.log)
    let available = true
    client.on('close', () => {
      if (available) fastify.log.warn('redis connection lost; retrying')
      available = false
    })
    client.on('ready', () => {
      if (!available) fastify.log.info('redis connection restored')
      available = true
    })
    // @fastify/redis decorates fastify.redis; closing is ours, because quit() fails while Redis is away.
    await fastify.register(fastifyRedis, { client, closeClient: false })
    fastify.addHook('onClose', async () => { await client.quit().catch(() => { client.disconnect() }) })
    store = createRedisStateStore(client, { validityMs })
    fastify.serviceMetrics.gauge('redis_up', 'Whether the Redis of the state store answers (1) or not (0)', () => (client.status === 'ready' ? 1 : 0))
  } else {
    const memory = createMemoryStateStore({ maxEntries: config.OAUTH_STATE_MAX_ENTRIES, validityMs })
    fastify.serviceMetrics.gauge('oauth_states_stored', 'OAuth states waiting in the memory store', () => memory.size)
    store = memory
  }
  fastify.decorate('stateStore', store)
  fastify.readiness.add('state_store', async () => (await store.isAvailable() ? 'ok' : 'down'))
  fastify.addHook('onClose', async () => { await store.close() })
}, { name: 'state-store', fastify: '5.x', dependencies: ['config', 'readiness', 'metrics'] })
