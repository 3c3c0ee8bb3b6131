import { LRUCache } from 'lru-cache'
import { ServiceError } from '../http/index.js'
import type { RedisClient } from '../redis/index.js'

export interface OAuthStateRecord {
  verifier: string
  /** Unix time in milliseconds. */
  createdAt: number
}

/** What taking a state found: its verifier, a state past its validity, or nothing. */
export type TakenState = { verifier: string } | 'expired' | undefined

/** Where PKCE verifiers wait between the authorize link and the code exchange; the store owns their lifetime. */
export interface StateStore {
  save (state: string, record: OAuthStateRecord): Promise<void>
  /** Removes the record in one step (a state is used at most once, even by concurrent requests) and judges its age. */
  take (state: string): Promise<TakenState>
  close (): Promise<void>
}

export interface StateLifetime {
  /** How long a state may be used (OAUTH_STATE_TTL_SECONDS). */
  validityMs: number
  /** How much longer a record is kept, so that a user who comes back late hears "expired", not "unknown". */
  graceMs?: number
}

const DEFAULT_GRACE_MS = 300_000

function judge (record: OAuthStateRecord | undefined, validityMs: number): TakenState {
  if (record === undefined) return undefined
  return Date.now() - record.createdAt > validityMs ? 'expired' : { verifier: record.verifier }
}

export interface MemoryStateStoreOptions extends StateLifetime {
  maxEntries: number
  sweepIntervalMs?: number
}

/** One process's store: bounded (the oldest go first), swept on a timer that never keeps the process alive. */
export function createMemoryStateStore ({ maxEntries, validityMs, graceMs = DEFAULT_GRACE_MS, sweepIntervalMs = 60_000 }: MemoryStateStoreOptions): StateStore & { readonly size: number } {
  const records = new LRUCache<string, OAuthStateRecord>({ max: maxEntries, ttl: validityMs + graceMs })
  const sweeper = setInterval(() => { records.purgeStale() }, sweepIntervalMs)
  sweeper.unref()
  return {
    get size () { return records.size },
    async save (state, record) { records.set(state, record) },
    async take (state) {
      // get and delete run without yielding, so no other request can take the same state in between.
      const record = records.get(state)
      records.delete(state)
      return judge(record, validityMs)
    },
    async close () { clearInterval(sweeper) }
  }
}

/** Where the states are kept in Redis (under REDIS_KEY_PREFIX). */
export const STATE_KEY_PREFIX = 'oauth:state:'
const KEY_PREFIX = STATE_KEY_PREFIX

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
export function createRedisStateStore (redis: RedisClient, { validityMs, graceMs = DEFAULT_GRACE_MS }: StateLifetime): StateStore {
  return {
    async save (state, record) {
      try {
        await redis.set(KEY_PREFIX + state, JSON.stringify(record), 'PX', validityMs + graceMs)
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
      return judge(parseRecord(text), validityMs)
    },
    // The client belongs to @fastify/redis, which closes it.
    async close () {}
  }
}
