import fp from 'fastify-plugin'
import type { Config } from '../schemas/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export interface ConfigOptions {
  /** Loaded and validated by loadConfig (src/schemas/config.ts). */
  config: Config
  /** Said once, at start. */
  warnings: string[]
}

/** Decorates the configuration loadConfig validated, sets the log level, and says its warnings. */
export default fp<ConfigOptions>(async function config (fastify, opts) {
  fastify.decorate('config', opts.config)
  fastify.log.level = opts.config.LOG_LEVEL
  for (const warning of opts.warnings) fastify.log.warn(warning)
}, { name: 'config', fastify: '5.x' })
