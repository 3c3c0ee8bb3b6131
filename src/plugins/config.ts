import fp from 'fastify-plugin'
import type { BrokerSetup } from '../lib/coze/index.js'
import type { Config } from '../schemas/config.js'
import type { FeishuAppSetup } from '../schemas/feishu.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    /** The apps and callers in broker mode; null in single-app mode. */
    brokerSetup: BrokerSetup | null
    /** The Feishu apps whose tenant tokens the relay fetches. */
    feishuApps: FeishuAppSetup[]
  }
}

export interface ConfigOptions {
  /** Loaded and validated by loadConfig (src/schemas/config.ts). */
  config: Config
  /** The apps and callers, in broker mode (COZE_APPS_FILE or COZE_APPS); null otherwise. */
  broker: BrokerSetup | null
  /** FEISHU_APPS_FILE, FEISHU_APPS or feishu_apps of the apps document, their secrets read. */
  feishuApps: FeishuAppSetup[]
  /** Said once, at start. */
  warnings: string[]
}

/** Decorates the configuration loadConfig validated, sets the log level, and says its warnings. */
export default fp<ConfigOptions>(async function config (fastify, opts) {
  fastify.decorate('config', opts.config)
  fastify.decorate('brokerSetup', opts.broker)
  fastify.decorate('feishuApps', opts.feishuApps)
  fastify.log.level = opts.config.LOG_LEVEL
  for (const warning of opts.warnings) fastify.log.warn(warning)
}, { name: 'config', fastify: '5.x' })
