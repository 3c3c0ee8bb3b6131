import { createHmac, hkdfSync, randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { LRUCache } from 'lru-cache'
import { type ErrorCode, ServiceError } from '../http/index.js'
import { createSealer, type RedisClient } from '../redis/index.js'

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
 * A token with how it was served. `forced`: a cached token was still valid, but not for as long as this request
 * asked, so a new one was made (what min_validity_seconds costs the app's Coze quota).
 */
export type Obtained = CozeExchange & { outcome: StoreOutcome, forced?: boolean }

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
   * `refused`: a token the upstream refused; it is never handed out again, a newer one is (Feishu's tokens).
   */
  obtain (key: string, minValiditySeconds: number, exchange: () => Promise<CozeExchange>, reuseMs?: number, refused?: string): Promise<Obtained>
  /** `ok`, or `degraded` while a shared store cannot reach Redis and each instance caches on its own. */
  status (): 'ok' | 'degraded'
}

const secondsLeft = (token: CozeToken): number => token.expires_in - Date.now() / 1000
/** Whether a token serves a request: valid long enough, and not the one the request saw refused. */
const serves = (token: CozeToken, minValiditySeconds: number, refused: string | undefined): boolean => secondsLeft(token) >= minValiditySeconds && token.access_token !== refused

/**
 * The bound on exchanges waiting for Coze at once in one instance (COZE_MAX_PENDING_EXCHANGES), shared by both
 * stores: one more is refused with 503 at once rather than queued.
 */
export interface ExchangeSlots {
  readonly inFlight: number
  /** Takes a slot or throws 503 `pending_exchanges`; the returned function gives it back. */
  take (): () => void
}

export function createExchangeSlots (maxPending: number): ExchangeSlots {
  let inFlight = 0
  return {
    get inFlight () { return inFlight },
    take () {
      if (inFlight >= maxPending) throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'pending_exchanges', limit: maxPending })
      inFlight++
      let given = false
      return () => {
        if (!given) inFlight--
        given = true
      }
    }
  }
}

async function withSlot<T> (slots: ExchangeSlots, exchange: () => Promise<T>): Promise<T> {
  const give = slots.take()
  try {
    return await exchange()
  } finally {
    give()
  }
}

export interface MemoryTokenStoreOptions {
  maxEntries?: number
  /** Exchanges waiting for Coze at once; one more is refused with 503 rather than queued. */
  maxPending: number
}

export type MemoryTokenStore = TokenStore & { readonly size: number, readonly slots: ExchangeSlots }

/** One instance's cache: finished tokens in a bounded LRU, exchanges in flight apart (never evicted) and bounded. */
export function createMemoryTokenStore ({ maxEntries = 10_000, maxPending }: MemoryTokenStoreOptions): MemoryTokenStore {
  const tokens = new LRUCache<string, CozeToken>({ max: maxEntries })
  const pending = new Map<string, Promise<CozeExchange>>()
  const slots = createExchangeSlots(maxPending)
  return {
    get size () { return tokens.size },
    slots,
    status: () => 'ok',
    async obtain (key, minValiditySeconds, exchange, reuseMs, refused) {
      if (reuseMs !== undefined && reuseMs < 1) return { ...await withSlot(slots, exchange), outcome: 'off' }
      const cached = tokens.get(key)
      if (cached !== undefined && serves(cached, minValiditySeconds, refused)) return { token: cached, outcome: 'hit' }
      const forced = cached !== undefined
      const joined = pending.get(key)
      if (joined !== undefined) {
        const done = await joined
        // Joined only when it satisfies this request too; otherwise an exchange of its own.
        if (serves(done.token, minValiditySeconds, refused)) return { ...done, outcome: 'shared' }
        return { ...await withSlot(slots, exchange), outcome: 'miss', forced: true }
      }
      const exchanging = withSlot(slots, exchange)
        .then((done) => {
          const ttl = Math.min(Math.floor(secondsLeft(done.token) * 1000), reuseMs ?? Infinity)
          if (ttl > 0) tokens.set(key, done.token, { ttl })
          return done
        })
        .finally(() => { pending.delete(key) })
      pending.set(key, exchanging)
      return { ...await exchanging, outcome: 'miss', forced }
    }
  }
}

export interface RedisTokenStoreOptions {
  redis: RedisClient
  /** TOKEN_CACHE_SECRET: 32 bytes; keys for the names (HMAC) and the values (AES-256-GCM) are derived from it. */
  secret: Buffer
  /** How long an instance may hold the exchange lock; past it another takes over (the holder died). */
  lockMs: number
  pollMs?: number
  /**
   * COZE_FAILURE_SHARE_MS: how long a failed exchange is handed to the instances waiting on the same key, so that
   * they answer with it at once instead of each trying Coze in turn. 0 shares nothing.
   */
  failureShareMs?: number
  /** Used while Redis does not answer; its bound on exchanges in flight is this store's bound too. */
  fallback: MemoryTokenStore
  /** Whether Redis may be asked now (connected, and not counted as down by the breaker). */
  available?: () => boolean
  /** Told when the store starts and stops falling back. */
  onDegraded?: (degraded: boolean) => void
  /** How long a fallback on an error of Redis (one the breaker did not see) counts as degraded: 5 s. */
  degradedForMs?: number
  /** Told when a lock was found without an expiry (written by hand?) and removed. */
  onLockWithoutExpiry?: () => void
}


const RELEASE_LOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"

/** What the instances waiting on a key are told of a failed exchange: the answer, never a cause or a stack. */
interface SharedFailure { code: ErrorCode, details: Record<string, unknown> }

// Failures of Coze itself are shared; a refusal of this instance (its bound, a busy lock) is not.
const SHARED_FAILURES = new Set<ErrorCode>(['COZE_EXCHANGE_FAILED', 'UPSTREAM_UNREACHABLE', 'UPSTREAM_TIMEOUT', 'UPSTREAM_ERROR'])

/**
 * One cache for every instance. Names are HMACs of the key (no session name or app appears in Redis) and values
 * are sealed with AES-256-GCM, bound to their name. For one key one instance exchanges, holding a lock with an
 * expiry, while the others poll for its result (or its failure), and take over if the lock expires without one.
 * The bound on exchanges in flight is the memory store's, taken before the lock so the lock's clock starts when
 * the exchange does. Redis away or silent: each instance falls back to its own memory cache until Redis answers.
 */
export function createRedisTokenStore (options: RedisTokenStoreOptions): TokenStore {
  const { redis, fallback, lockMs, pollMs = 25, failureShareMs = 2000, available = () => redis.status === 'ready', degradedForMs = 5000 } = options
  const nameKey = Buffer.from(hkdfSync('sha256', options.secret, Buffer.alloc(0), 'aibill token cache names', 32))
  // Written with another secret, or tampered with: as good as absent.
  const { seal, open } = createSealer(options.secret, 'aibill token cache values')
  // Identical requests in one instance share one round of Redis work.
  const local = new Map<string, Promise<Obtained>>()
  let degraded = false
  let degradedAt = -Infinity

  const setDegraded = (value: boolean): void => {
    if (degraded !== value) options.onDegraded?.(value)
    degraded = value
    if (value) degradedAt = performance.now()
  }

  async function obtainShared (key: string, minValiditySeconds: number, exchange: () => Promise<CozeExchange>, refused: string | undefined): Promise<Obtained> {
    const id = createHmac('sha256', nameKey).update(key).digest('hex')
    // One hash tag for the three: read together (MGET), on one Redis Cluster slot; other keys spread over the slots.
    const tokenKey = `token:{${id}}`
    const lockKey = `token-lock:{${id}}`
    const failureKey = `token-failure:{${id}}`
    let forced = false
    // The token if it serves this request; a failure another instance met in the last moments is thrown.
    const look = async (): Promise<CozeToken | undefined> => {
      const [sealedToken, sealedFailure] = await redis.mget(tokenKey, failureKey)
      const token = open<CozeToken>(`token:${id}`, sealedToken)
      if (token !== undefined && serves(token, minValiditySeconds, refused)) return token
      if (token !== undefined) forced = true
      const failure = open<SharedFailure>(`failure:${id}`, sealedFailure)
      if (failure !== undefined && SHARED_FAILURES.has(failure.code)) throw new ServiceError(failure.code, { ...failure.details, shared: true })
      return undefined
    }
    const cached = await look()
    if (cached !== undefined) return { token: cached, outcome: 'hit' }
    const deadline = performance.now() + 2 * lockMs
    while (performance.now() < deadline) {
      const holder = randomBytes(12).toString('hex')
      const give = fallback.slots.take()
      const locked = await redis.set(lockKey, holder, 'PX', lockMs, 'NX').then((answer) => answer === 'OK', (err: unknown) => { give(); throw err })
      if (!locked) give()
      else {
        // The lock's release, like sharing the token or the failure, is not waited for: the answer is the caller's.
        const release = (): void => {
          give()
          redis.eval(RELEASE_LOCK, 1, lockKey, holder).catch(() => {})
        }
        // The holder before may have finished between this instance's last look and its lock: look once more.
        /* c8 ignore start - that window is met when instances race (test/reliability/relay-queue.test.ts), never on cue */
        const meanwhile = await look().catch((err: unknown) => { release(); throw err })
        if (meanwhile !== undefined) {
          release()
          return { token: meanwhile, outcome: 'shared' }
        }
        /* c8 ignore stop - the window above */
        // The result is written before the lock goes (one connection keeps the order): an instance that finds
        // the lock gone finds the result too, and does not exchange again.
        const done = await exchange().catch((err: unknown) => {
          if (failureShareMs > 0 && err instanceof ServiceError && SHARED_FAILURES.has(err.code)) {
            redis.set(failureKey, seal(`failure:${id}`, { code: err.code, details: err.details }), 'PX', failureShareMs).catch(() => {})
          }
          release()
          throw err
        })
        const ttl = Math.floor(secondsLeft(done.token) * 1000)
        if (ttl > 0) redis.set(tokenKey, seal(`token:${id}`, done.token), 'PX', ttl).catch(() => {})
        release()
        return { ...done, outcome: 'miss', forced }
      }
      // Another instance is exchanging: wait for its token or its failure, or for its lock to go (done, failed
      // or dead). A lock without an expiry was not written by an instance: it would block the key for good.
      while (performance.now() < deadline) {
        await sleep(pollMs)
        const shared = await look()
        if (shared !== undefined) return { token: shared, outcome: 'shared' }
        const lockTtl = await redis.pttl(lockKey)
        if (lockTtl === -2) break
        if (lockTtl === -1) {
          await redis.del(lockKey)
          options.onLockWithoutExpiry?.()
          break
        }
      }
    }
    throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'token_cache_busy' })
  }

  async function obtainRound (key: string, minValiditySeconds: number, exchange: () => Promise<CozeExchange>, refused: string | undefined): Promise<Obtained> {
    let exchanged = false
    const once = async (): Promise<CozeExchange> => { exchanged = true; return await exchange() }
    try {
      const result = await obtainShared(key, minValiditySeconds, once, refused)
      setDegraded(false)
      return result
    } catch (err) {
      // A failure of Redis itself (not of Coze, nor a refusal of ours) falls back to this instance's cache.
      if (err instanceof ServiceError || exchanged) throw err
      setDegraded(true)
      return await fallback.obtain(key, minValiditySeconds, exchange, undefined, refused)
    }
  }

  return {
    // From Redis's reachability (the breaker), and a fallback of the last seconds: ok within seconds of Redis
    // answering again, whether or not a request has passed since.
    status: () => (!available() || (degraded && performance.now() - degradedAt < degradedForMs) ? 'degraded' : 'ok'),
    async obtain (key, minValiditySeconds, exchange, _reuseMs, refused) {
      if (!available()) {
        setDegraded(true)
        return await fallback.obtain(key, minValiditySeconds, exchange, undefined, refused)
      }
      const joined = local.get(key)
      if (joined !== undefined) {
        const { outcome: _outcome, ...done } = await joined
        // Joined only when what it found satisfies this request too; otherwise a round of its own.
        if (serves(done.token, minValiditySeconds, refused)) return { ...done, outcome: 'shared' }
        return await obtainRound(key, minValiditySeconds, exchange, refused)
      }
      const running = obtainRound(key, minValiditySeconds, exchange, refused).finally(() => { local.delete(key) })
      local.set(key, running)
      return await running
    }
  }
}
