import { randomUUID } from 'node:crypto'
import { checkDestination, createPolicyAgents, exchangeJson, outcomeOf, type PolicyEntry, type Resolver, ServiceError } from '../http/index.js'
import { buildAuthorizeUrl, createOAuthState, createPkcePair } from './pkce.js'
import type { StateStore } from './state-store.js'

const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024

export interface Tenant {
  url: URL
  /** The policy entry named this exact host, so a private address is acceptable. */
  allowPrivate: boolean
}

export interface CompletedSignIn {
  token: string
  tenant: Tenant
  /** An id for this issuance (UUID v4), for logs and the caller's records. */
  id: string
  createdAt: string
}

export interface AugmentSignIn {
  /** A new authorize link with its PKCE challenge; the verifier waits in the store under the state. */
  start (): Promise<{ authorizeUrl: string, state: string }>
  /**
   * Checks the tenant (before the state is touched, so a refused tenant leaves it usable), takes the state once,
   * and exchanges the code and the verifier at the tenant for an access token.
   */
  complete (input: { code: string, state: string, tenantUrl: string }): Promise<CompletedSignIn>
  close (): Promise<void>
}

export interface AugmentSignInOptions {
  authorizeUrl: string
  clientId: string
  tenantHosts: PolicyEntry[]
  timeoutMs: number
  store: StateStore
  resolver?: Resolver | undefined
  onStateIssued?: () => void
  /** Told how each completion ended: `success` or the error code, lower case. */
  onCompletion?: (outcome: string) => void
}

/** Augment Code's OAuth sign-in with PKCE, as Augment's own clients do it. */
export function createAugmentSignIn (options: AugmentSignInOptions): AugmentSignIn {
  const agents = createPolicyAgents({ timeoutMs: options.timeoutMs, resolver: options.resolver })

  function checkTenantUrl (tenantUrl: string): Tenant {
    const decision = checkDestination(tenantUrl, options.tenantHosts)
    if (!decision.allowed) throw new ServiceError('TENANT_URL_NOT_ALLOWED', { reason: decision.reason })
    // A tenant is an origin (and path); a query or fragment has no place in it.
    if (decision.url.search !== '' || decision.url.hash !== '' || tenantUrl.includes('?') || tenantUrl.includes('#')) {
      throw new ServiceError('TENANT_URL_NOT_ALLOWED', { reason: 'query' })
    }
    return { url: decision.url, allowPrivate: decision.allowPrivate }
  }

  async function exchangeCode (tenant: Tenant, code: string, verifier: string): Promise<string> {
    const { status, body } = await exchangeJson(agents.dispatcherFor(tenant.allowPrivate), new URL('token', tenant.url),
      { grant_type: 'authorization_code', client_id: options.clientId, code_verifier: verifier, redirect_uri: '', code },
      {
        timeoutMs: options.timeoutMs,
        maxResponseBytes: MAX_TOKEN_RESPONSE_BYTES,
        tooLarge: () => new ServiceError('TOKEN_EXCHANGE_FAILED', { reason: 'response too large' }),
        refused: () => new ServiceError('TENANT_URL_NOT_ALLOWED', { reason: 'address' })
      })
    // Augment's error bodies are undocumented and may echo the request: only the status is passed on.
    if (status < 200 || status > 299) throw new ServiceError('TOKEN_EXCHANGE_FAILED', { upstream_status: status })
    if (typeof body.access_token !== 'string' || body.access_token === '') throw new ServiceError('TOKEN_EXCHANGE_FAILED', { upstream_status: status, reason: 'no access_token' })
    return body.access_token
  }

  return {
    async start () {
      const { verifier, challenge } = createPkcePair()
      const state = createOAuthState()
      await options.store.save(state, { verifier, createdAt: Date.now() })
      options.onStateIssued?.()
      return { authorizeUrl: buildAuthorizeUrl(options.authorizeUrl, { challenge, clientId: options.clientId, state }), state }
    },
    async complete ({ code, state, tenantUrl }) {
      const tenant = checkTenantUrl(tenantUrl)
      try {
        const taken = await options.store.take(state)
        if (taken === undefined) throw new ServiceError('OAUTH_STATE_NOT_FOUND')
        if (taken === 'expired') throw new ServiceError('OAUTH_STATE_EXPIRED')
        const token = await exchangeCode(tenant, code, taken.verifier)
        options.onCompletion?.('success')
        return { token, tenant, id: randomUUID(), createdAt: new Date().toISOString() }
      } catch (err) {
        options.onCompletion?.(outcomeOf(err))
        throw err
      }
    },
    async close () { await agents.close() }
  }
}
