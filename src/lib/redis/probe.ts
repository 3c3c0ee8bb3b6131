import { randomBytes } from 'node:crypto'
import type { RedisClient } from './connection.js'

/** Whether Redis refused a command for memory: at maxmemory with noeviction, it refuses every write (OOM ...). */
export function isRedisFull (err: unknown): boolean {
  return /^OOM\b/.test(String((err as { message?: unknown } | undefined)?.message))
}

export interface Probe {
  /** `ok`, `refuses writes (maxmemory)`, or `does not answer`. */
  status: string
  error?: unknown
}

/**
 * What GET /ready says of a store in Redis: `ok`, or the word the store's failure means to readiness (`down`: not
 * ready; `degraded`: working with less) followed by what the probe found.
 */
export async function redisReadiness (client: RedisClient, key: string, failing: 'down' | 'degraded'): Promise<string> {
  const { status } = await probeRedis(client, key)
  return status === 'ok' ? 'ok' : `${failing}: ${status}`
}

/**
 * A real round trip, as readiness means it: a key written with a short expiry and read back. A PING answers on
 * a Redis that cannot keep a key (full, read-only, a cluster node that owns no slot for it).
 */
export async function probeRedis (client: RedisClient, key: string, timeoutMs = 1500): Promise<Probe> {
  const value = randomBytes(6).toString('hex')
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => { timer = setTimeout(reject, timeoutMs, new Error(`no answer within ${timeoutMs} ms`)) })
  const trip = (async () => {
    await client.set(key, value, 'PX', 10_000)
    await client.get(key)
  })()
  trip.catch(() => {})
  const found = await Promise.race([trip, late]).then((): Probe => ({ status: 'ok' }), (error: unknown): Probe => ({ status: isRedisFull(error) ? 'refuses writes (maxmemory)' : 'does not answer', error }))
  clearTimeout(timer)
  return found
}
