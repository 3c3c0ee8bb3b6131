import fastifyRateLimit from '@fastify/rate-limit'
import fp from 'fastify-plugin'
import { ServiceError } from '../lib/http/index.js'

/**
 * Per client IP (TRUST_PROXY decides whether X-Forwarded-For is believed). With STATE_STORE=redis the counters
 * live in Redis, so the limit holds across instances; if Redis is away, requests pass rather than fail.
 */
export default fp(async function rateLimit (fastify) {
  const { config } = fastify
  await fastify.register(fastifyRateLimit, {
    global: true,
    max: config.RATE_LIMIT_MAX,
    timeWindow: config.RATE_LIMIT_WINDOW,
    ...(config.STATE_STORE === 'redis' ? { redis: fastify.redis, nameSpace: 'rate-limit:', skipOnError: true } : {}),
    errorResponseBuilder: (_request, context) =>
      new ServiceError('RATE_LIMITED', { limit: context.max, retry_after_seconds: Math.ceil(context.ttl / 1000) })
  })
}, { name: 'rate-limit', fastify: '5.x', dependencies: ['config', 'redis'] })
