import { Pool, type Dispatcher } from 'undici'
import type { Signer } from './jwt.js'
import { exchangeJson, outcomeOf, ServiceError } from '../http/index.js'
import { type CozeExchange, createMemoryTokenStore, reuseMillis, type StoreOutcome } from './token-store.js'

export const JWT_BEARER_GRANT = 'urn:ietf:params:oauth:grant-type:jwt-bearer'
// Coze's answers are a few hundred bytes; anything near this is not a token answer.
const MAX_COZE_RESPONSE_BYTES = 64 * 1024

/** What a caller asks for; the client decides the issuer. */
export interface AccessTokenRequest {
  kid: string
  /** The key the caller presented, and its place in EXPECTED_COZE_API_KEY (an identity that is not the secret). */
  callerKey: string
  callerKeyIndex: number
  sessionName?: string | undefined
  durationSeconds: number
}

/** Who the JWT says is asking: the app (COZE_APP_ID), or, as the original service did, the caller's own key. */
export type Issuer = { appId: string } | { fromCallerKey: true } | null

export interface CozeClient {
  /** The variables POST /token still needs (the key, the app id); empty when it can mint. */
  readonly missing: string[]
  /** Signs a one-time JWT and exchanges it for an access token, reusing a recent one for identical requests. */
  getAccessToken (request: AccessTokenRequest): Promise<CozeExchange & { outcome: StoreOutcome }>
  /** One exchange, no cache: what the CLI and the cache use. */
  exchangeCozeToken (jwt: string, durationSeconds: number): Promise<CozeExchange>
  close (): Promise<void>
}

export interface CozeClientOptions {
  url: string
  timeoutMs: number
  signer: Signer | null
  /** null: POST /token answers NOT_CONFIGURED naming COZE_APP_ID. */
  issuer: Issuer
  audience: string
  jwtTtlSeconds: number
  reuseSeconds: number
  /** COZE_MAX_PENDING_EXCHANGES (default 1000) */
  maxPending?: number
  /** Tests and the bench may pass their own; the client closes only a pool it created. */
  dispatcher?: Dispatcher | undefined
  /** Told the outcome (`success` or the error code, lower case) and duration of every exchange. */
  onExchange?: (outcome: string, seconds: number, logid?: string) => void
  /** Told how each token request was served (hit, miss, shared, off). */
  onToken?: (outcome: StoreOutcome) => void
}

const text = (value: unknown): string | undefined =>
  typeof value === 'string' && value.length > 0 ? value.slice(0, 500) : undefined

/** Coze's OAuth endpoint says `error_code`/`error_message`; its other APIs say `code`/`msg`. */
export function describeCozeError (status: number, body: Record<string, unknown>, logid?: string): Record<string, unknown> {
  const errorCode = text(body.error_code) ?? text(body.error) ?? (typeof body.code === 'number' ? String(body.code) : undefined)
  const errorMessage = text(body.error_message) ?? text(body.msg)
  const details: Record<string, unknown> = { upstream_status: status }
  if (logid !== undefined) details.logid = logid
  if (errorCode !== undefined) details.error_code = errorCode
  if (errorMessage !== undefined) details.error_message = errorMessage
  if (errorMessage !== undefined && /\bkid\b/i.test(errorMessage)) {
    details.hint = 'public_key must be the key fingerprint shown on the Coze OAuth app page, and COZE_API_URL must be on the same site as the app (api.coze.cn or api.coze.com)'
  }
  return details
}

/** Coze's logid of a failed exchange, when Coze answered one. */
export function logidOf (err: unknown): string | undefined {
  const logid = (err as { details?: { logid?: unknown } }).details?.logid
  return typeof logid === 'string' ? logid : undefined
}

/** One exchange at a Coze token URL: the token and Coze's logid, or COZE_EXCHANGE_FAILED with what Coze said. */
export async function postCozeExchange (dispatcher: Dispatcher, url: URL, jwt: string, body: Record<string, unknown>, timeoutMs: number): Promise<CozeExchange> {
  const answer = await exchangeJson(dispatcher, url, body, {
    headers: { authorization: `Bearer ${jwt}` },
    timeoutMs,
    maxResponseBytes: MAX_COZE_RESPONSE_BYTES,
    tooLarge: () => new ServiceError('COZE_EXCHANGE_FAILED', { reason: 'response too large' })
  })
  const logid = text(answer.headers['x-tt-logid'])
  if (answer.status < 200 || answer.status > 299) throw new ServiceError('COZE_EXCHANGE_FAILED', describeCozeError(answer.status, answer.body, logid))
  const { access_token: accessToken, expires_in: expiresIn, token_type: tokenType } = answer.body
  if (typeof accessToken !== 'string' || accessToken.length === 0 || typeof expiresIn !== 'number' || !Number.isFinite(expiresIn)) {
    throw new ServiceError('COZE_EXCHANGE_FAILED', { ...describeCozeError(answer.status, answer.body, logid), reason: 'malformed response' })
  }
  const token = { access_token: accessToken, expires_in: expiresIn, token_type: typeof tokenType === 'string' && tokenType.length > 0 ? tokenType : 'Bearer' }
  return { token, logid }
}

/** Whether Coze refused the JWT's kid (not one of the app's keys): the broker then tries the app's next key. */
export function isUnknownKid (err: unknown): boolean {
  if (!(err instanceof ServiceError) || err.code !== 'COZE_EXCHANGE_FAILED') return false
  return err.details.error_code === 'invalid_client' || /\bkid\b/i.test(String(err.details.error_message))
}

/** A keep-alive pool to one Coze origin. */
export function cozePool (origin: string, timeoutMs: number): Pool {
  return new Pool(origin, {
    connections: 64,
    keepAliveTimeout: 30_000,
    connect: { timeout: Math.min(timeoutMs, 10_000) },
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs
  })
}

export function createCozeClient (options: CozeClientOptions): CozeClient {
  const url = new URL(options.url)
  const dispatcher = options.dispatcher ?? cozePool(url.origin, options.timeoutMs)
  const cache = createMemoryTokenStore({ maxEntries: 1000, maxPending: options.maxPending ?? 1000 })

  async function exchangeCozeToken (jwt: string, durationSeconds: number): Promise<CozeExchange> {
    const started = performance.now()
    const report = (outcome: string, logid?: string): void => options.onExchange?.(outcome, (performance.now() - started) / 1000, logid)
    try {
      const exchange = await exchangeOnce(jwt, durationSeconds)
      report('success', exchange.logid)
      return exchange
    } catch (err) {
      report(outcomeOf(err), logidOf(err))
      throw err
    }
  }

  async function exchangeOnce (jwt: string, durationSeconds: number): Promise<CozeExchange> {
    return await postCozeExchange(dispatcher, url, jwt, { grant_type: JWT_BEARER_GRANT, duration_seconds: durationSeconds }, options.timeoutMs)
  }

  const { signer, issuer } = options
  return {
    missing: [...(signer === null ? ['JWT_PRIVATE_KEY'] : []), ...(issuer === null ? ['COZE_APP_ID'] : [])],
    exchangeCozeToken,
    async getAccessToken (request) {
      if (signer === null) throw new ServiceError('NOT_CONFIGURED', { missing: 'JWT_PRIVATE_KEY' })
      if (issuer === null) throw new ServiceError('NOT_CONFIGURED', { missing: 'COZE_APP_ID' })
      const fromApp = 'appId' in issuer
      const iss = fromApp ? issuer.appId : request.callerKey
      // The cache knows the issuer by a name that is never the caller's key.
      const key = JSON.stringify([request.kid, fromApp ? `app:${iss}` : `key-${request.callerKeyIndex}`, request.sessionName ?? null, request.durationSeconds])
      const result = await cache.obtain(key, 0, async () => {
        const jwt = await signer.signCozeJwt({ kid: request.kid, iss, aud: options.audience, ttlSeconds: options.jwtTtlSeconds, sessionName: request.sessionName })
        return await exchangeCozeToken(jwt, request.durationSeconds)
      }, reuseMillis(options.reuseSeconds, request.durationSeconds))
      options.onToken?.(result.outcome)
      return result
    },
    async close () {
      if (options.dispatcher === undefined) await dispatcher.close()
    }
  }
}
