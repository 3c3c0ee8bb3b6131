import { createHmac } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { alertText, type Alerts, createAlerts, feishuBotSign } from '../../../src/lib/relay/alerts.js'
import { freePort, REDIS_URL, redisKeyPrefix, sendJson, skipWithoutRedis, startUpstream } from '../../helper.js'

t.test('the bot\'s signature: base64 of HMAC-SHA256 keyed with timestamp and secret, over nothing', async (t) => {
  t.equal(feishuBotSign(1599360473, 'demo'), createHmac('sha256', '1599360473\ndemo').digest('base64'))
  t.not(feishuBotSign(1599360473, 'demo'), feishuBotSign(1599360474, 'demo'), 'the timestamp is in the key')
})

t.test('one message per destination: what happened in the interval, counted', async (t) => {
  const text = alertText('open.feishu.cn', { failed: '3', last_error: 'feishu_1254045', last_attempts: '5', last_destination: 'open.feishu.cn/open-apis/bitable/v1/apps/x/tables/y/records', last_status: '/resend/jobs/abc', opened: '1', opened_failures: '5', opened_error: 'UPSTREAM_TIMEOUT', opened_cooldown: '30000', closed: '1' }, 300_000)
  t.match(text, /^【重发投递告警】open\.feishu\.cn\n/)
  t.match(text, /目标已暂停：连续 5 次失败（UPSTREAM_TIMEOUT），30 秒后试探/)
  t.match(text, /5 分钟内 3 个任务最终失败/)
  t.match(text, /最近一个：feishu_1254045，尝试 5 次，目标 open\.feishu\.cn\/open-apis\/bitable/)
  t.match(text, /状态：GET \/resend\/jobs\/abc/)
  t.match(text, /目标已恢复/)
  t.equal(alertText('h', { closed: '1' }, 30_000), '【重发投递告警】h\n目标已恢复：试探成功，投递继续', 'a recovery alone, in an interval under a minute')
  t.ok(alertText('h', { failed: '1', last_error: 'x'.repeat(5000) }, 60_000).length <= 2000, 'bounded')
  // Fields lost to a race with their expiry read as unknown, not as "undefined".
  t.equal(alertText('h', { failed: '2', opened: '1' }, 60_000), '【重发投递告警】h\n目标已暂停：连续 ? 次失败（未知），0 秒后试探\n1 分钟内 2 个任务最终失败\n最近一个：未知，尝试 ? 次，目标 h\n状态：GET ')
})

const skip = await skipWithoutRedis()

/** A bot on loopback whose answer the test decides; the texts it took. */
async function bot (t: Test, answer: (res: ServerResponse) => void) {
  const texts: string[] = []
  const upstream = await startUpstream(t, (request, res) => {
    texts.push((JSON.parse(request.body) as { content: { text: string } }).content.text)
    answer(res)
  })
  return { texts, webhook: new URL(`${upstream.url}/open-apis/bot/v2/hook/token-abc`) }
}

function alerts (t: Test, webhook: URL, intervalMs = 200, timeoutMs = 2000) {
  const redis = new Redis(REDIS_URL, { keyPrefix: redisKeyPrefix(t, 'alerts') })
  const failures: string[] = []
  const created = createAlerts({ webhook, intervalMs, redis, timeoutMs, onFailure: (reason) => { failures.push(reason) } })
  t.teardown(async () => { await created.close(); redis.disconnect() })
  return { created, failures, redis }
}

const failed = (host: string, id: string) => ({ kind: 'failed' as const, host, id, destination: `${host}/x`, error: 'UPSTREAM_ERROR', attempts: 3, statusPath: '/resend/jobs/' })

t.test('grouped across instances: one message per destination per interval, nothing sent twice', { skip }, async (t) => {
  const { texts, webhook } = await bot(t, (res) => { sendJson(res, 200, { code: 0 }) })
  const prefix = redisKeyPrefix(t, 'alerts')
  const clients = [new Redis(REDIS_URL, { keyPrefix: prefix }), new Redis(REDIS_URL, { keyPrefix: prefix })]
  const [one, two] = clients.map((redis) => createAlerts({ webhook, intervalMs: 300, redis, timeoutMs: 2000, onFailure: () => {} })) as [Alerts, Alerts]
  t.teardown(async () => {
    await one.close()
    await two.close()
    for (const redis of clients) redis.disconnect()
  })
  // Both instances see failures of one host at once: one message now, the rest after the interval, counted.
  for (let i = 0; i < 3; i++) { one.note(failed('h.example', `a${i}`)); two.note(failed('h.example', `b${i}`)) }
  for (let i = 0; i < 100 && texts.length < 2; i++) await sleep(20)
  const total = texts.reduce((sum, text) => sum + Number(/(\d+) 个任务最终失败/.exec(text)?.[1] ?? 0), 0)
  t.equal(total, 6, `six failures told in ${texts.length} messages`)
  await sleep(700)
  t.ok(texts.length <= 3, 'and no more: an interval with nothing pending sends nothing')
})

t.test('a bot that fails: its host and why, never its token; delivery is not its concern', { skip }, async (t) => {
  for (const [label, answer, pattern] of [
    ['a 500', (res: ServerResponse) => { sendJson(res, 500, { code: 0 }) }, /answered 500 with code 0$/],
    ['not JSON', (res: ServerResponse) => { res.end('<html>') }, /answered 200$/],
    ['silent', () => {}, /: TimeoutError$/]
  ] as const) {
    const { webhook } = await bot(t, answer)
    const { created, failures } = alerts(t, webhook, 200, 300)
    created.note({ kind: 'opened', host: 'down.example', failures: 5, cooldownMs: 30_000 })
    for (let i = 0; i < 100 && failures.length === 0; i++) await sleep(20)
    t.match(failures[0], pattern, `${label}: ${String(failures[0])}`)
    t.ok(failures[0]?.startsWith(webhook.host), 'it names the host')
    t.notOk(failures.join().includes('token-abc'), 'never the token in its path')
  }
  const closed = await freePort()
  const { created, failures } = alerts(t, new URL(`http://127.0.0.1:${closed}/hook/token-abc`))
  created.note({ kind: 'closed', host: 'up.example' })
  for (let i = 0; i < 100 && failures.length === 0; i++) await sleep(20)
  t.match(failures[0], new RegExp(`^127\\.0\\.0\\.1:${closed}: ECONNREFUSED$`), 'no connection')
})

t.test('closing: pending flushes are dropped, later notes ignored', { skip }, async (t) => {
  const { texts, webhook } = await bot(t, (res) => { sendJson(res, 200, { code: 0 }) })
  const { created } = alerts(t, webhook, 60_000)
  created.note(failed('c.example', 'j1'))
  for (let i = 0; i < 100 && texts.length === 0; i++) await sleep(20)
  created.note(failed('c.example', 'j2'))
  await sleep(100)
  await created.close()
  created.note(failed('c.example', 'j3'))
  await sleep(100)
  t.equal(texts.length, 1, 'the first only: the second waited for an interval that closing ended')
})

t.test('a Redis that fails: said, never thrown', { skip }, async (t) => {
  const { webhook } = await bot(t, (res) => { sendJson(res, 200, { code: 0 }) })
  const redis = new Redis(`redis://127.0.0.1:${await freePort()}`, { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0 })
  redis.on('error', () => {})
  const failures: string[] = []
  const created = createAlerts({ webhook, intervalMs: 200, redis, timeoutMs: 500, onFailure: (reason) => { failures.push(reason) } })
  created.note(failed('r.example', 'j'))
  for (let i = 0; i < 100 && failures.length === 0; i++) await sleep(20)
  t.match(failures[0], /^Redis: /)
  await created.close()
  redis.disconnect()
})
