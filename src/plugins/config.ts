import fastifyEnv from '@fastify/env'
import envSchema from 'env-schema'
import fp from 'fastify-plugin'
import { ConfigSchema, type Config } from '../schemas/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export interface ConfigOptions {
  /** Values that win over the environment (tests pass their whole configuration here). */
  data?: Partial<Record<keyof Config, unknown>>
  /** Read process.env and `.env`; tests turn this off so a developer's environment cannot leak in. */
  readEnvironment?: boolean
}

/** Loads and validates the configuration once, at start; an invalid value stops the start naming the variable. */
export default fp<ConfigOptions>(async function config (fastify, opts) {
  const readEnvironment = opts.readEnvironment ?? true
  await fastify.register(fastifyEnv, {
    confKey: 'config',
    schema: ConfigSchema,
    data: opts.data ?? {},
    env: readEnvironment,
    dotenv: readEnvironment
  })
  fastify.log.level = fastify.config.LOG_LEVEL
  if (fastify.config.TRUST_PROXY === 'true') {
    fastify.log.warn('TRUST_PROXY=true believes the leftmost X-Forwarded-For entry, which any client can write: rate limits can be dodged. Use the balancer\'s CIDR or a hop count (TRUST_PROXY=1).')
  }
}, { name: 'config', fastify: '5.x' })

/**
 * Reads and validates the environment (and `.env`) once, for what must be known before the server exists
 * (trustProxy, the log level); the plugin then receives the same values as data.
 */
export function loadConfig (): Config {
  return envSchema<Config>({ schema: structuredClone(ConfigSchema), dotenv: true })
}
