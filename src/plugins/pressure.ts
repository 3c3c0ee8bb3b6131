import underPressure, { type FastifyUnderPressureOptions } from '@fastify/under-pressure'
import fp from 'fastify-plugin'
import { ServiceError } from '../lib/errors.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** under-pressure reads it per route; a handler that returns nothing lets the request through. */
    pressureHandler?: FastifyUnderPressureOptions['pressureHandler']
  }
}

/**
 * Load shedding: when the event loop lags or memory is over its limit, answer 503 at once instead of queueing
 * without bound. Probes and scrapes opt out with `config.pressureHandler`, so a busy instance is not killed.
 */
export default fp(async function pressure (fastify) {
  const { config } = fastify
  await fastify.register(underPressure, {
    maxEventLoopDelay: config.PRESSURE_MAX_EVENT_LOOP_DELAY_MS,
    maxHeapUsedBytes: config.PRESSURE_MAX_HEAP_USED_BYTES,
    maxRssBytes: config.PRESSURE_MAX_RSS_BYTES,
    sampleInterval: 250,
    pressureHandler: async (_request, reply, type) => {
      void reply.header('retry-after', '5')
      throw new ServiceError('SERVICE_UNAVAILABLE', { reason: type })
    }
  })
}, { name: 'pressure', fastify: '5.x', dependencies: ['config'] })

/** Route config for probes and scrapes: never shed. */
export const NEVER_SHED = { pressureHandler: (): undefined => undefined }
