import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { createMemoryStateStore, createRedisStateStore, type StateStore } from '../../../src/lib/augment/state-store.js'
import { REDIS_URL, skipWithoutRedis } from '../../helper.js'

type StoreFactory = (t: Test, options: { maxEntries: number, validityMs: number, graceMs: number }) => Promise<StateStore>

/** What every state store promises; run against each implementation. */
function contract (parent: Test, name: string, factory: StoreFactory): void {
  parent.test(`${name} store: the contract`, async (t) => {
    const store = await factory(t, { maxEntries: 1000, validityMs: 60_000, graceMs: 1000 })
    const record = { verifier: 'v'.repeat(43), createdAt: Date.now() }
    await store.save('state-a', record)
    t.same(await store.take('state-a'), { verifier: record.verifier }, 'a saved state is taken')
    t.equal(await store.take('state-a'), undefined, 'and only once')
    t.equal(await store.take('never-saved'), undefined)

    await store.save('contended', record)
    const takes = await Promise.all(Array.from({ length: 25 }, async () => await store.take('contended')))
    t.equal(takes.filter((taken) => taken !== undefined).length, 1, 'of 25 concurrent takes, exactly one gets the state')

    // The store owns both lifetimes: valid for validityMs, then "expired" for graceMs more, then unknown.
    const short = await factory(t, { maxEntries: 1000, validityMs: 50, graceMs: 100 })
    await short.save('late', { verifier: 'v', createdAt: Date.now() })
    await short.save('fleeting', { verifier: 'v', createdAt: Date.now() })
    await sleep(80)
    t.equal(await short.take('late'), 'expired', 'past its validity: expired')
    await sleep(150)
    t.equal(await short.take('fleeting'), undefined, 'past the grace too: gone')
  })
}

contract(t, 'memory', async (t, options) => {
  const store = createMemoryStateStore({ ...options, sweepIntervalMs: 20 })
  t.teardown(async () => { await store.close() })
  return store
})

t.test('memory store: bounded, the oldest go first, swept on a timer', async (t) => {
  const store = createMemoryStateStore({ maxEntries: 3, validityMs: 20, graceMs: 20, sweepIntervalMs: 10 })
  t.teardown(async () => { await store.close() })
  for (const state of ['s1', 's2', 's3', 's4']) await store.save(state, { verifier: state, createdAt: Date.now() })
  t.equal(store.size, 3)
  t.equal(await store.take('s1'), undefined, 'the oldest went first')
  t.ok(await store.take('s4'))
  await sleep(100)
  t.equal(store.size, 0, 'expired entries are swept without being asked for')
})

t.test('redis store', { skip: await skipWithoutRedis() }, async (t) => {
  const prefix = `aibill-test:${randomBytes(6).toString('hex')}:`
  const client = new Redis(REDIS_URL, { keyPrefix: prefix, enableOfflineQueue: false, lazyConnect: true, maxRetriesPerRequest: 1 })
  await client.connect()
  t.teardown(async () => { await client.quit() })

  contract(t, 'redis', async (_t, options) => createRedisStateStore(client, options))

  t.test('keys carry the prefix and a TTL; a corrupt value reads as unknown', async (t) => {
    const store = createRedisStateStore(client, { validityMs: 50_000, graceMs: 10_000 })
    await store.save('ttl-check', { verifier: 'v', createdAt: 1 })
    const raw = new Redis(REDIS_URL)
    t.teardown(async () => { await raw.quit() })
    const ttl = await raw.pttl(`${prefix}oauth:state:ttl-check`)
    t.ok(ttl > 59_000 && ttl <= 60_000, `TTL ${ttl} ms`)
    await store.take('ttl-check')
    await raw.set(`${prefix}oauth:state:corrupt`, 'not json')
    t.equal(await store.take('corrupt'), undefined)
    await raw.set(`${prefix}oauth:state:wrong-shape`, '{"verifier": 1}')
    t.equal(await store.take('wrong-shape'), undefined)
  })

  t.test('nothing is left behind', async (t) => {
    const raw = new Redis(REDIS_URL)
    t.teardown(async () => { await raw.quit() })
    await sleep(100)
    t.same(await raw.keys(`${prefix}*`), [], 'every key was taken or expired')
  })
})
