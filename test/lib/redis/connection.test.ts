import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Cluster, Redis } from 'ioredis'
import t from 'tap'
import { connectRedis, connectionTrouble, createRedisClient, redisSettings } from '../../../src/lib/redis/connection.js'
import { loadConfig } from '../../../src/schemas/config.js'
import { tempDir } from '../../helper.js'
import { startSilentServer } from '../../fixtures/silent-server.js'

t.test('a URL becomes a node\'s address, its credentials, its database and its TLS; a cluster gives them to every node', async (t) => {
  const one = createRedisClient(redisSettings('rediss://user:p%40ss@cache.example:6380/2', false), { lazyConnect: true }) as Redis
  t.match(one.options, { host: 'cache.example', port: 6380, username: 'user', password: 'p@ss', db: 2, tls: { servername: 'cache.example' } })
  t.notOk('ca' in (one.options.tls as object), 'the system\'s CAs alone without REDIS_TLS_CA_FILE')
  const bare = createRedisClient(redisSettings('redis://127.0.0.1', false), { lazyConnect: true }) as Redis
  t.match(bare.options, { host: '127.0.0.1', port: 6379, tls: undefined })
  t.notOk(typeof bare.options.username === 'string' || typeof bare.options.password === 'string', 'no credentials')
  const dir = await tempDir(t, 'aibill-ca-')
  await writeFile(join(dir, 'ca.pem'), '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n')
  const cluster = createRedisClient(redisSettings('rediss://:secret@node-a:7000/3, rediss://node-b:7001', true, join(dir, 'ca.pem')), { keyPrefix: 'aibill:', lazyConnect: true }) as Cluster
  t.same((cluster as unknown as { startupNodes: unknown }).startupNodes, [{ host: 'node-a', port: 7000 }, { host: 'node-b', port: 7001 }])
  const { redisOptions } = cluster.options
  t.match(redisOptions, { password: 'secret', tls: { servername: 'node-a' } })
  t.notOk('db' in (redisOptions as object), 'a cluster has no databases')
  t.ok(((redisOptions?.tls as { ca: string[] }).ca).some((pem) => pem.includes('MIIB')), 'the private CA beside the system\'s')
  t.equal(cluster.options.keyPrefix, 'aibill:')
  const looked = await new Promise((resolve) => { cluster.options.dnsLookup?.('node-a.cache.example', (_err, address) => { resolve(address) }) })
  t.equal(looked, 'node-a.cache.example', 'the nodes are reached by the names the cluster gives, not looked up')
  for (const client of [one, bare, cluster]) client.disconnect()
})

t.test('why a connection failed, in words an operator acts on', async (t) => {
  const error = (code: string | undefined, message = ''): NodeJS.ErrnoException => Object.assign(new Error(message), code === undefined ? {} : { code })
  t.match(connectionTrouble(error('SELF_SIGNED_CERT_IN_CHAIN')), /^its TLS certificate does not verify \(SELF_SIGNED_CERT_IN_CHAIN\): set REDIS_TLS_CA_FILE/)
  t.match(connectionTrouble(error('ERR_TLS_CERT_ALTNAME_INVALID')), /certificate does not verify/)
  t.match(connectionTrouble(error('EPROTO')), /^the TLS handshake failed \(EPROTO\)/)
  t.match(connectionTrouble(error(undefined, 'wrong version number')), /^the TLS handshake failed \(wrong version number\)/)
  t.equal(connectionTrouble(error('ECONNREFUSED')), 'it does not answer (ECONNREFUSED)')
  t.equal(connectionTrouble(error(undefined, 'no answer')), 'it does not answer (no answer)')
  t.equal(connectionTrouble(undefined), 'it does not answer (no answer)')
})

t.test('REDIS_TLS_CA_FILE is read at start: unreadable, or without a certificate, it stops the start', async (t) => {
  const dir = await tempDir(t, 'aibill-ca-')
  await writeFile(join(dir, 'not-a-ca.pem'), 'hello\n')
  const load = (file: string) => () => loadConfig({ overrides: { REDIS_TLS_CA_FILE: file }, env: false })
  t.throws(load(join(dir, 'missing.pem')), { message: `REDIS_TLS_CA_FILE (${join(dir, 'missing.pem')}) cannot be read (ENOENT)` })
  t.throws(load(join(dir, 'not-a-ca.pem')), { message: `REDIS_TLS_CA_FILE (${join(dir, 'not-a-ca.pem')}) holds no PEM certificate` })
})

t.test('a node that takes the connection and never answers stops the start within its deadline, saying so', async (t) => {
  const settings = redisSettings(`redis://127.0.0.1:${await startSilentServer(t)}`, false, undefined)
  const started = Date.now()
  await t.rejects(connectRedis(settings, 'test:', 'STATE_STORE=redis', () => {}), { message: /STATE_STORE=redis: Redis at 127\.0\.0\.1:\d+ \(REDIS_URL\).*does not answer \(no answer\)/ })
  t.ok(Date.now() - started < 10_000, `refused in ${Date.now() - started} ms`)
})
