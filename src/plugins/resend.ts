import fp from 'fastify-plugin'
import { createJsonPathPool } from '../lib/json-path-pool.js'
import { createRelay, type Relay } from '../lib/relay.js'
import { parseAllowList, type Resolver } from '../lib/upstream-policy.js'

declare module 'fastify' {
  interface FastifyInstance {
    relay: Relay
  }
}

export interface ResendPluginOptions {
  /** Replaces DNS for the destination check (tests: names that resolve to private addresses, without DNS). */
  resolver?: Resolver
}

/** The relay of POST /resend: its allow-list, limits and counters. */
export default fp<ResendPluginOptions>(async function resend (fastify, opts) {
  const { config, log } = fastify
  // A worker's heap: room for a body at its largest, parsed, and the nodes an expression walks.
  const jsonPath = createJsonPathPool({
    workers: config.JSONPATH_WORKERS,
    timeoutMs: config.JSONPATH_TIMEOUT_MS,
    memoryMb: 128 + 32 * Math.ceil(config.BODY_LIMIT_BYTES / 1048576),
    maxQueue: 64 * config.JSONPATH_WORKERS,
    maxDepth: config.BODY_MAX_DEPTH,
    /* c8 ignore next - see json-path-pool.ts: a safety net */
    onWorkerError: (err) => { log.warn({ err: { message: err.message } }, 'a JSONPath worker failed outside a request') }
  })
  const relay = createRelay({
    jsonPath,
    allowList: parseAllowList('RESEND_ALLOWED_HOSTS', config.RESEND_ALLOWED_HOSTS),
    timeoutMs: config.RESEND_TIMEOUT_MS,
    maxResponseBytes: config.RESEND_MAX_RESPONSE_BYTES,
    maxDepth: config.BODY_MAX_DEPTH,
    resolver: opts.resolver,
    onOutcome: fastify.serviceMetrics.resend,
    onRefusedAddress: (trace) => { log.warn({ destination: trace.destination, method: trace.upstream_method }, 'resend refused: destination resolves to a non-public address') }
  })
  log.info({ upstream: 'resend', allowed_hosts: config.RESEND_ALLOWED_HOSTS }, 'upstream configured')
  fastify.decorate('relay', relay)
  fastify.addHook('onClose', async () => {
    await relay.close()
    await jsonPath.close()
  })
}, { name: 'resend', fastify: '5.x', dependencies: ['config', 'metrics'] })
