import { readFileSync } from 'node:fs'
import { rootCertificates, type ConnectionOptions } from 'node:tls'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'

/** One Redis node or a Redis Cluster: every user of Redis takes its clients from here. */
export type RedisClient = Redis | Cluster

/** Where Redis is, and how to reach it (REDIS_URL, REDIS_CLUSTER, REDIS_TLS_CA_FILE). */
export interface RedisSettings {
  /** One URL, or with `cluster` one or more seed nodes; credentials in the URL; `rediss://` for TLS. */
  urls: URL[]
  cluster: boolean
  /** A private CA that signs the servers' certificates: trusted beside the system's. */
  ca?: Buffer | undefined
}

/** REDIS_URL (comma-separated seeds with REDIS_CLUSTER=true) and REDIS_TLS_CA_FILE, read once at start. */
export function redisSettings (url: string, cluster: boolean, caFile?: string): RedisSettings {
  return { urls: url.split(',').map((part) => new URL(part.trim())), cluster, ca: caFile === undefined ? undefined : readFileSync(caFile) }
}

const START_TIMEOUT_MS = 5000

/** What a client of the service needs beside the address: a key prefix, timeouts, retries, an offline queue. */
export type ClientOptions = Pick<RedisOptions, 'keyPrefix' | 'lazyConnect' | 'enableOfflineQueue' | 'maxRetriesPerRequest' | 'connectTimeout' | 'commandTimeout' | 'retryStrategy'>

/** A certificate that does not verify is never accepted: the system's CAs, and the private one when given. */
function tlsFor (url: URL, ca: Buffer | undefined): ConnectionOptions | undefined {
  if (url.protocol !== 'rediss:') return undefined
  return { servername: url.hostname, ...(ca === undefined ? {} : { ca: [...rootCertificates, ca.toString('utf8')] }) }
}

const address = (url: URL): { host: string, port: number } => ({ host: url.hostname, port: Number(url.port === '' ? 6379 : url.port) })

/** What every node of a URL is reached with: its credentials and TLS (the database, on one node only). */
function access (url: URL, settings: RedisSettings): RedisOptions {
  return {
    ...(url.username === '' ? {} : { username: decodeURIComponent(url.username) }),
    ...(url.password === '' ? {} : { password: decodeURIComponent(url.password) }),
    ...(url.pathname.length > 1 && !settings.cluster ? { db: Number(url.pathname.slice(1)) } : {}),
    tls: tlsFor(url, settings.ca)
  }
}

/**
 * A client for one node, or for the cluster its seeds belong to. On a cluster the nodes' own addresses, as
 * CLUSTER SLOTS gives them, are connected to as they are (no DNS lookup), so a certificate's host name stays the
 * one it was issued for (ElastiCache), and every node gets the same credentials and TLS.
 */
export function createRedisClient (settings: RedisSettings, options: ClientOptions): RedisClient {
  const [first] = settings.urls as [URL]
  if (!settings.cluster) return new Redis({ ...address(first), ...access(first, settings), ...options })
  const { keyPrefix, lazyConnect, enableOfflineQueue, retryStrategy, ...perNode } = options
  const clusterOptions: ClusterOptions = {
    ...(keyPrefix === undefined ? {} : { keyPrefix }),
    lazyConnect,
    enableOfflineQueue,
    clusterRetryStrategy: retryStrategy,
    dnsLookup: (address, callback) => { callback(null, address) },
    slotsRefreshTimeout: 2000,
    // A moved slot (a failover) is followed at once, the cluster being down is waited out briefly.
    retryDelayOnClusterDown: 200,
    redisOptions: { ...access(first, settings), ...perNode }
  }
  return new Cluster(settings.urls.map(address), clusterOptions)
}

/** Why a connection failed, in words an operator acts on: TLS and its certificate are named as such. */
export function connectionTrouble (err: NodeJS.ErrnoException | undefined): string {
  const code = String(err?.code ?? '')
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code)) return `its TLS certificate does not verify (${code}): set REDIS_TLS_CA_FILE to the CA that signed it, or fix the certificate's host name`
  if (/EPROTO|ERR_SSL/.test(code) || /wrong version number|ssl|tls/i.test(String(err?.message))) return `the TLS handshake failed (${code === '' ? String(err?.message) : code}): is it a TLS port? rediss:// speaks TLS, redis:// does not`
  return `it does not answer (${code === '' ? String(err?.message ?? 'no answer') : code})`
}

/** Whether a node runs in cluster mode (INFO cluster), on a connection of its own that retries nothing. */
async function clusterEnabled (url: URL, settings: RedisSettings): Promise<{ enabled: boolean } | { error: NodeJS.ErrnoException }> {
  let last: NodeJS.ErrnoException | undefined
  const probe = new Redis({ ...address(url), ...access(url, settings), lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, connectTimeout: 2000, retryStrategy: () => null })
  probe.on('error', (err: NodeJS.ErrnoException) => { last = err })
  const ask = async (): Promise<{ enabled: boolean }> => {
    await Promise.race([probe.connect(), new Promise((_resolve, reject) => setTimeout(reject, START_TIMEOUT_MS, new Error('no answer')).unref())])
    return { enabled: /cluster_enabled:1/.test(await probe.info('cluster')) }
  }
  // A failed connection says why in its error event (its rejection only says the connection closed); a node that
  // connects and never answers only times out.
  const found = await ask().catch((err: unknown) => ({ error: last ?? err as NodeJS.ErrnoException }))
  probe.disconnect()
  return found
}

/**
 * Connects once at start. A Redis that does not answer, whose certificate does not verify, or that is a cluster
 * node when REDIS_CLUSTER is not set (or the reverse) stops the start with a message that says which setting to
 * change; the URL may hold a password, so only its host is named.
 */
export async function connectRedis (settings: RedisSettings, keyPrefix: string, purpose: string, onError: (code: string | undefined) => void): Promise<RedisClient> {
  const [first] = settings.urls as [URL]
  const where = `${purpose}: Redis at ${first.host} (REDIS_URL)`
  const mode = await clusterEnabled(first, settings)
  if ('error' in mode) throw new Error(`${where} cannot be reached: ${connectionTrouble(mode.error)}`)
  if (mode.enabled && !settings.cluster) throw new Error(`${where} is a node of a Redis Cluster: set REDIS_CLUSTER=true (and list one or more of its nodes in REDIS_URL)`)
  if (!mode.enabled && settings.cluster) throw new Error(`${where} is not in cluster mode: unset REDIS_CLUSTER (REDIS_CLUSTER=true needs nodes of a Redis Cluster)`)
  let last: NodeJS.ErrnoException | undefined
  const client = createRedisClient(settings, {
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
  client.on('error', (err: NodeJS.ErrnoException) => {
    last = err
    onError(err.code)
  })
  try {
    await Promise.race([
      client.connect(),
      new Promise((_resolve, reject) => setTimeout(reject, START_TIMEOUT_MS, new Error('no answer')).unref())
    ])
    return client
    /* c8 ignore start - Redis lost between the check of its mode, a moment ago, and this connection */
  } catch (err) {
    client.disconnect()
    throw new Error(`${where} cannot be reached: ${connectionTrouble(last ?? err as NodeJS.ErrnoException)}`)
  }
  /* c8 ignore stop - end of the window above */
}
