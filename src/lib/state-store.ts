import type { Redis } from 'ioredis'
import { LRUCache } from 'lru-cache'
import { ServiceError } from './errors.js'

export interface OAuthStateRecord {
  verifier: string
  /** Unix time in milliseconds. */
  createdAt: number
}

/** Where PKCE verifiers wait between the authorize link and the code exchange. */
export interface StateStore {
  readonly kind: 'memory' | 'redis'
  save (state: string, record: OAuthStateRecord): Promise<void>
  /** Removes and returns the record in one step: a state is used at most once, even by concurrent requests. */
  take (state: string): Promise<OAuthStateRecord | undefined>
  /** Whether the store answers now (for /ready). */
  isAvailable (): Promise<boolean>
  close (): Promise<void>
}

export interface MemoryStateStoreOptions {
  maxEntries: number
  /** How long a record is kept; a little longer than the state's validity, so a late user hears "expired". */
  retentionMs: number
  sweepIntervalMs?: number
}

/** One process's store: bounded (the oldest go first), swept on a timer that never keeps the process alive. */
export function createMemoryStateStore ({ maxEntries, retentionMs, sweepIntervalMs = 60_000 }: MemoryStateStoreOptions): StateStore & { readonly size: number } {
  const records = new LRUCache<string, OAuthStateRecord>({ max: maxEntries, ttl: retentionMs })
  const sweeper = setInterval(() => { records.purgeStale() }, sweepIntervalMs)
  sweeper.unref()
  return {
    kind: 'memory',
    get size () { return records.size },
    async save (state, record) { records.set(state, record) },
    async take (state) {
      // get and delete run without yielding, so no other request can take the same state in between.
      const record = records.get(state)
      records.delete(state)
      return record
    },
    async isAvailable () { return true },
    async close () { clearInterval(sweeper) }
  }
}

const KEY_PREFIX = 'oauth:state:'

function unavailable (err: unknown): ServiceError {
  return new ServiceError('STATE_STORE_UNAVAILABLE', {}, { cause: err })
}

function parseRecord (text: string | null): OAuthStateRecord | undefined {
  if (text === null) return undefined
  try {
    const value = JSON.parse(text) as Partial<OAuthStateRecord>
    return typeof value.verifier === 'string' && typeof value.createdAt === 'number' ? { verifier: value.verifier, createdAt: value.createdAt } : undefined
  } catch {
    return undefined
  }
}

/** Shared by every instance: SET with a TTL, and GETDEL, which is atomic on the server. */
export function createRedisStateStore (redis: Redis, { retentionMs }: { retentionMs: number }): StateStore {
  return {
    kind: 'redis',
    async save (state, record) {
      try {
        await redis.set(KEY_PREFIX + state, JSON.stringify(record), 'PX', retentionMs)
      } catch (err) {
        throw unavailable(err)
      }
    },
    async take (state) {
      let text: string | null
      try {
        text = await redis.getdel(KEY_PREFIX + state)
      } catch (err) {
        throw unavailable(err)
      }
      return parseRecord(text)
    },
    async isAvailable () {
      if (redis.status !== 'ready') return false
      return await redis.ping().then((answer) => answer === 'PONG', () => false)
    },
    // The client belongs to @fastify/redis, which closes it.
    async close () {}
  }
}
