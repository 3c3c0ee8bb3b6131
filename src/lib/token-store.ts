import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
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

/** How a token request was served: from the cache, by its own exchange, by one another request made, or uncached. */
export type StoreOutcome = 'hit' | 'miss' | 'shared' | 'off'

/**
 * How long a single-app token may be handed out again: a tenth of its lifetime, at most COZE_TOKEN_REUSE_SECONDS
 * (the window the original service had; the broker reuses by remaining validity instead).
 */
export function reuseMillis (reuseSeconds: number, durationSeconds: number): number {
  return Math.floor(Math.min(reuseSeconds, durationSeconds / 10) * 1000)
}

/**
 * The broker's token cache. A token is handed out again only for the same key, and only while it stays valid for
 * the asked number of seconds (Coze's expires_in is an absolute time); otherwise one exchange is made for every
 * caller waiting on that key.
 */
export interface TokenStore {
  /**
   * `reuseMs`, when given, caps how long a new token is kept (single-app mode's reuse window); under a millisecond
   * nothing is cached or shared, and the exchange still counts against the bound on exchanges in flight.
   */
  obtain (key: string, minValiditySeconds: number, exchange: () => Promise<CozeExchange>, reuseMs?: number): Promise<CozeExchange & { outcome: StoreOutcome }>
  /** `ok`, or `degraded` while a shared store cannot reach Redis and each instance caches on its own. */
  status (): 'ok' | 'degraded'
}

const secondsLeft = (token: CozeToken): number => token.expires_in - Date.now() / 1000

export interface MemoryTokenStoreOptions {
  maxEntries?: number
  /** Exchanges waiting for Coze at once; one more is refused with 503 rather than queued. */
  maxPending: number
}

/** One instance's cache: finished tokens in a bounded LRU, exchanges in flight apart (never evicted) and bounded. */
export function createMemoryTokenStore ({ maxEntries = 10_000, maxPending }: MemoryTokenStoreOptions): TokenStore & { readonly size: number, readonly inFlight: number } {
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
    get inFlight () { return inFlight },
    status: () => 'ok',
    async obtain (key, minValiditySeconds, exchange, reuseMs) {
      if (reuseMs !== undefined && reuseMs < 1) return { ...await bounded(exchange), outcome: 'off' }
      const cached = tokens.get(key)
      if (cached !== undefined && secondsLeft(cached) >= minValiditySeconds) return { token: cached, outcome: 'hit' }
      const joined = pending.get(key)
      if (joined !== undefined) return { ...await joined, outcome: 'shared' }
      const exchanging = bounded(exchange)
        .then((done) => {
          const ttl = Math.min(Math.floor(secondsLeft(done.token) * 1000), reuseMs ?? Infinity)
          if (ttl > 0) tokens.set(key, done.token, { ttl })
          return done
        })
        .finally(() => { pending.delete(key) })
      pending.set(key, exchanging)
      return { ...await exchanging, outcome: 'miss' }
    }
  }
}

export interface RedisTokenStoreOptions {
  redis: Redis
  /** TOKEN_CACHE_SECRET: 32 bytes; keys for the names (HMAC) and the values (AES-256-GCM) are derived from it. */
  secret: Buffer
  /** How long an instance may hold the exchange lock; past it another takes over (the holder died). */
  lockMs: number
  pollMs?: number
  /** Used while Redis does not answer. */
  fallback: TokenStore
  /** Told when the store starts and stops falling back. */
  onDegraded?: (degraded: boolean) => void
}

const RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"

/**
 * One cache for every instance. Names are HMACs of the key (no session name or app appears in Redis) and values
 * are sealed with AES-256-GCM, bound to their name. For one key one instance exchanges, holding a lock with an
 * expiry, while the others poll for its result, and take over if the lock expires without one. Redis away:
 * each instance falls back to its own memory cache until Redis answers again.
 */
export function createRedisTokenStore (options: RedisTokenStoreOptions): TokenStore {
  const { redis, fallback, lockMs, pollMs = 25 } = options
  const nameKey = Buffer.from(hkdfSync('sha256', options.secret, Buffer.alloc(0), 'aibill token cache names', 32))
  const sealKey = Buffer.from(hkdfSync('sha256', options.secret, Buffer.alloc(0), 'aibill token cache values', 32))
  // Identical requests in one instance share one round of Redis work.
  const local = new Map<string, Promise<CozeExchange & { outcome: StoreOutcome }>>()
  let degraded = false

  const setDegraded = (value: boolean): void => {
    if (degraded !== value) options.onDegraded?.(value)
    degraded = value
  }

  function seal (id: string, token: CozeToken): string {
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', sealKey, iv)
    cipher.setAAD(Buffer.from(id))
    const body = Buffer.concat([cipher.update(JSON.stringify(token), 'utf8'), cipher.final()])
    return Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64')
  }

  function open (id: string, sealed: string | null): CozeToken | undefined {
    if (sealed === null) return undefined
    try {
      const raw = Buffer.from(sealed, 'base64')
      const decipher = createDecipheriv('aes-256-gcm', sealKey, raw.subarray(0, 12))
      decipher.setAAD(Buffer.from(id))
      decipher.setAuthTag(raw.subarray(12, 28))
      return JSON.parse(Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8')) as CozeToken
    } catch {
      // Written with another secret, or tampered with: as good as absent.
      return undefined
    }
  }

  async function obtainShared (key: string, minValiditySeconds: number, exchange: () => Promise<CozeExchange>): Promise<CozeExchange & { outcome: StoreOutcome }> {
    const id = createHmac('sha256', nameKey).update(key).digest('hex')
    const tokenKey = `token:${id}`
    const lockKey = `token-lock:${id}`
    const usable = async (): Promise<CozeToken | undefined> => {
      const token = open(id, await redis.get(tokenKey))
      return token !== undefined && secondsLeft(token) >= minValiditySeconds ? token : undefined
    }
    const cached = await usable()
    if (cached !== undefined) return { token: cached, outcome: 'hit' }
    const deadline = performance.now() + 2 * lockMs
    while (performance.now() < deadline) {
      const holder = randomBytes(12).toString('hex')
      if (await redis.set(lockKey, holder, 'PX', lockMs, 'NX') === 'OK') {
        try {
          const done = await exchange()
          const ttl = Math.floor(secondsLeft(done.token) * 1000)
          // The token is the caller's either way; sharing it is best effort.
          if (ttl > 0) await redis.set(tokenKey, seal(id, done.token), 'PX', ttl).catch(() => {})
          return { ...done, outcome: 'miss' }
        } finally {
          await redis.eval(RELEASE_LOCK, 1, lockKey, holder).catch(() => {})
        }
      }
      // Another instance is exchanging: wait for its token, or for its lock to go (done, failed or dead).
      while (performance.now() < deadline) {
        await sleep(pollMs)
        const shared = await usable()
        if (shared !== undefined) return { token: shared, outcome: 'shared' }
        if (await redis.exists(lockKey) === 0) break
      }
    }
    throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'token_cache_busy' })
  }

  return {
    status: () => (degraded || redis.status !== 'ready' ? 'degraded' : 'ok'),
    async obtain (key, minValiditySeconds, exchange) {
      if (redis.status !== 'ready') {
        setDegraded(true)
        return await fallback.obtain(key, minValiditySeconds, exchange)
      }
      const joined = local.get(key)
      if (joined !== undefined) {
        const { outcome: _outcome, ...done } = await joined
        return { ...done, outcome: 'shared' }
      }
      let exchanged = false
      const once = async (): Promise<CozeExchange> => { exchanged = true; return await exchange() }
      const running = obtainShared(key, minValiditySeconds, once)
        .then((result) => { setDegraded(false); return result })
        .catch(async (err: unknown) => {
          // A failure of Redis itself (not of Coze, nor a refusal of ours) falls back to this instance's cache.
          if (err instanceof ServiceError || exchanged) throw err
          setDegraded(true)
          return await fallback.obtain(key, minValiditySeconds, exchange)
        })
        .finally(() => { local.delete(key) })
      local.set(key, running)
      return await running
    }
  }
}
