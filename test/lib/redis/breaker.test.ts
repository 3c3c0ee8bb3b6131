import { Redis } from 'ioredis'
import t from 'tap'
import { guardRedis, RedisUnavailableError } from '../../../src/lib/redis/breaker.js'
import { startPausableProxy } from '../../fixtures/pausable-proxy.js'
import { REDIS_URL, skipWithoutRedis } from '../../helper.js'

t.test('the breaker: timeouts in a row open it, commands then fail at once, one PING closes it', { skip: await skipWithoutRedis() }, async (t) => {
  const { hostname, port } = new URL(REDIS_URL)
  const proxy = await startPausableProxy(t, { host: hostname, port: Number(port || 6379) })
  const client = new Redis({ host: '127.0.0.1', port: proxy.port, lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 1, commandTimeout: 100 })
  await client.connect()
  const changes: boolean[] = []
  const breaker = guardRedis(client, { failures: 2, backoffMs: 100, maxBackoffMs: 200, onChange: (open) => { changes.push(open) } })
  t.teardown(() => {
    breaker.close()
    client.disconnect()
  })
  t.equal(await client.ping(), 'PONG')
  proxy.pause()
  await t.rejects(client.ping(), /Command timed out/)
  t.notOk(breaker.open, 'one timeout is not enough')
  await t.rejects(client.ping(), /Command timed out/)
  t.ok(breaker.open, 'two in a row open it')
  const started = performance.now()
  await t.rejects(client.get('x'), RedisUnavailableError)
  t.ok(performance.now() - started < 50, 'a command fails at once while open')
  await new Promise((resolve) => setTimeout(resolve, 700))
  t.ok(breaker.open, 'the trials time out while Redis is silent: still open')
  proxy.resume()
  for (let i = 0; i < 50 && breaker.open; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.notOk(breaker.open, 'a trial answered: closed')
  t.equal(await client.ping(), 'PONG')
  t.same(changes.slice(0, 2), [true, false])

  // Silent, then gone and back (a failover): the new connection's handshake passes the open breaker and closes it.
  proxy.pause()
  await t.rejects(client.ping())
  await t.rejects(client.ping())
  t.ok(breaker.open)
  proxy.reset()
  for (let i = 0; i < 100 && breaker.open; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.notOk(breaker.open, 'a reconnection closes it')
  t.equal(await client.ping(), 'PONG')

  // Closed while open: no trial is scheduled any more.
  proxy.pause()
  await t.rejects(client.ping())
  await t.rejects(client.ping())
  t.ok(breaker.open)
  // Closed while a trial waits for its answer: when that trial fails, none follows.
  await new Promise((resolve) => setTimeout(resolve, 150))
  breaker.close()
  await new Promise((resolve) => setTimeout(resolve, 200))
  proxy.resume()
  await new Promise((resolve) => setTimeout(resolve, 400))
  t.ok(breaker.open, 'after close() nothing tries again')
})
