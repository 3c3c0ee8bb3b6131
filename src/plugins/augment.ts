import fp from 'fastify-plugin'
import { ServiceError } from '../lib/errors.js'
import { createPolicyAgents } from '../lib/policy-agents.js'
import { parseJsonSafely, postJson, transportError } from '../lib/upstream.js'
import { checkDestination, isDestinationRefusal, parseAllowList, type PolicyEntry, type Resolver } from '../lib/upstream-policy.js'

declare module 'fastify' {
  interface FastifyInstance {
    augment: AugmentClient
  }
}

const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024

export interface Tenant {
  url: URL
  /** The policy entry named this exact host, so a private address is acceptable. */
  allowPrivate: boolean
}

export interface AugmentClient {
  /** The tenant as it will be contacted; TENANT_URL_NOT_ALLOWED with the reason when the policy refuses it. */
  checkTenantUrl (tenantUrl: string): Tenant
  /** Exchanges the authorization code and PKCE verifier at the tenant for an access token. */
  exchangeCode (tenant: Tenant, code: string, verifier: string): Promise<string>
  close (): Promise<void>
}

export interface AugmentClientOptions {
  clientId: string
  tenantHosts: PolicyEntry[]
  timeoutMs: number
  resolver?: Resolver | undefined
}

export function createAugmentClient (options: AugmentClientOptions): AugmentClient {
  const agents = createPolicyAgents({ timeoutMs: options.timeoutMs, resolver: options.resolver })

  return {
    checkTenantUrl (tenantUrl) {
      const decision = checkDestination(tenantUrl, options.tenantHosts)
      if (!decision.allowed) throw new ServiceError('TENANT_URL_NOT_ALLOWED', { reason: decision.reason })
      // A tenant is an origin (and path); a query or fragment has no place in it.
      if (decision.url.search !== '' || decision.url.hash !== '' || tenantUrl.includes('?') || tenantUrl.includes('#')) {
        throw new ServiceError('TENANT_URL_NOT_ALLOWED', { reason: 'query' })
      }
      return { url: decision.url, allowPrivate: decision.allowPrivate }
    },
    async exchangeCode (tenant, code, verifier) {
      const tokenUrl = new URL('token', tenant.url)
      let status: number
      let raw: Buffer
      try {
        ({ status, raw } = await postJson(agents.dispatcherFor(tenant.allowPrivate), tokenUrl,
          { grant_type: 'authorization_code', client_id: options.clientId, code_verifier: verifier, redirect_uri: '', code },
          { timeoutMs: options.timeoutMs, maxResponseBytes: MAX_TOKEN_RESPONSE_BYTES }))
      } catch (err) {
        if (isDestinationRefusal(err)) throw new ServiceError('TENANT_URL_NOT_ALLOWED', { reason: 'address' })
        if ((err as Error).name === 'ResponseTooLargeError') throw new ServiceError('TOKEN_EXCHANGE_FAILED', { reason: 'response too large' })
        throw transportError(err)
      }
      // Augment's error bodies are undocumented and may echo the request: only the status is passed on.
      if (status < 200 || status > 299) throw new ServiceError('TOKEN_EXCHANGE_FAILED', { upstream_status: status })
      const payload = parseJsonSafely(raw.toString('utf8')) as { access_token?: unknown } | undefined
      const token = payload?.access_token
      if (typeof token !== 'string' || token === '') throw new ServiceError('TOKEN_EXCHANGE_FAILED', { upstream_status: status, reason: 'no access_token' })
      return token
    },
    async close () { await agents.close() }
  }
}

export interface AugmentPluginOptions {
  resolver?: Resolver
}

export default fp<AugmentPluginOptions>(async function augment (fastify, opts) {
  const { config } = fastify
  const client = createAugmentClient({
    clientId: config.AUGMENT_CLIENT_ID,
    tenantHosts: parseAllowList('AUGMENT_TENANT_HOSTS', config.AUGMENT_TENANT_HOSTS),
    timeoutMs: config.AUGMENT_TIMEOUT_MS,
    resolver: opts.resolver
  })
  fastify.decorate('augment', client)
  fastify.addHook('onClose', async () => { await client.close() })
}, { name: 'augment', fastify: '5.x', dependencies: ['config'] })
