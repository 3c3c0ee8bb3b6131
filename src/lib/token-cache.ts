import { LRUCache } from 'lru-cache'
import { ServiceError } from './errors.js'

export interface CozeToken {
  access_token: string
  expires_in: number
  token_type: string
}

/** A token with what Coze said about the exchange that made it (its x-tt-logid, for support). */
export interface CozeExchange {
  token: CozeToken
  logid?: string | undefined
}

/** What makes two token requests the same. */
export interface TokenRequest {
  kid: string
  /** Who the issuer is: never a secret (the issuer may be the caller's key; this names it by its place). */
  issuerId: string
  sessionName?: string | undefined
  durationSeconds: number
}

export type CacheOutcome = 'hit' | 'miss' | 'shared' | 'off'

export interface TokenCache {
  /** Returns a reusable token for the same request, or runs `exchange` once for every concurrent caller. */
  get (request: TokenRequest, exchange: () => Promise<CozeExchange>): Promise<CozeExchange & { outcome: CacheOutcome }>
  readonly size: number
  /** Exchanges waiting for Coze now. */
  readonly pending: number
}

export interface TokenCacheOptions {
  /** Upper bound of reuse, in seconds; 0 turns the cache (and single flight) off. */
  reuseSeconds: number
  maxEntries?: number
  /** Exchanges waiting for Coze at once, shared or not; one more is refused with 503 rather than queued. */
  maxPending?: number
}

function cacheKey ({ kid, issuerId, sessionName, durationSeconds }: TokenRequest): string {
  return JSON.stringify([kid, issuerId, sessionName ?? null, durationSeconds])
}

/** How long a token may be handed out again: a tenth of its lifetime, at most `reuseSeconds`. */
export function reuseMillis (reuseSeconds: number, durationSeconds: number): number {
  return Math.floor(Math.min(reuseSeconds, durationSeconds / 10) * 1000)
}

/**
 * Finished tokens live in a bounded LRU; exchanges still waiting for Coze live apart, in a map of promises
 * bounded by `maxPending`. So no waiting caller can be evicted by other callers: each gets the outcome of its
 * own exchange (or of the identical one it joined), and a flood past the bound is told 503 at once.
 */
export function createTokenCache ({ reuseSeconds, maxEntries = 1000, maxPending = 1000 }: TokenCacheOptions): TokenCache {
  const tokens = new LRUCache<string, CozeToken>({ max: maxEntries })
  const pending = new Map<string, Promise<CozeExchange>>()
  let inFlight = 0

  async function bounded (exchange: () => Promise<CozeExchange>): Promise<CozeExchange> {
    if (inFlight >= maxPending) throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'pending_exchanges', limit: maxPending })
    inFlight++
    try {
      return await exchange()
    } finally {
      inFlight--
    }
  }

  return {
    get size () { return tokens.size },
    get pending () { return inFlight },
    async get (request, exchange) {
      const ttl = reuseMillis(reuseSeconds, request.durationSeconds)
      if (ttl < 1) return { ...await bounded(exchange), outcome: 'off' }
      const key = cacheKey(request)
      const cached = tokens.get(key)
      if (cached !== undefined) return { token: cached, outcome: 'hit' }
      const joined = pending.get(key)
      if (joined !== undefined) return { ...await joined, outcome: 'shared' }
      const exchanging = bounded(exchange)
        .then((done) => { tokens.set(key, done.token, { ttl }); return done })
        .finally(() => { pending.delete(key) })
      pending.set(key, exchanging)
      return { ...await exchanging, outcome: 'miss' }
    }
  }
}
