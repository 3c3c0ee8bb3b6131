import { Agent } from 'undici'
import { exchangeJson, ServiceError } from '../http/index.js'
import type { TokenStore } from '../coze/index.js'

/** A Feishu app whose tenant_access_token the service fetches (FEISHU_APPS_FILE, FEISHU_APPS or feishu_apps). */
export interface FeishuApp {
  name: string
  appId: string
  secret: string
  /** The Open Platform's origin: https://open.feishu.cn, https://open.larksuite.com, or a stand-in. */
  base: URL
}

/** A tenant_access_token and when it stops being valid (Unix seconds). */
export interface FeishuToken {
  value: string
  expiresAt: number
}

export interface FeishuTokens {
  has (app: string): boolean
  /** Whether an origin is one of the apps' bases (its answers speak Feishu's body codes). */
  isFeishuOrigin (origin: string): boolean
  /** Refuses (403 `feishu_app`) an origin that is not the app's base: its token goes there and nowhere else. */
  checkOrigin (app: string, origin: string): void
  /**
   * A token valid for three minutes more, as the official SDKs keep it, for a request to `origin`, which must be
   * the app's base (checked here, where the token is handed out). With `refused`, the token an answer refused: a
   * newer one, fetched once for every attempt that met the same refusal, in every instance.
   */
  token (app: string, origin: string, refused?: FeishuToken): Promise<FeishuToken>
  close (): Promise<void>
}

export interface FeishuTokensOptions {
  apps: FeishuApp[]
  /** The token cache: memory, or Redis (one fetch for every instance, sealed at rest). */
  store: TokenStore
  timeoutMs: number
  /** Told of every fetch: `ok`, `feishu_<code>` when Feishu refused with a code, or the error code in lower case. */
  onFetch?: (app: string, outcome: string) => void
  /** Told when Feishu refuses an app's own settings (its id or secret): waiting will not mend it. */
  onSettingsRefused?: (app: string, code: number, msg: string | undefined) => void
}

// Feishu's own advice, as the SDKs follow it: refresh three minutes before the end.
const EARLY_SECONDS = 180
/** Answers that say the token the service attached is not (or no longer) valid: refresh once and repeat. */
export const FEISHU_TOKEN_REFUSED = new Set([99991663, 99991664, 99991671])
const ENDPOINT = '/open-apis/auth/v3/tenant_access_token/internal'
// Feishu's older APIs say "over the rate limit" as HTTP 400 with this body code.
export const FEISHU_RATE_LIMITED = 99991400

/** The Feishu body code of an answer, when it is a JSON object with a numeric `code`. */
export function feishuCode (body: unknown): number | undefined {
  const code = (body as { code?: unknown } | null)?.code
  return typeof body === 'object' && typeof code === 'number' ? code : undefined
}

/**
 * Whether the token endpoint's code says the app's own settings are wrong: Feishu's 100xx codes (10003 an app id
 * it does not know, 10014 a wrong app secret, an app disabled). Its internal errors (1xxx) and rate limit heal.
 */
export function isFeishuConfigurationCode (code: unknown): boolean {
  return typeof code === 'number' && code >= 10000 && code < 20000
}

export const FEISHU_ORIGINS = new Set(['https://open.feishu.cn', 'https://open.larksuite.com'])

// Feishu's Bitable record creation takes a client_token (a UUID v4) that makes a repeat of it a no-op.
const BITABLE_CREATE = /^\/open-apis\/bitable\/v1\/apps\/[^/]+\/tables\/[^/]+\/records(\/batch_create)?\/?$/

/** The URL with `client_token` added, for Bitable record creation without one; any other URL as it is. */
export function withClientToken (url: URL, method: string, clientToken: string): URL {
  if (method !== 'POST' || !BITABLE_CREATE.test(url.pathname) || url.searchParams.has('client_token')) return url
  const out = new URL(url)
  out.searchParams.set('client_token', clientToken)
  return out
}


/** Tenant tokens of the configured Feishu apps, fetched from /auth/v3/tenant_access_token/internal and cached. */
export function createFeishuTokens (options: FeishuTokensOptions): FeishuTokens {
  const apps = new Map(options.apps.map((app) => [app.name, app]))
  const origins = new Set(options.apps.map((app) => app.base.origin))
  // The bases are the operator's, not a caller's: no destination policy, but the same deadline and size bounds.
  const agent = new Agent({ connections: 8, headersTimeout: options.timeoutMs, bodyTimeout: options.timeoutMs })

  async function fetchToken (app: FeishuApp): Promise<{ token: { access_token: string, expires_in: number, token_type: string } }> {
    const answer = await exchangeJson(agent, new URL(ENDPOINT, app.base), { app_id: app.appId, app_secret: app.secret }, {
      timeoutMs: options.timeoutMs,
      maxResponseBytes: 65536,
      tooLarge: () => new ServiceError('FEISHU_TOKEN_FAILED', { app: app.name, reason: 'the answer is too large' })
    }).catch((err: ServiceError) => {
      // exchangeJson maps every failure to a ServiceError.
      options.onFetch?.(app.name, err.code.toLowerCase())
      throw err
    })
    const { code, msg, tenant_access_token: value, expire } = answer.body
    if (answer.status !== 200 || code !== 0 || typeof value !== 'string' || value === '' || typeof expire !== 'number') {
      options.onFetch?.(app.name, typeof code === 'number' && code !== 0 ? `feishu_${code}` : 'feishu_token_failed')
      if (isFeishuConfigurationCode(code)) options.onSettingsRefused?.(app.name, code as number, typeof msg === 'string' ? msg.slice(0, 200) : undefined)
      // Feishu's code and message say what is wrong (a wrong secret, a disabled app); neither holds a secret.
      throw new ServiceError('FEISHU_TOKEN_FAILED', { app: app.name, status: answer.status, ...(typeof code === 'number' ? { feishu_code: code } : {}), ...(typeof msg === 'string' ? { feishu_msg: msg.slice(0, 200) } : {}) })
    }
    options.onFetch?.(app.name, 'ok')
    return { token: { access_token: value, expires_in: Math.floor(Date.now() / 1000) + expire, token_type: 'Bearer' } }
  }

  function checkOrigin (name: string, origin: string): void {
    const app = apps.get(name) as FeishuApp
    if (origin !== app.base.origin) {
      throw new ServiceError('FORBIDDEN', { reason: 'feishu_app', base: app.base.origin, detail: `the token of the Feishu app ${name} goes only to its base, ${app.base.origin}` })
    }
  }

  return {
    has: (name) => apps.has(name),
    isFeishuOrigin: (origin) => origins.has(origin),
    checkOrigin,
    async token (name, origin, refused) {
      checkOrigin(name, origin)
      const app = apps.get(name) as FeishuApp
      // A refused token is never handed out again: every attempt that met the same refusal takes the one new
      // token, and none fetches again.
      const { token } = await options.store.obtain(`feishu ${app.appId} ${app.base.origin}`, EARLY_SECONDS, async () => await fetchToken(app), undefined, refused?.value)
      return { value: token.access_token, expiresAt: token.expires_in }
    },
    async close () {
      await agent.close()
    }
  }
}
