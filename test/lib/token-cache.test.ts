import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { createTokenCache, reuseMillis } from '../../src/lib/token-cache.js'

t.test('token cache: a tenth of the duration at most, single flight, failures dropped', async (t) => {
  t.equal(reuseMillis(60, 86399), 60_000)
  t.equal(reuseMillis(60, 100), 10_000)
  t.equal(reuseMillis(60, 5), 500)
  const cache = createTokenCache({ reuseSeconds: 60, maxEntries: 2 })
  let n = 0
  const exchange = async () => { await sleep(10); return { token: { access_token: `t${++n}`, expires_in: 1, token_type: 'Bearer' }, logid: `log-${n}` } }
  const request = { kid: 'k', issuerId: 'app:i', durationSeconds: 600 }
  const [a, b] = await Promise.all([cache.get(request, exchange), cache.get(request, exchange)])
  t.same([a.outcome, b.outcome, a.token.access_token, b.token.access_token, a.logid, b.logid], ['miss', 'shared', 't1', 't1', 'log-1', 'log-1'])
  t.same(await cache.get(request, exchange), { token: a.token, outcome: 'hit' }, 'a hit made no exchange: no logid')
  await cache.get({ ...request, kid: 'k2' }, exchange)
  await cache.get({ ...request, kid: 'k3' }, exchange)
  t.equal(cache.size, 2, 'bounded')
  await t.rejects(cache.get({ ...request, kid: 'bad' }, async () => { throw new Error('refused') }), /refused/)
  t.equal((await cache.get({ ...request, kid: 'bad' }, exchange)).outcome, 'miss')
  t.equal((await cache.get({ ...request, durationSeconds: 0.001 * 5 }, exchange)).outcome, 'off', 'a window under a millisecond is no cache')
  t.equal((await createTokenCache({ reuseSeconds: 0 }).get(request, exchange)).outcome, 'off')

  // More exchanges in flight than the cache holds: none is evicted, each caller gets its own token.
  const small = createTokenCache({ reuseSeconds: 60, maxEntries: 2, maxPending: 10 })
  const own = async (kid: string) => { await sleep(20); return { token: { access_token: `token-${kid}`, expires_in: 1, token_type: 'Bearer' } } }
  const answers = await Promise.all(['a', 'b', 'c', 'd', 'e'].map(async (kid) => await small.get({ ...request, kid }, async () => await own(kid))))
  t.same(answers.map((answer) => answer.token.access_token), ['token-a', 'token-b', 'token-c', 'token-d', 'token-e'])
  t.equal(small.pending, 0)
  t.equal(small.size, 2)
})
