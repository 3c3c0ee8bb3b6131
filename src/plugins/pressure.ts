import underPressure, { type FastifyUnderPressureOptions } from '@fastify/under-pressure'
import fp from 'fastify-plugin'
import { ServiceError } from '../lib/http/index.js'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** under-pressure reads it per route; a handler that returns nothing lets the request through. */
    pressureHandler?: FastifyUnderPressureOptions['pressureHandler']
  }
}

const SAMPLE_MS = 250
/** Event-loop lag must stay over the limit this many samples in a row (one second) before requests are shed. */
export const SUSTAINED_SAMPLES = 4

/**
 * Load shedding: when the event loop lags or memory is over its limit, answer 503 at once instead of queueing
 * without bound. Lag sheds only after PRESSURE_WARMUP_MS from start (start-up work lags too) and only once it has
 * lasted a second: one slow sample on a busy host is not an overloaded instance. Probes and scrapes opt out with
 * `config.pressureHandler`, so a busy instance is not killed.
 */
export default fp(async function pressure (fastify) {
  const { config } = fastify
  const startedAt = performance.now()
  let samplesOver = 0
  const sampler = setInterval(() => {
    samplesOver = fastify.memoryUsage().eventLoopDelay > config.PRESSURE_MAX_EVENT_LOOP_DELAY_MS ? samplesOver + 1 : 0
  }, SAMPLE_MS)
  sampler.unref()
  fastify.addHook('onClose', (_instance, done) => { clearInterval(sampler); done() })
  const lagSustained = (): boolean => samplesOver >= SUSTAINED_SAMPLES && performance.now() - startedAt >= config.PRESSURE_WARMUP_MS

  await fastify.register(underPressure, {
    maxEventLoopDelay: config.PRESSURE_MAX_EVENT_LOOP_DELAY_MS,
    maxHeapUsedBytes: config.PRESSURE_MAX_HEAP_USED_BYTES,
    maxRssBytes: config.PRESSURE_MAX_RSS_BYTES,
    sampleInterval: SAMPLE_MS,
    pressureHandler: async (_request, reply, type) => {
      if (type === 'eventLoopDelay' && !lagSustained()) return
      void reply.header('retry-after', '5')
      throw new ServiceError('SERVICE_UNAVAILABLE', { reason: type })
    }
  })
}, { name: 'pressure', fastify: '5.x', dependencies: ['config'] })

/** Route config for probes and scrapes: never shed. */
export const NEVER_SHED = { pressureHandler: (): undefined => undefined }
