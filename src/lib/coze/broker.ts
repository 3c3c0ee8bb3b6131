import { RE2JS } from 're2js'
import type { Dispatcher } from 'undici'
import { matchKeyDigest, outcomeOf, ServiceError } from '../http/index.js'
import { cozePool, isUnknownKid, JWT_BEARER_GRANT, logidOf, postCozeExchange } from './client.js'
import type { Signer } from './jwt.js'
import type { CozeToken, StoreOutcome, TokenStore } from './token-store.js'

export type BrokerRoute = 'token' | 'resend' | 'augment'

export interface BrokerKey {
  kid: string
  signer: Signer
}

/** An app of the document, ready to sign for. */
export interface BrokerApp {
  name: string
  appId: string
  /** The JWT aud: the host of api_base. */
  audience: string
  /** The token URL: personal/team, account or enterprise variant. */
  tokenUrl: URL
  keys: BrokerKey[]
  defaultDuration: number
  maxDuration: number
}

export interface ScopeCeiling {
  permissions: ReadonlySet<string>
  botIds?: ReadonlySet<string> | undefined
}

/** A caller of the document: who it is, what it may ask. */
export interface BrokerCaller {
  name: string
  /** sha256 of the caller's key. */
  digest: Buffer
  apps: ReadonlySet<string>
  routes: ReadonlySet<BrokerRoute>
  sessionName?: SessionNamePattern | undefined
  scope?: ScopeCeiling | undefined
  device: boolean
  /** The Feishu apps whose tokens its relayed requests may carry. */
  feishuApps: ReadonlySet<string>
  /** Its share of RESEND_MAX_QUEUED_BYTES (max_queued_bytes); undefined: a quarter. */
  maxQueuedBytes?: number | undefined
  console: ConsoleAccess
}

/** What a caller sees in /console: nothing, its own jobs and apps, or everything. */
export type ConsoleAccess = false | 'own' | 'admin'

export interface Scope {
  account_permission: { permission_list: string[] }
  attribute_constraint?: { connector_bot_chat_attribute: { bot_id_list: string[] } } | undefined
}

export interface MintRequest {
  app: string
  sessionName?: string | undefined
  durationSeconds?: number | undefined
  scope?: Scope | undefined
  deviceId?: string | undefined
  customConsumer?: string | undefined
  /** Default: 60, or the most the duration allows when that is less. */
  minValiditySeconds?: number | undefined
}

export const DEFAULT_MIN_VALIDITY_SECONDS = 60

export interface Minted {
  token: CozeToken
  app: string
  kid: string
  outcome: StoreOutcome
  logid?: string | undefined
}

export interface BrokerEvents {
  /** Every mint or reuse, and every failure: by app and caller. */
  onToken?: (app: string, caller: string, outcome: StoreOutcome | string, logid?: string) => void
  /** A cached token was valid, but not for the min_validity_seconds asked: a new one was made. */
  onForcedExchange?: (app: string, caller: string) => void
  /** Coze did not know the signing key, and the next one was tried. */
  onFailover?: (app: string, fromKid: string, toKid: string) => void
  /** Every exchange at Coze, as the single-app client reports it. */
  onExchange?: (outcome: string, seconds: number) => void
}

export interface BrokerOptions extends BrokerEvents {
  apps: BrokerApp[]
  callers: BrokerCaller[]
  store: TokenStore
  timeoutMs: number
  jwtTtlSeconds: number
  /** Tests and the bench may pass one dispatcher for every Coze origin. */
  dispatcher?: Dispatcher | undefined
}

export interface Broker {
  /** The caller whose key this is, compared in constant time against every caller; null for none. */
  authenticate (presented: string | undefined): BrokerCaller | null
  /** 403 FORBIDDEN (reason `route`) unless the caller's routes include this one. */
  authorizeRoute (caller: BrokerCaller, route: BrokerRoute): void
  /** Checks what the caller asks against what it may ask, then hands out a cached token or mints one. */
  mint (caller: BrokerCaller, request: MintRequest): Promise<Minted>
  close (): Promise<void>
}

const forbidden = (reason: 'app' | 'route' | 'session_name' | 'scope' | 'device', detail?: string): ServiceError =>
  new ServiceError('FORBIDDEN', detail === undefined ? { reason } : { reason, detail })

function checkScope (ceiling: ScopeCeiling | undefined, scope: Scope | undefined): void {
  if (ceiling === undefined) {
    if (scope !== undefined) throw forbidden('scope')
    return
  }
  // A caller with a ceiling asks within it, every time: a token without a scope would have none.
  if (scope === undefined) throw forbidden('scope', 'this caller must send a scope within its ceiling')
  if (!scope.account_permission.permission_list.every((permission) => ceiling.permissions.has(permission))) throw forbidden('scope')
  if (ceiling.botIds === undefined) return
  const bots = scope.attribute_constraint?.connector_bot_chat_attribute.bot_id_list
  if (bots === undefined) throw forbidden('scope', 'this caller may ask only for the bots it names: send scope.attribute_constraint.connector_bot_chat_attribute.bot_id_list')
  if (!bots.every((bot) => ceiling.botIds?.has(bot) === true)) throw forbidden('scope')
}

/**
 * The same request in a canonical order: what makes two requests the same token. The app is named by its id and
 * token URL too, so that deployments sharing a Redis cannot mix up apps that have the same name.
 */
function cacheKey (app: BrokerApp & { identity: string }, request: MintRequest, duration: number): string {
  const scope = request.scope === undefined
    ? null
    : [[...request.scope.account_permission.permission_list].sort(), [...request.scope.attribute_constraint?.connector_bot_chat_attribute.bot_id_list ?? []].sort()]
  return JSON.stringify([app.identity, request.sessionName ?? null, request.deviceId ?? null, request.customConsumer ?? null, scope, duration])
}

/** Many Coze apps and scoped callers behind one cache. */
export function createBroker (options: BrokerOptions): Broker {
  const callerDigests = options.callers.map((caller) => caller.digest)
  const apps = new Map(options.apps.map((app) => [app.name, { ...app, identity: `${app.name} ${app.appId} ${app.tokenUrl.href}` }]))
  const pools = new Map<string, Dispatcher>()
  const poolFor = (url: URL): Dispatcher => {
    if (options.dispatcher !== undefined) return options.dispatcher
    let pool = pools.get(url.origin)
    if (pool === undefined) {
      pool = cozePool(url.origin, options.timeoutMs)
      pools.set(url.origin, pool)
    }
    return pool
  }
  // The key that signs for each app: the first, until Coze refuses it and another is accepted.
  const signing = new Map(options.apps.map((app) => [app.name, 0]))

  async function exchangeWith (app: BrokerApp, key: BrokerKey, request: MintRequest, duration: number) {
    const sessionContext = request.deviceId !== undefined
      ? { device_info: { device_id: request.deviceId } }
      : request.customConsumer !== undefined ? { device_info: { custom_consumer: request.customConsumer } } : undefined
    const jwt = await key.signer.signCozeJwt({ kid: key.kid, iss: app.appId, aud: app.audience, ttlSeconds: options.jwtTtlSeconds, sessionName: request.sessionName, sessionContext })
    const body: Record<string, unknown> = { grant_type: JWT_BEARER_GRANT, duration_seconds: duration }
    if (request.scope !== undefined) body.scope = request.scope
    const started = performance.now()
    try {
      const exchange = await postCozeExchange(poolFor(app.tokenUrl), app.tokenUrl, jwt, body, options.timeoutMs)
      options.onExchange?.('success', (performance.now() - started) / 1000)
      return exchange
    } catch (err) {
      options.onExchange?.(outcomeOf(err), (performance.now() - started) / 1000)
      throw err
    }
  }

  return {
    authenticate (presented) {
      return options.callers[matchKeyDigest(callerDigests, presented)] ?? null
    },
    authorizeRoute (caller, route) {
      if (!caller.routes.has(route)) throw forbidden('route')
    },
    async mint (caller, request) {
      const app = apps.get(request.app)
      // An app that does not exist and one the caller may not use answer alike: app names do not leak.
      if (app === undefined || !caller.apps.has(app.name)) throw forbidden('app')
      if (caller.sessionName !== undefined && (request.sessionName === undefined || !caller.sessionName.test(request.sessionName))) throw forbidden('session_name')
      if (request.deviceId !== undefined && request.customConsumer !== undefined) {
        throw new ServiceError('VALIDATION_FAILED', { field: 'device_id', reason: 'device_id and custom_consumer: send one' })
      }
      if ((request.deviceId !== undefined || request.customConsumer !== undefined) && !caller.device) throw forbidden('device')
      checkScope(caller.scope, request.scope)
      const duration = request.durationSeconds ?? app.defaultDuration
      if (duration > app.maxDuration) throw new ServiceError('VALIDATION_FAILED', { field: 'duration_seconds', reason: `duration_seconds is at most ${app.maxDuration} for this app` })
      // Asking for nearly the whole duration would make every request an exchange and drain the app's quota.
      const maxValidity = maxMinValidity(duration)
      const minValidity = request.minValiditySeconds ?? Math.min(DEFAULT_MIN_VALIDITY_SECONDS, maxValidity)
      if (minValidity > maxValidity) {
        throw new ServiceError('VALIDATION_FAILED', { field: 'min_validity_seconds', reason: `min_validity_seconds is at most ${maxValidity} for a duration of ${duration} s (the duration less a minute)` })
      }

      try {
        const result = await options.store.obtain(cacheKey(app, request, duration), minValidity, async () => {
          const first = signing.get(app.name) as number
          const key = app.keys[first] as BrokerKey
          let exchange
          let signedBy = key.kid
          try {
            exchange = await exchangeWith(app, key, request, duration)
          } catch (err) {
            if (app.keys.length < 2 || !isUnknownKid(err)) throw err
            // Once per request: the app's next key (Coze allows three pairs while keys rotate).
            const next = (first + 1) % app.keys.length
            const nextKey = app.keys[next] as BrokerKey
            options.onFailover?.(app.name, key.kid, nextKey.kid)
            exchange = await exchangeWith(app, nextKey, request, duration)
            signing.set(app.name, next)
            signedBy = nextKey.kid
          }
          // The kid travels with the token (into the cache too), so a reuse can say which key made it.
          return { token: { ...exchange.token, kid: signedBy }, logid: exchange.logid }
        })
        options.onToken?.(app.name, caller.name, result.outcome)
        if (result.forced === true) options.onForcedExchange?.(app.name, caller.name)
        const made = result.token as CozeToken & { kid: string }
        const token = { access_token: made.access_token, expires_in: made.expires_in, token_type: made.token_type }
        return { token, app: app.name, kid: made.kid, outcome: result.outcome, logid: result.logid }
      } catch (err) {
        options.onToken?.(app.name, caller.name, outcomeOf(err), logidOf(err))
        throw err
      }
    },
    async close () {
      await Promise.all([...pools.values()].map(async (pool) => { await pool.close() }))
    }
  }
}

/**
 * The most min_validity_seconds a request may ask: its duration less a minute (half of it under two minutes), so
 * that a cached token serves every request for at least that long.
 */
export function maxMinValidity (durationSeconds: number): number {
  return durationSeconds - Math.min(60, Math.ceil(durationSeconds / 2))
}

/** The token URL of an app: personal and team apps, an enterprise organization (account), or a privileged app. */
export function brokerTokenUrl ({ apiBase, accountId, enterpriseId }: { apiBase: URL, accountId?: string | undefined, enterpriseId?: string | undefined }): URL {
  const path = accountId !== undefined
    ? `/api/permission/oauth2/account/${accountId}/token`
    : enterpriseId !== undefined ? `/api/permission/oauth2/enterprise_id/${enterpriseId}/token` : '/api/permission/oauth2/token'
  return new URL(path, apiBase)
}

/** A caller's session_name rule, matched in time linear in the name whatever the pattern (RE2's engine). */
export interface SessionNamePattern {
  test (sessionName: string): boolean
}

/**
 * Compiles a caller's pattern for RE2, which never backtracks: a pattern such as `([a-z0-9]+-?)+` costs
 * microseconds on any name instead of doubling with each character. Throws a SyntaxError naming the construct
 * RE2 does not take (back-references, look-around).
 */
export function wholeMatch (pattern: string): SessionNamePattern {
  let compiled: RE2JS
  try {
    compiled = RE2JS.compile(pattern)
  } catch (err) {
    throw new SyntaxError((err as Error).message.replace(/^error parsing regexp: /, ''))
  }
  // matches() anchors at both ends: the whole name must match.
  return { test: (sessionName) => compiled.matches(sessionName) }
}
