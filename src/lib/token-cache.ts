import { LRUCache } from 'lru-cache'

export interface CozeToken {
  access_token: string
  expires_in: number
  token_type: string
}

export interface TokenRequest {
  kid: string
  iss: string
  /** Who the issuer is, for the cache, when `iss` is a secret (the caller's key): never the secret itself. */
  issuerId?: string
  sessionName?: string | undefined
  durationSeconds: number
}

export type CacheOutcome = 'hit' | 'miss' | 'shared' | 'off'

export interface TokenCache {
  /** Returns a reusable token for the same request, or runs `exchange` once for every concurrent caller. */
  get (request: TokenRequest, exchange: () => Promise<CozeToken>): Promise<{ token: CozeToken, outcome: CacheOutcome }>
  readonly size: number
}

export interface TokenCacheOptions {
  /** Upper bound of reuse, in seconds; 0 turns the cache (and single flight) off. */
  reuseSeconds: number
  maxEntries?: number
}

// The issuer may be the caller's key: the cache keys it by issuerId, so no secret becomes a cache key.
function cacheKey ({ kid, iss, issuerId, sessionName, durationSeconds }: TokenRequest): string {
  return JSON.stringify([kid, issuerId ?? iss, sessionName ?? null, durationSeconds])
}

/** How long a token may be handed out again: a tenth of its lifetime, at most `reuseSeconds`. */
export function reuseMillis (reuseSeconds: number, durationSeconds: number): number {
  return Math.floor(Math.min(reuseSeconds, durationSeconds / 10) * 1000)
}

export function createTokenCache ({ reuseSeconds, maxEntries = 1000 }: TokenCacheOptions): TokenCache {
  type Context = { request: TokenRequest, exchange: () => Promise<CozeToken> }
  const cache = new LRUCache<string, CozeToken, Context>({
    max: maxEntries,
    // Set per entry below; a default is required for per-entry TTLs to be tracked.
    ttl: Math.max(1, reuseSeconds * 1000),
    fetchMethod: async (_key, _stale, { options, context }) => {
      const token = await context.exchange()
      // get() bypasses the cache when this window is under a millisecond.
      options.ttl = reuseMillis(reuseSeconds, context.request.durationSeconds)
      return token
    }
  })

  return {
    get size () { return cache.size },
    async get (request, exchange) {
      if (reuseSeconds <= 0 || reuseMillis(reuseSeconds, request.durationSeconds) < 1) {
        return { token: await exchange(), outcome: 'off' }
      }
      const key = cacheKey(request)
      // A fresh token is handed out at once; fetch() (and its promise) only when one must be made or awaited.
      const cached = cache.get(key)
      if (cached !== undefined) return { token: cached, outcome: 'hit' }
      const status: LRUCache.Status<string, CozeToken, Context> = {}
      const token = await cache.fetch(key, { context: { request, exchange }, status })
      // fetch() resolves to undefined only when aborted, which nothing here does.
      return { token: token as CozeToken, outcome: status.fetch === 'inflight' ? 'shared' : 'miss' }
    }
  }
}
