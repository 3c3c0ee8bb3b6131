import { randomBytes } from 'node:crypto'
import { Redis } from 'ioredis'
import { startRedisCluster } from '../test/fixtures/redis-cluster.js'
import { measure, type Measured, type Options } from './measure.js'

/**
 * npm run bench:cluster: the cached /token in broker mode with TOKEN_CACHE=redis, and queued acceptance, on a
 * single Redis (REDIS_URL) and on a 3-master Redis Cluster the bench starts on loopback, in one run.
 */

type StartService = (extra: Record<string, string>) => Promise<{ port: number, pid: number, child: { stop: () => Promise<void> } }>

export interface ClusterMeasurements {
  tokenSingle: Measured
  tokenCluster: Measured
  acceptSingle: Measured
  acceptCluster: Measured
}

export async function measureCluster (options: { startService: StartService, brokerEnv: Record<string, string>, brokerOptions: (port: number) => Options, location: string, apiKey: string, redisUrl: string }): Promise<ClusterMeasurements> {
  const cleanups: Array<() => unknown> = []
  const prefix = `bench-cluster-${randomBytes(4).toString('hex')}:`
  try {
    process.stderr.write('starting a 3-master Redis Cluster on loopback\n')
    const cluster = await startRedisCluster({ teardown: (fn) => { cleanups.push(fn) } })
    const shared = { TOKEN_CACHE: 'redis', TOKEN_CACHE_SECRET: randomBytes(32).toString('base64'), REDIS_KEY_PREFIX: prefix }
    const on = {
      single: { REDIS_URL: options.redisUrl },
      cluster: { REDIS_URL: cluster.urls.join(','), REDIS_CLUSTER: 'true' }
    }
    const token: Record<string, Measured> = {}
    for (const [name, redis] of Object.entries(on)) {
      const service = await options.startService({ ...options.brokerEnv, ...shared, ...redis })
      token[name] = await measure(`POST /token, broker, cached in Redis (${name})`, options.brokerOptions(service.port), service.pid)
      await service.child.stop()
    }
    const body = JSON.stringify({ location: options.location, params: { records: [{ fields: { amount: 14.91 } }] }, delivery: 'queued' })
    const accept: Record<string, Measured> = {}
    for (const [name, redis] of Object.entries(on)) {
      const service = await options.startService({ ...redis, REDIS_KEY_PREFIX: prefix, RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: randomBytes(32).toString('base64'), RESEND_WORKERS: '0', RESEND_MAX_QUEUED: '100000000', RESEND_MAX_QUEUED_BYTES: String(4 * 1024 ** 3) })
      accept[name] = await measure(`POST /resend queued, accepted (${name})`, { url: `http://127.0.0.1:${service.port}/resend`, method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': options.apiKey }, body }, service.pid)
      await service.child.stop()
    }
    return { tokenSingle: token.single as Measured, tokenCluster: token.cluster as Measured, acceptSingle: accept.single as Measured, acceptCluster: accept.cluster as Measured }
  } finally {
    const redis = new Redis(options.redisUrl)
    for (const pattern of [`${prefix}*`, `{${prefix}*`]) {
      let cursor = '0'
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
        if (keys.length > 0) await redis.del(...keys)
        cursor = next
      } while (cursor !== '0')
    }
    redis.disconnect()
    for (const cleanup of cleanups.reverse()) await cleanup()
  }
}
