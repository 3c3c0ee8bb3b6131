import fastifyRedis from '@fastify/redis'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { connectRedis, guardRedis, redisSettings, type RedisSettings } from '../lib/redis/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Whether Redis answers now: connected, and not counted as down by the breaker. Always true without Redis. */
    redisAvailable: () => boolean
    /** Where Redis is and how to reach it (one node or a cluster, TLS): the queue opens its own clients with it. */
    redisSettings: RedisSettings | null
  }
}

/**
 * The one Redis client, when something needs it (STATE_STORE=redis, TOKEN_CACHE=redis): decorated as
 * fastify.redis by @fastify/redis; closing is ours, because quit() fails while Redis is away.
 */
export default fp(async function redis (fastify) {
  const { config } = fastify
  const purposes = [config.STATE_STORE === 'redis' ? 'STATE_STORE=redis' : '', config.TOKEN_CACHE === 'redis' ? 'TOKEN_CACHE=redis' : '', config.RESEND_QUEUE === 'redis' ? 'RESEND_QUEUE=redis' : ''].filter(Boolean)
  if (purposes.length === 0) {
    fastify.decorate('redisAvailable', () => true)
    fastify.decorate('redisSettings', null)
    return
  }
  const settings = redisSettings(config.REDIS_URL, config.REDIS_CLUSTER, config.REDIS_TLS_CA_FILE)
  fastify.decorate('redisSettings', settings)
  const client = await connectRedis(settings, config.REDIS_KEY_PREFIX, purposes.join(', '), (code) => { fastify.log.debug({ code }, 'redis error') })
  let available = true
  client.on('close', () => {
    if (available) fastify.log.warn('redis connection lost; retrying')
    available = false
  })
  client.on('ready', () => {
    if (!available) fastify.log.info('redis connection restored')
    available = true
  })
  // One breaker for every user of the client: the token cache, the OAuth states and the rate limiter.
  const breaker = guardRedis(client, {
    onChange: (open) => {
      if (open) fastify.log.warn('redis does not answer (commands time out): counted as down, each user takes its fallback')
      else fastify.log.info('redis answers again')
    }
  })
  const redisAvailable = (): boolean => client.status === 'ready' && !breaker.open
  fastify.decorate('redisAvailable', redisAvailable)
  // (@fastify/redis types its client as one node; a Cluster answers the same commands.)
  await fastify.register(fastifyRedis, { client: client as Redis, closeClient: false })
  fastify.addHook('onClose', async () => {
    breaker.close()
    await client.quit().catch(() => { client.disconnect() })
  })
  fastify.serviceMetrics.gauge('redis_up', 'Whether Redis answers (1) or not (0): connected and not counted as down', () => (redisAvailable() ? 1 : 0))
}, { name: 'redis', fastify: '5.x', dependencies: ['config', 'metrics'] })
