import { Redis } from 'ioredis'

const START_TIMEOUT_MS = 5000

/** Connects once at start; a Redis that does not answer then stops the start with a clear message. */
export async function connectRedis (url: string, keyPrefix: string, purpose: string, onError: (code: string | undefined) => void): Promise<Redis> {
  const client = new Redis(url, {
    keyPrefix,
    lazyConnect: true,
    // While Redis is away, commands fail at once instead of queueing; reconnection goes on by itself.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    // A healthy Redis answers in about a millisecond; past this the breaker counts a failure.
    commandTimeout: 1000,
    retryStrategy: (times) => Math.min(times * 200, 2000)
  })
  // Without a listener ioredis prints every failed reconnection; the 'close' and 'ready' events say enough.
  client.on('error', (err: NodeJS.ErrnoException) => { onError(err.code) })
  try {
    await Promise.race([
      client.connect(),
      new Promise((_resolve, reject) => setTimeout(reject, START_TIMEOUT_MS, new Error('no answer')).unref())
    ])
    return client
  } catch (err) {
    client.disconnect()
    // The URL may hold a password: name only its host.
    throw new Error(`${purpose}: Redis at ${new URL(url).host} (REDIS_URL) does not answer: ${(err as Error).message}`)
  }
}
