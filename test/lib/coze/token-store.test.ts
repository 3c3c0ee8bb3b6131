import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { ServiceError } from '../../../src/lib/http/errors.js'
import { createMemoryTokenStore, createRedisTokenStore, reuseMillis, type TokenStore } from '../../../src/lib/coze/token-store.js'
import { REDIS_URL, skipWithoutRedis } from '../../helper.js'

const token = (name: string, secondsLeft = 900) => ({ access_token: `czs_${name}_0123456789`, expires_in: Math.floor(Date.now() / 1000) + secondsLeft, token_type: 'Bearer' })

t.test('memory store: reuse while valid long enough, one exchange per key, a bound on exchanges in flight', async (t) => {
  const store = createMemoryTokenStore({ maxPending: 2 })
  let made = 0
  const exchange = async () => { made++; await sleep(20); return { token: token(`m${made}`) } }
  const [a, b] = await Promise.all([store.obtain('k', 60, exchange), store.obtain('k', 60, exchange)])
  t.same([a.outcome, b.outcome, a.token.access_token === b.token.access_token], ['miss', 'shared', true])
  t.equal((await store.obtain('k', 60, exchange)).outcome, 'hit')
  t.equal((await store.obtain('k', 1000, exchange)).outcome, 'miss', 'not valid for 1000 s more: a new one')
  const flood = await Promise.allSettled(['x', 'y', 'z'].map(async (key) => await store.obtain(key, 60, exchange)))
  t.same(flood.map((result) => result.status), ['fulfilled', 'fulfilled', 'rejected'])
  t.match((flood[2] as PromiseRejectedResult).reason, { code: 'SERVICE_UNAVAILABLE', details: { reason: 'pending_exchanges', limit: 2 } })
  t.equal(store.status(), 'ok')
})

t.test('memory store in single-app mode: a reuse window, single flight, failures dropped, no eviction in flight', async (t) => {
  t.equal(reuseMillis(60, 86399), 60_000)
  t.equal(reuseMillis(60, 100), 10_000, 'a tenth of the duration at most')
  const store = createMemoryTokenStore({ maxEntries: 2, maxPending: 10 })
  let n = 0
  const exchange = async () => { await sleep(10); n++; return { token: token(`t${n}`), logid: `log-${n}` } }
  const [a, b] = await Promise.all([store.obtain('k', 0, exchange, 60_000), store.obtain('k', 0, exchange, 60_000)])
  t.same([a.outcome, b.outcome, a.token.access_token, b.token.access_token, a.logid, b.logid], ['miss', 'shared', 'czs_t1_0123456789', 'czs_t1_0123456789', 'log-1', 'log-1'])
  t.same(await store.obtain('k', 0, exchange, 60_000), { token: a.token, outcome: 'hit' }, 'a hit made no exchange: no logid')
  const short = await store.obtain('window', 0, exchange, 30)
  await sleep(60)
  t.not((await store.obtain('window', 0, exchange, 30)).token.access_token, short.token.access_token, 'past the reuse window: a new token')
  await t.rejects(store.obtain('bad', 0, async () => { throw new Error('refused') }, 60_000), /refused/)
  t.equal((await store.obtain('bad', 0, exchange, 60_000)).outcome, 'miss', 'a failure is not kept')
  t.equal((await store.obtain('k', 0, exchange, 0.5)).outcome, 'off', 'a window under a millisecond is no cache')
  t.equal(store.size, 2, 'bounded')
  const answers = await Promise.all(['a', 'b', 'c', 'd', 'e'].map(async (name) => await store.obtain(name, 0, async () => { await sleep(20); return { token: token(name) } }, 60_000)))
  t.same(answers.map((answer) => answer.token.access_token), ['a', 'b', 'c', 'd', 'e'].map((name) => `czs_${name}_0123456789`), 'more in flight than the LRU holds: none is evicted')
  t.equal(store.slots.inFlight, 0)
})

/** A key prefix of the test's own on the shared Redis: clients under it, and everything under it removed at the end. */
function redisUnderPrefix (t: Test, name: string) {
  const prefix = `aibill-test-${name}:${randomBytes(6).toString('hex')}:`
  const clients: Redis[] = []
  const raw = new Redis(REDIS_URL)
  t.teardown(async () => {
    const keys = await raw.keys(`${prefix}*`)
    if (keys.length > 0) await raw.del(...keys)
    await raw.quit()
    for (const redis of clients) await redis.quit()
  })
  const connect = async (): Promise<Redis> => {
    const redis = new Redis(REDIS_URL, { keyPrefix: prefix, enableOfflineQueue: false, lazyConnect: true, maxRetriesPerRequest: 1 })
    await redis.connect()
    clients.push(redis)
    return redis
  }
  return { prefix, raw, connect }
}

t.test('redis store', { skip: await skipWithoutRedis() }, async (t) => {
  const { prefix, raw, connect: client } = redisUnderPrefix(t, 'tokens')
  const secret = randomBytes(32)
  const store = async (lockMs = 2000) => createRedisTokenStore({ redis: await client(), secret, lockMs, pollMs: 10, fallback: createMemoryTokenStore({ maxPending: 100 }) })

  t.test('nothing in Redis reveals the token, the session name or the app', async (t) => {
    const one = await store()
    const key = JSON.stringify(['bills-cn', 'user-secret-session', 900])
    await one.obtain(key, 60, async () => ({ token: token('at-rest') }))
    const names = await raw.keys(`${prefix}*`)
    t.equal(names.length, 1)
    t.match(names[0], new RegExp(`^${prefix}token:\\{[0-9a-f]{64}\\}$`), 'one hash tag for a token, its lock and its failure')
    const value = await raw.get(names[0] as string) as string
    for (const secretText of ['czs_at-rest', 'user-secret-session', 'bills-cn', 'access_token']) {
      t.notOk(`${names[0] as string}${value}${Buffer.from(value, 'base64').toString('latin1')}`.includes(secretText), `no ${secretText}`)
    }
    const other = createRedisTokenStore({ redis: await client(), secret: randomBytes(32), lockMs: 2000, fallback: createMemoryTokenStore({ maxPending: 1 }) })
    let made = 0
    await other.obtain(key, 60, async () => { made++; return { token: token('other-secret') } })
    t.equal(made, 1, 'another secret cannot read it: as good as absent')
  })

  t.test('an instance that took the lock and died is taken over when the lock expires', async (t) => {
    const one = await store(300)
    const before = new Set(await raw.keys(`${prefix}token:*`))
    await one.obtain('takeover', 60, async () => ({ token: token('first') }))
    const [written] = (await raw.keys(`${prefix}token:*`)).filter((name) => !before.has(name))
    const id = String(written).slice(`${prefix}token:`.length)
    t.match(id, /^\{[0-9a-f]{64}\}$/)
    // The token is gone and another instance holds the lock, then dies: nobody will release it.
    await raw.del(written as string)
    await raw.set(`${prefix}token-lock:${id}`, 'a-dead-holder', 'PX', 300)
    const started = performance.now()
    const result = await one.obtain('takeover', 60, async () => ({ token: token('after-takeover') }))
    const waited = performance.now() - started
    t.same([result.outcome, result.token.access_token], ['miss', 'czs_after-takeover_0123456789'])
    t.ok(waited >= 200, `waited ${waited.toFixed(0)} ms for the lock to expire`)
  })

  t.test('a value sealed with another secret, or tampered with, is as good as absent', async (t) => {
    const one = await store()
    const before = new Set(await raw.keys(`${prefix}token:*`))
    await one.obtain('tampered', 60, async () => ({ token: token('sealed') }))
    const [written] = (await raw.keys(`${prefix}token:*`)).filter((name) => !before.has(name))
    await raw.set(written as string, Buffer.from('not what was sealed, not at all').toString('base64'), 'PX', 60_000)
    let made = 0
    const again = await one.obtain('tampered', 60, async () => { made++; return { token: token('fresh') } })
    t.same([again.outcome, made], ['miss', 1])
  })

  t.test('a lock that outlives the wait is 503, not a hang', async (t) => {
    const one = await store(100)
    const before = new Set(await raw.keys(`${prefix}token:*`))
    await one.obtain('stuck', 60, async () => ({ token: token('stuck') }))
    const [written] = (await raw.keys(`${prefix}token:*`)).filter((name) => !before.has(name))
    const id = String(written).slice(`${prefix}token:`.length)
    await raw.del(written as string)
    await raw.set(`${prefix}token-lock:${id}`, 'a-slow-holder', 'PX', 5000)
    await t.rejects(one.obtain('stuck', 60, async () => ({ token: token('never') })), { code: 'SERVICE_UNAVAILABLE', details: { reason: 'token_cache_busy' } })
    await raw.del(`${prefix}token-lock:${id}`)
  })

  t.test('a Redis that answers with an error: this instance caches on its own, and says so', async (t) => {
    // A user of our own that may not write: SET fails with NOPERM, a real error of Redis itself.
    const user = `aibill-test-${randomBytes(4).toString('hex')}`
    const password = randomBytes(12).toString('hex')
    await raw.call('ACL', 'SETUSER', user, 'on', `>${password}`, '~*', '+@all', '-set')
    const limited = new Redis(REDIS_URL, { username: user, password, keyPrefix: prefix, enableOfflineQueue: false, lazyConnect: true, maxRetriesPerRequest: 1 })
    t.teardown(async () => {
      await limited.quit()
      await raw.call('ACL', 'DELUSER', user)
    })
    await limited.connect()
    const changes: boolean[] = []
    const one = createRedisTokenStore({ redis: limited, secret, lockMs: 500, fallback: createMemoryTokenStore({ maxPending: 10 }), onDegraded: (degraded) => { changes.push(degraded) }, degradedForMs: 300 })
    const fallback = await one.obtain('refused-write', 60, async () => ({ token: token('from-memory') }))
    t.same([fallback.outcome, fallback.token.access_token], ['miss', 'czs_from-memory_0123456789'])
    t.equal(one.status(), 'degraded')
    // With no request since, the status follows Redis, not the last request: ok once the fallback is past.
    await sleep(400)
    t.equal(one.status(), 'ok', 'ok again without a request')
    await one.obtain('refused-write-again', 60, async () => ({ token: token('from-memory') }))
    t.equal(one.status(), 'degraded')
    await raw.call('ACL', 'SETUSER', user, '+set')
    await one.obtain('refused-write-2', 60, async () => ({ token: token('shared-again') }))
    t.equal(one.status(), 'ok')
    t.same(changes, [true, false])
  })
})

// One guarantee, every store: the same cases against the memory store and the Redis store.
t.test('both stores keep the same guarantees', { skip: await skipWithoutRedis() }, async (t) => {
  const { prefix, raw, connect } = redisUnderPrefix(t, 'both')
  const secret = randomBytes(32)
  const stores: Record<string, (maxPending: number) => Promise<TokenStore>> = {
    memory: async (maxPending) => createMemoryTokenStore({ maxPending }),
    redis: async (maxPending) => createRedisTokenStore({ redis: await connect(), secret, lockMs: 5000, pollMs: 10, fallback: createMemoryTokenStore({ maxPending }) })
  }

  for (const [kind, make] of Object.entries(stores)) {
    t.test(`${kind}: COZE_MAX_PENDING_EXCHANGES bounds the exchanges in flight; the excess is 503 at once`, async (t) => {
      const store = await make(2)
      let exchanges = 0
      const slow = async () => { exchanges++; await sleep(300); return { token: token(`slow-${exchanges}`) } }
      const started = performance.now()
      const results = await Promise.allSettled(Array.from({ length: 10 }, async (_unused, i) => await store.obtain(`${kind}-bound-${i}`, 60, slow)))
      t.equal(results.filter((result) => result.status === 'fulfilled').length, 2)
      const refused = results.filter((result): result is PromiseRejectedResult => result.status === 'rejected')
      t.equal(refused.length, 8)
      for (const { reason } of refused) t.match(reason, { code: 'SERVICE_UNAVAILABLE', details: { reason: 'pending_exchanges', limit: 2 } })
      t.equal(exchanges, 2, 'only the two admitted reached Coze')
      t.ok(performance.now() - started < 5000)
      // The slots come back: the next request is served.
      t.equal((await store.obtain(`${kind}-bound-after`, 60, async () => ({ token: token('after') }))).outcome, 'miss')
    })

    t.test(`${kind}: a request joins another only for a token valid as long as it asks`, async (t) => {
      const store = await make(10)
      const key = `${kind}-validity`
      await store.obtain(key, 0, async () => ({ token: token('short-lived', 100) }))
      for (let round = 0; round < 10; round++) {
        const [lenient, strict] = await Promise.all([
          store.obtain(key, 0, async () => ({ token: token(`lenient-${round}`, 900) })),
          store.obtain(key, 600, async () => { await sleep(5); return { token: token(`strict-${round}`, 900) } })
        ])
        t.ok(lenient.token.expires_in - Date.now() / 1000 >= 0)
        t.ok(strict.token.expires_in - Date.now() / 1000 >= 600, `round ${round}: the 600 s request got ${Math.round(strict.token.expires_in - Date.now() / 1000)} s (${strict.outcome})`)
        // The next round starts from a token with 100 s left again.
        await store.obtain(`${key}-${round}`, 0, async () => ({ token: token('other') }))
      }
      // A request that joins an exchange which brings a token too short for it makes its own.
      const [brought, own] = await Promise.all([
        store.obtain(`${key}-join`, 0, async () => { await sleep(30); return { token: token('brief', 100) } }),
        (async () => { await sleep(5); return await store.obtain(`${key}-join`, 600, async () => ({ token: token('long', 900) })) })()
      ])
      t.same([brought.token.access_token, own.token.access_token, own.outcome, own.forced], ['czs_brief_0123456789', 'czs_long_0123456789', 'miss', true])
    })
  }

  t.test('redis: a failed exchange is the answer of the instances waiting on the same key, for COZE_FAILURE_SHARE_MS', async (t) => {
    const options = { secret, lockMs: 5000, pollMs: 10, failureShareMs: 2000 }
    const a = createRedisTokenStore({ ...options, redis: await connect(), fallback: createMemoryTokenStore({ maxPending: 10 }) })
    const b = createRedisTokenStore({ ...options, redis: await connect(), fallback: createMemoryTokenStore({ maxPending: 10 }) })
    let bExchanged = false
    const failing = a.obtain('shared-failure', 60, async () => {
      await sleep(300)
      throw new ServiceError('UPSTREAM_TIMEOUT', { timeout_ms: 300 })
    })
    // B comes once A holds the lock.
    for (let i = 0; i < 100 && (await raw.keys(`${prefix}token-lock:*`)).length === 0; i++) await sleep(5)
    const started = performance.now()
    const waiting = b.obtain('shared-failure', 60, async () => { bExchanged = true; return { token: token('never') } })
    await t.rejects(failing, { code: 'UPSTREAM_TIMEOUT' })
    await t.rejects(waiting, { code: 'UPSTREAM_TIMEOUT', details: { timeout_ms: 300, shared: true } })
    t.notOk(bExchanged, 'the waiting instance did not try Coze in turn')
    t.ok(performance.now() - started < 2000, 'it answered when the failure came, not after a timeout of its own')
    await sleep(2100)
    t.equal((await b.obtain('shared-failure', 60, async () => ({ token: token('later') }))).outcome, 'miss', 'past the share time, Coze is tried again')
  })

  t.test('redis: a refusal of this instance, or any failure with COZE_FAILURE_SHARE_MS=0, is not shared', async (t) => {
    const options = { secret, lockMs: 5000, pollMs: 10 }
    const ours = createRedisTokenStore({ ...options, redis: await connect(), fallback: createMemoryTokenStore({ maxPending: 10 }) })
    await t.rejects(ours.obtain('not-shared', 60, async () => { throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'busy' }) }), { code: 'SERVICE_UNAVAILABLE' })
    t.equal((await ours.obtain('not-shared', 60, async () => ({ token: token('next') }))).outcome, 'miss', 'the next request tries at once')
    const unshared = createRedisTokenStore({ ...options, failureShareMs: 0, redis: await connect(), fallback: createMemoryTokenStore({ maxPending: 10 }) })
    await t.rejects(unshared.obtain('never-shared', 60, async () => { throw new ServiceError('UPSTREAM_TIMEOUT') }), { code: 'UPSTREAM_TIMEOUT' })
    t.equal((await unshared.obtain('never-shared', 60, async () => ({ token: token('again') }))).outcome, 'miss')
    // A token Coze gave already expired is the caller's, and kept nowhere.
    t.equal((await ours.obtain('expired', 0, async () => ({ token: token('stale', -5) }))).token.access_token, 'czs_stale_0123456789')
    t.equal((await ours.obtain('expired', 0, async () => ({ token: token('fresh') }))).outcome, 'miss')
  })

  t.test('redis: a lock without an expiry is removed and reported, not waited on for good', async (t) => {
    let reported = 0
    const store = createRedisTokenStore({ redis: await connect(), secret, lockMs: 3000, pollMs: 10, fallback: createMemoryTokenStore({ maxPending: 10 }), onLockWithoutExpiry: () => { reported++ } })
    const before = new Set(await raw.keys(`${prefix}token:*`))
    await store.obtain('no-expiry', 60, async () => ({ token: token('first') }))
    const [written] = (await raw.keys(`${prefix}token:*`)).filter((name) => !before.has(name))
    const id = String(written).slice(`${prefix}token:`.length)
    await raw.del(written as string)
    await raw.set(`${prefix}token-lock:${id}`, 'written-by-hand')
    const started = performance.now()
    const result = await store.obtain('no-expiry', 60, async () => ({ token: token('second') }))
    t.same([result.outcome, result.token.access_token, reported], ['miss', 'czs_second_0123456789', 1])
    t.ok(performance.now() - started < 3000, 'well before the lock time')
    t.equal(await raw.pttl(`${prefix}token-lock:${id}`), -2, 'and the lock it took itself was released')
  })
})
