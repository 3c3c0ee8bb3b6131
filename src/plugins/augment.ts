import fp from 'fastify-plugin'
import { type AugmentSignIn, createAugmentSignIn } from '../lib/augment/index.js'
import { parseAllowList, type Resolver } from '../lib/http/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    augment: AugmentSignIn
  }
}

export interface AugmentPluginOptions {
  resolver?: Resolver
}

/** The Augment sign-in: its tenant policy, its state store, its counters. */
export default fp<AugmentPluginOptions>(async function augment (fastify, opts) {
  const { config } = fastify
  const signIn = createAugmentSignIn({
    authorizeUrl: config.AUGMENT_AUTH_URL,
    clientId: config.AUGMENT_CLIENT_ID,
    tenantHosts: parseAllowList('AUGMENT_TENANT_HOSTS', config.AUGMENT_TENANT_HOSTS),
    timeoutMs: config.AUGMENT_TIMEOUT_MS,
    store: fastify.stateStore,
    resolver: opts.resolver,
    onStateIssued: fastify.serviceMetrics.oauthStateIssued,
    onCompletion: fastify.serviceMetrics.oauthCompletion
  })
  fastify.log.info({ upstream: 'augment', auth_url: config.AUGMENT_AUTH_URL, tenant_hosts: config.AUGMENT_TENANT_HOSTS }, 'upstream configured')
  fastify.decorate('augment', signIn)
  fastify.addHook('onClose', async () => { await signIn.close() })
}, { name: 'augment', fastify: '5.x', dependencies: ['config', 'state-store', 'metrics'] })
