import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import t from 'tap'
import { REDIS_URL, redisKeyPrefix, startRedisServer } from '../helper.js'
import { acceptRecords, call, instance, record, skip, startFeishu, waitFor } from '../fixtures/relay-queue.js'

// Two instances on one Redis: a signal during 200 deliveries, sealed jobs tampered with in Redis, a Redis restarted
// empty (split from relay-queue.test.ts, so that each file stays well inside tap's time per file on a loaded machine).
for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
  t.test(`${signal} of one of two instances during 200 deliveries: every record once, every job delivered`, { skip }, async (t) => {
    const feishu = await startFeishu(t, 1_000_000)
    // Slow enough that many are in flight when the signal comes.
    let n = 0
    feishu.behaviour = () => (n++ % 3 === 0 ? 'slow' : 'ok')
    const prefix = redisKeyPrefix(t, 'relay')
    const [a, b] = await Promise.all([instance(t, feishu, prefix, { RESEND_WORKERS: '8' }), instance(t, feishu, prefix, { RESEND_WORKERS: '8' })])
    const ids = await acceptRecords(t, feishu, [a.url, b.url], 200, signal)
    t.ok(await waitFor(() => feishu.records.size >= 20, 60_000), 'deliveries under way')
    a.child.kill(signal)
    const code = await a.exited
    if (signal === 'SIGTERM') t.equal(code, 0, 'a clean exit')
    t.ok(await waitFor(() => feishu.records.size === 200, 120_000), `every record arrived (${feishu.records.size})`)
    t.same([...feishu.records.values()].filter((count) => count !== 1), [], 'none twice')
    let delivered = 0
    let others: unknown[] = []
    await waitFor(async () => {
      const views = await Promise.all(ids.map(async (id) => await call(b.url, 'GET', `/resend/jobs/${id}`)))
      delivered = views.filter((view) => view.data.status === 'delivered').length
      others = views.filter((view) => view.data.status !== 'delivered').map((view) => view.data)
      return delivered === 200
    }, 120_000)
    t.equal(delivered, 200, `the survivor reports every job delivered${others.length === 0 ? '' : `; not yet: ${JSON.stringify(others)}`}`)
  })
}

t.test('sealed jobs swapped, truncated or replayed under another id in Redis: refused, never delivered anywhere', { skip }, async (t) => {
  const feishu = await startFeishu(t, 1_000_000)
  const prefix = redisKeyPrefix(t, 'relay')
  const accepting = await instance(t, feishu, prefix, { RESEND_WORKERS: '0' })
  const [first, second, third] = await acceptRecords(t, feishu, [accepting.url], 3, 'tampered') as [string, string, string]
  const redis = new Redis(REDIS_URL)
  t.teardown(() => { redis.disconnect() })
  const key = (id: string): string => `{${prefix}resend}:resend:${id}`
  const [dataFirst, dataSecond, dataThird] = await Promise.all([first, second, third].map(async (id) => await redis.hget(key(id), 'data'))) as [string, string, string]
  // Swapped: each job holds the other's sealed request. Truncated: the third loses its tail.
  await redis.hset(key(first), 'data', dataSecond)
  await redis.hset(key(second), 'data', dataFirst)
  const sealed = (JSON.parse(dataThird) as { sealed: string }).sealed
  await redis.hset(key(third), 'data', JSON.stringify({ sealed: sealed.slice(0, sealed.length - 40) }))
  // Replayed: the first job's original, intact request copied into a new job of another id.
  const replay = randomUUID()
  const fields = await redis.hgetall(key(first))
  await redis.hset(key(replay), { ...fields, data: dataFirst })
  await redis.lpush(`{${prefix}resend}:resend:wait`, replay)
  const delivering = await instance(t, feishu, prefix, { RESEND_WORKERS: '2' })
  for (const id of [first, second, third, replay]) {
    let status: unknown
    let error: unknown
    await waitFor(async () => {
      const view = await call(delivering.url, 'GET', `/resend/jobs/${id}`)
      status = view.data.status
      error = (view.data.last_attempt as { error?: string } | null)?.error
      return status === 'failed'
    }, 30_000)
    t.equal(status, 'failed', `${id === replay ? 'the replay' : id}: failed`)
    t.match(error, /^unreadable/, 'as unreadable')
  }
  t.equal(feishu.upstream.requests.length, 0, 'nothing reached any destination, no token was fetched')
})

t.test('a Redis restarted empty: the service goes on, and /ready and the metrics tell the truth', { skip }, async (t) => {
  const feishu = await startFeishu(t, 1_000_000)
  const redisServer = await startRedisServer(t)
  const a = await instance(t, feishu, 'restart:', { REDIS_URL: redisServer.url, RESEND_WORKERS: '0', STATE_STORE: 'redis', ROUTES: 'resend,augment' })
  const [lost] = await acceptRecords(t, feishu, [a.url], 1, 'before')
  await redisServer.stop()
  await redisServer.start()
  // Back, and empty: the job accepted before is gone (a Redis that keeps nothing on disk), the service is not.
  t.ok(await waitFor(async () => (await call(a.url, 'GET', '/ready')).status === 200, 30_000), '/ready is 200 again')
  const ready = await call(a.url, 'GET', '/ready')
  t.same([ready.data.checks as Record<string, string>].map((checks) => [checks.state_store, checks.resend_queue]), [['ok', 'ok']])
  t.equal((await call(a.url, 'GET', `/resend/jobs/${String(lost)}`)).status, 404, 'the job is gone with the data')
  const after = await call(a.url, 'POST', '/resend', record(feishu, 'after'))
  t.equal(after.status, 202, 'new jobs are accepted')
  let metrics = ''
  await waitFor(async () => {
    metrics = await (await fetch(`${a.url}/metrics`)).text()
    return /\nresend_queue_jobs\{status="queued"\} 1\n/.test(metrics)
  }, 20_000)
  t.match(metrics, /\nresend_queue_jobs\{status="queued"\} 1\n/, 'the counts are Redis\'s, not remembered: the one new job')
  t.match(metrics, /\nredis_up 1\n/)
  t.match(metrics, /\nredis_writes_refused 0\n/)
  const auth = await fetch(`${a.url}/api/auth-url`)
  t.equal(auth.status, 200, 'the sign-in keeps its states in the new Redis')
})
