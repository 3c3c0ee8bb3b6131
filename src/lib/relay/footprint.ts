import type { RedisClient } from '../redis/index.js'

/**
 * The bytes queued delivery keeps in Redis, counted by every instance in one place: each job's entry holds its size
 * (the sealed request while it may be sent, the kept answer once it ended) and when it stops counting (when
 * BullMQ removes the job). Every change is one script, so that the bound holds across instances, and each call
 * first drops up to 200 entries whose time is past: the count follows the jobs Redis forgets without being told.
 */
export interface Footprint {
  /**
   * Counts `bytes` for a new job, unless the queue's total or the owner's would pass its bound: then nothing
   * changes and the answer names the bound that refused it.
   */
  reserve (id: string, owner: string, bytes: number, expiresAt: number, ownerLimit: number): Promise<'ok' | 'queue_full' | 'owner_full'>
  /** Sets a job's size and expiry, within no bound (what a job keeps once it ended was counted as it ran). */
  set (id: string, owner: string, bytes: number, expiresAt: number): Promise<void>
  /** The job's bytes no longer count (cancelled, or never stored). */
  release (id: string): Promise<void>
  /** The bytes counted now, for the metrics. */
  total (): Promise<number>
}

// KEYS: the expiries (a sorted set), the entries (id -> "bytes<TAB>owner"), the totals (owner -> bytes, "" -> all).
// ARGV: operation, now, id, owner, bytes, expiresAt, limit, ownerLimit.
const SCRIPT = `
local now = tonumber(ARGV[2])
local function drop (id)
  local entry = redis.call('HGET', KEYS[2], id)
  if entry then
    local bytes, owner = string.match(entry, '^(%d+)\\t(.*)$')
    redis.call('HINCRBY', KEYS[3], owner, -tonumber(bytes))
    redis.call('HINCRBY', KEYS[3], '', -tonumber(bytes))
    redis.call('HDEL', KEYS[2], id)
  end
  redis.call('ZREM', KEYS[1], id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 200)) do drop(id) end
local op = ARGV[1]
if op == 'total' then return tonumber(redis.call('HGET', KEYS[3], '') or '0') end
local id = ARGV[3]
if op == 'release' then drop(id) return 1 end
local owner, bytes, before = ARGV[4], tonumber(ARGV[5]), 0
local entry = redis.call('HGET', KEYS[2], id)
if entry then
  local b, o = string.match(entry, '^(%d+)\\t(.*)$')
  before, owner = tonumber(b), o
end
if op == 'reserve' then
  if tonumber(redis.call('HGET', KEYS[3], '') or '0') - before + bytes > tonumber(ARGV[7]) then return 0 end
  if tonumber(redis.call('HGET', KEYS[3], owner) or '0') - before + bytes > tonumber(ARGV[8]) then return -1 end
end
redis.call('HINCRBY', KEYS[3], owner, bytes - before)
redis.call('HINCRBY', KEYS[3], '', bytes - before)
redis.call('HSET', KEYS[2], id, bytes .. '\\t' .. owner)
redis.call('ZADD', KEYS[1], tonumber(ARGV[6]), id)
return 1
`

type WithFootprint = RedisClient & { aibillFootprint: (...args: Array<string | number>) => Promise<number> }

/**
 * The footprint's keys share one hash tag (`{<prefix>resend-bytes}`), so the script runs on one Redis Cluster slot.
 * It is sent by its SHA (EVALSHA), the text only when Redis does not know it yet.
 */
export function createFootprint (client: RedisClient, keyPrefix: string, limit: number): Footprint {
  const tag = `{${keyPrefix}resend-bytes}`
  const keys = [`${tag}:expiry`, `${tag}:entries`, `${tag}:totals`]
  client.defineCommand('aibillFootprint', { numberOfKeys: keys.length, lua: SCRIPT })
  const run = async (op: string, id = '', owner = '', bytes = 0, expiresAt = 0, ownerLimit = 0): Promise<number> =>
    Number(await (client as WithFootprint).aibillFootprint(...keys, op, Date.now(), id, owner, Math.round(bytes), Math.round(expiresAt), limit, ownerLimit))
  return {
    async reserve (id, owner, bytes, expiresAt, ownerLimit) {
      const answer = await run('reserve', id, owner, bytes, expiresAt, ownerLimit)
      return answer === 1 ? 'ok' : answer === 0 ? 'queue_full' : 'owner_full'
    },
    async set (id, owner, bytes, expiresAt) { await run('set', id, owner, bytes, expiresAt) },
    async release (id) { await run('release', id) },
    total: async () => await run('total')
  }
}
