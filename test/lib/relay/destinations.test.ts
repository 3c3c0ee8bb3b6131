import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { createDestinations, createLimitFinder, MAX_COOLDOWN_MS, parseHostLimits, type Admission, type DestinationsOptions } from '../../../src/lib/relay/destinations.js'
import { REDIS_URL, redisKeyPrefix, skipWithoutRedis } from '../../helper.js'

const skip = await skipWithoutRedis()

function destinations (t: Test, options: Partial<DestinationsOptions> = {}) {
  const client = new Redis(REDIS_URL)
  t.teardown(() => { client.disconnect() })
  const tag = `{${redisKeyPrefix(t, 'dest')}resend}`
  const events: string[] = []
  const created = createDestinations({
    client,
    tagFor: () => tag,
    tags: [tag],
    limits: [],
    breakerFailures: 3,
    breakerCooldownMs: 400,
    leaseMs: 300,
    attemptMs: 300,
    maxAgeMs: 60_000,
    onBreaker: (host, state, detail) => { events.push(`${host} ${state} after ${detail.failures}`) },
    ...options
  })
  return { gate: created, events, client, tag }
}

const went = (admission: Admission): boolean => admission.go

t.test('RESEND_HOST_LIMITS: ENTRY=N/s, the entry as in RESEND_ALLOWED_HOSTS; the most specific applies', async (t) => {
  const limits = parseHostLimits(' open.feishu.cn=50/s, *=100/s ,http://127.0.0.1:8080=5/s,*.larksuite.com=0.5/s')
  t.same(limits.map((limit) => [limit.entry.source, limit.perSecond]), [['open.feishu.cn', 50], ['*', 100], ['http://127.0.0.1:8080', 5], ['*.larksuite.com', 0.5]])
  t.same(parseHostLimits(''), [])
  for (const bad of ['open.feishu.cn', 'open.feishu.cn=0/s', 'open.feishu.cn=5/m', '=5/s', 'ftp://x=5/s', 'a.com=200000/s']) {
    t.throws(() => parseHostLimits(bad), /RESEND_HOST_LIMITS: invalid entry/, bad)
  }
  const limitFor = createLimitFinder(limits)
  t.equal(limitFor('open.feishu.cn'), 50, 'the host, not "*"')
  t.equal(limitFor('open.larksuite.com'), 0.5, 'a suffix')
  t.equal(limitFor('127.0.0.1:8080'), 5, 'an http:// origin with its port')
  t.equal(limitFor('127.0.0.1:8081'), undefined, 'another port: "*" allows no private address, so it limits none')
  t.equal(limitFor('example.com'), 100, '"*" limits each host it matches')
  // What each host's limit is is remembered, for 10,000 hosts at most.
  for (let i = 0; i <= 10_001; i++) limitFor(`h${i}.example.com`)
  t.equal(limitFor('open.feishu.cn'), 50, 'and read again after')
})

t.test('shares: a flow over its share waits while another flow has a job waiting; alone it takes every slot', { skip }, async (t) => {
  const { gate } = destinations(t, { leaseMs: 60_000 })
  // Flow A alone: every admission goes, whatever it already holds.
  for (let i = 0; i < 4; i++) await gate.waiting(`a${i}`, 'A', 'dead.example', Date.now())
  for (let i = 0; i < 4; i++) t.ok(went(await gate.admit(`a${i}`, 'A', 'dead.example')), `A's job ${i} goes: no other flow waits`)
  for (let i = 4; i < 40; i++) await gate.waiting(`a${i}`, 'A', 'dead.example', Date.now())
  // B has a job waiting: A, holding four, is over its share (ceil(5 / 2) = 3) and waits; B goes.
  await gate.waiting('b0', 'B', 'live.example', Date.now())
  const held = await gate.admit('a4', 'A', 'dead.example')
  t.match(held, { go: false, reason: 'share' })
  t.ok(!held.go && held.at > Date.now() + 200, 'it comes back later, spread by its backlog')
  t.ok(went(await gate.admit('b0', 'B', 'live.example')), 'B goes at once')
  const listed = await gate.list(null)
  t.match(listed.find((view) => view.host === 'dead.example'), { waiting: 36, in_flight: 4, state: 'ok' })
  t.match(listed.find((view) => view.host === 'live.example'), { waiting: 0, in_flight: 1 })
  // B settles and waits for nothing more: A takes slots again.
  await gate.settle('live.example', { kind: 'ok' }, { id: 'b0', owner: 'B', probe: false })
  t.ok(went(await gate.admit('a5', 'A', 'dead.example')), 'A goes again once B waits for nothing')
  // A job tried again later counts as waiting only from then.
  await gate.settle('dead.example', { kind: 'failed', error: 'UPSTREAM_TIMEOUT' }, { id: 'a0', owner: 'A', probe: false, nextAt: Date.now() + 60_000 })
  t.equal((await gate.list(null)).find((view) => view.host === 'dead.example')?.waiting, 35)
  // In broker mode a caller lists only the hosts its own jobs wait for or are delivered to, with its own counts.
  t.same((await gate.list('B')).map((view) => view.host), [])
  t.same((await gate.list('A')).map((view) => [view.host, view.waiting, view.in_flight]), [['dead.example', 35, 4]])
  await gate.forget('a39', 'A', 'dead.example')
  t.equal((await gate.list('A'))[0]?.waiting, 34, 'a cancelled job no longer waits')
})

t.test('a lease lapses: an instance killed while delivering holds its flow\'s slot no longer than RESEND_JOB_LOCK_MS', { skip }, async (t) => {
  const { gate } = destinations(t, { leaseMs: 300 })
  for (const id of ['a0', 'a1']) {
    await gate.waiting(id, 'A', 'h.example', Date.now())
    t.ok(went(await gate.admit(id, 'A', 'h.example')))
  }
  await gate.waiting('a2', 'A', 'h.example', Date.now())
  await gate.waiting('b0', 'B', 'h2.example', Date.now())
  await gate.waiting('b1', 'B', 'h2.example', Date.now())
  t.ok(went(await gate.admit('b0', 'B', 'h2.example')))
  t.match(await gate.admit('a2', 'A', 'h.example'), { go: false, reason: 'share' }, 'A holds two of three')
  // Neither of A's deliveries ever settles (its instance was killed): their leases lapse.
  await sleep(350)
  t.equal((await gate.list(null)).find((view) => view.host === 'h.example')?.in_flight, 0, 'the lapsed leases are gone')
  t.ok(went(await gate.admit('a2', 'A', 'h.example')), 'A goes again')
})

t.test('the breaker: opens after RESEND_BREAKER_FAILURES, holds, lets one probe through, doubles, closes', { skip }, async (t) => {
  const { gate, events } = destinations(t, { breakerFailures: 3, breakerCooldownMs: 400, leaseMs: 2000 })
  const host = 'down.example'
  const fail = async (probe = false): Promise<void> => { await gate.settle(host, { kind: 'failed', error: 'UPSTREAM_UNREACHABLE' }, { probe }) }
  await fail()
  await gate.settle(host, { kind: 'ok' }, { probe: false })
  await fail()
  await fail()
  t.same(events, [], 'an answer in between starts the count again')
  await fail()
  t.same(events, [`${host} opened after 3`])
  const paused = await gate.admit('j1', '*', host)
  t.match(paused, { go: false, reason: 'breaker' })
  await t.rejects(gate.admitNow(host), { code: 'SERVICE_UNAVAILABLE', statusCode: 503, details: { reason: 'destination_paused', host } })
  t.match((await gate.list(null))[0], { host, state: 'paused', paused_by: 'breaker', consecutive_failures: 3, last_error: 'UPSTREAM_UNREACHABLE', recent: { attempts: 5, failed: 4, failure_rate: 0.8 } })
  // An attempt that began before the pause and fails now changes nothing.
  await fail()
  await sleep(420)
  const probe = await gate.admit('j1', '*', host)
  t.same(probe, { go: true, probe: true }, 'after the cooldown one attempt probes')
  t.match(await gate.admit('j2', '*', host), { go: false, reason: 'breaker' }, 'and only one')
  t.match((await gate.list(null))[0], { state: 'paused', paused_by: 'breaker' }, 'paused while its probe is out')
  await fail(true)
  t.equal(events.length, 1, 'a failed probe pauses again without a new alert')
  await sleep(420)
  t.match(await gate.admit('j2', '*', host), { go: false, reason: 'breaker' }, 'twice as long: 800 ms')
  await sleep(420)
  const second = await gate.admitNow(host)
  t.same(second, { probe: true }, 'a request sent now may be the probe')
  await gate.settle(host, { kind: 'ok' }, { probe: true })
  t.same(events, [`${host} opened after 3`, `${host} closed after 3`])
  t.ok(went(await gate.admit('j2', '*', host)), 'closed: every job goes')
  t.equal(MAX_COOLDOWN_MS, 600_000, 'the cooldown doubles up to ten minutes')
})

t.test('a probe whose instance was killed lapses: another attempt probes after the lease', { skip }, async (t) => {
  const { gate } = destinations(t, { breakerFailures: 1, breakerCooldownMs: 100, leaseMs: 300 })
  await gate.settle('h.example', { kind: 'failed' }, { probe: false })
  await sleep(120)
  t.match(await gate.admit('j1', '*', 'h.example'), { go: true, probe: true })
  // j1's instance dies before it settles.
  t.match(await gate.admit('j2', '*', 'h.example'), { go: false, reason: 'breaker' })
  await sleep(320)
  t.match(await gate.admit('j2', '*', 'h.example'), { go: true, probe: true }, 'the lapsed probe no longer holds the host')
})

t.test('a pause the destination asks for holds every job of the host; now it is 429 with when to come back', { skip }, async (t) => {
  const { gate } = destinations(t)
  await gate.settle('feishu.example', { kind: 'ok', pauseUntil: Date.now() + 1500 }, { probe: false })
  t.match(await gate.admit('j', '*', 'feishu.example'), { go: false, reason: 'paused' })
  await t.rejects(gate.admitNow('feishu.example'), { code: 'RATE_LIMITED', statusCode: 429, details: { reason: 'destination_rate_limited', retry_after_seconds: 2 } })
  t.match((await gate.list(null))[0], { state: 'paused', paused_by: 'rate_limited', consecutive_failures: 0 })
  t.ok(went(await gate.admit('j', '*', 'other.example')), 'other hosts are not slowed')
})

t.test('a limit spaces admissions at 1/N s, for queued and now alike', { skip }, async (t) => {
  const { gate } = destinations(t, { limits: parseHostLimits('limited.example=5/s') })
  t.ok(went(await gate.admit('j1', '*', 'limited.example')))
  const next = await gate.admit('j2', '*', 'limited.example')
  t.match(next, { go: false, reason: 'limited' })
  await t.rejects(gate.admitNow('limited.example'), { code: 'RATE_LIMITED', details: { reason: 'destination_limit', limit: 5, retry_after_seconds: 1, variable: 'RESEND_HOST_LIMITS' } })
  t.match(await gate.list(null), [{ host: 'limited.example', in_flight: 1, state: 'limited', last_attempt_at: null }], 'listed while a job is in flight')
  await sleep(210)
  await gate.admitNow('limited.example')
  await gate.settle('limited.example', { kind: 'ok' }, { probe: false })
  t.match((await gate.list(null))[0], { host: 'limited.example', limit_per_second: 5, state: 'limited' })
})
