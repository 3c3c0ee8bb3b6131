import { createHash, randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { makeTlsFiles, startRedisCluster, startTlsRedis } from '../fixtures/redis-cluster.js'
import { build, registerSecret, sendJson, startRedisServer, startUpstream, testKeys, type Upstream } from '../helper.js'

// The Redis that ECS users get: a Redis Cluster (ElastiCache cluster mode, Serverless), TLS with a private CA, and
// both. Every Redis user of the service on it, two instances at once, and a master killed under them.

const skip = await import('node:child_process').then(({ spawnSync }) => (spawnSync('redis-server', ['--version']).status === 0 ? false : 'redis-server is not installed'))
const CALLER_KEY = `cluster-caller-${randomBytes(8).toString('hex')}`
const TOKEN_SECRET = randomBytes(32).toString('base64')
const QUEUE_SECRET = randomBytes(32).toString('base64')
for (const secret of [CALLER_KEY, TOKEN_SECRET, QUEUE_SECRET]) registerSecret(secret)
const sha = (value: string): string => createHash('sha256').update(value).digest('hex')

interface Upstreams { coze: Upstream, tenant: Upstream, destination: Upstream, records: Map<string, number>, exchanges: () => number, refuse: { on: boolean } }

/** Coze (one exchange counted per token), an Augment tenant, and a destination that counts each record. */
async function upstreams (t: Test): Promise<Upstreams> {
  let exchanges = 0
  const coze = await startUpstream(t, async (_request, res) => {
    exchanges++
    await sleep(300)
    sendJson(res, 200, { access_token: `czs_cluster_${exchanges}_0123456789abcdef`, expires_in: Math.floor(Date.now() / 1000) + 900, token_type: 'Bearer' })
  })
  const tenant = await startUpstream(t, (_request, res) => { sendJson(res, 200, { access_token: 'augment-cluster-token-0123456789' }) })
  const records = new Map<string, number>()
  const refuse = { on: false }
  const destination = await startUpstream(t, (request, res) => {
    if (refuse.on) { sendJson(res, 503, { busy: true }); return }
    const key = (JSON.parse(request.body) as { key: string }).key
    records.set(key, (records.get(key) ?? 0) + 1)
    sendJson(res, 200, { code: 0 })
  })
  return { coze, tenant, destination, records, exchanges: () => exchanges, refuse }
}

function settings (redisUrl: string, ups: Upstreams, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    REDIS_URL: redisUrl,
    REDIS_CLUSTER: true,
    REDIS_KEY_PREFIX: `cluster-${randomBytes(3).toString('hex')}:`,
    STATE_STORE: 'redis',
    TOKEN_CACHE: 'redis',
    TOKEN_CACHE_SECRET: TOKEN_SECRET,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: QUEUE_SECRET,
    RESEND_RETRY_SCHEDULE: '200ms',
    RESEND_JOB_LOCK_MS: 2000,
    COZE_APPS: JSON.stringify({
      apps: { bills: { app_id: '1150000000001', api_base: ups.coze.url, jwt_audience: 'api.coze.cn', keys: [{ kid: 'k1', private_key_env: 'APP_KEY' }] } },
      callers: { workflows: { key_sha256: sha(CALLER_KEY), apps: ['bills'], routes: ['token', 'resend', 'augment'] } }
    }),
    APP_KEY: testKeys().pkcs8,
    AUGMENT_TENANT_HOSTS: `http://127.0.0.1:${ups.tenant.port}`,
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${ups.destination.port}`,
    ...extra
  }
}

type App = Awaited<ReturnType<typeof build>>['app']
const headers = { 'x-api-key': CALLER_KEY }
const signIn = async (app: App) => (await app.inject({ url: '/api/auth-url', headers })).json().data.state as string
const complete = async (app: App, state: string, ups: Upstreams) => await app.inject({ method: 'POST', url: '/api/complete-auth', headers, payload: { code: 'code-of-the-cluster-test', state, tenant_url: `${ups.tenant.url}/` } })
const queue = async (app: App, ups: Upstreams, key: string) => await app.inject({ method: 'POST', url: '/resend', headers, payload: { location: `${ups.destination.url}/records`, params: { key }, delivery: 'queued' } })

async function waitFor (check: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await check()) return true
    await sleep(100)
  }
  return await check()
}

async function statusOf (app: App, id: string): Promise<unknown> {
  return (await app.inject({ url: `/resend/jobs/${id}`, headers })).json().data.status
}

t.test('misconfigurations stop the start, saying which setting to change', { skip }, async (t) => {
  const cluster = await startRedisCluster(t)
  const standalone = await startRedisServer(t)
  const refusal = async (config: Record<string, unknown>): Promise<string> => await build(t, { STATE_STORE: 'redis', ...config }).then(() => 'started', (err: Error) => err.message)
  t.match(await refusal({ REDIS_URL: cluster.urls[0] }), /is a node of a Redis Cluster: set REDIS_CLUSTER=true/)
  t.match(await refusal({ REDIS_URL: standalone.url, REDIS_CLUSTER: true }), /is not in cluster mode: unset REDIS_CLUSTER/)
  t.match(await refusal({ REDIS_URL: `${cluster.urls[0] as string},${cluster.urls[1] as string}` }), /REDIS_URL names several nodes: set REDIS_CLUSTER=true/)
  t.match(await refusal({ REDIS_URL: 'redis://127.0.0.1:1', REDIS_CLUSTER: true }), /Redis at 127\.0\.0\.1:1 \(REDIS_URL\) cannot be reached: it does not answer \(ECONNREFUSED\)/)
})

t.test('two instances on a 3-master cluster: states, one exchange, a shared rate limit, queued jobs once; keys spread over the slots', { skip }, async (t) => {
  const cluster = await startRedisCluster(t)
  const ups = await upstreams(t)
  const config = settings(cluster.urls.slice(0, 2).join(', '), ups)
  const [a, b] = [(await build(t, config)).app, (await build(t, config)).app]
  t.same([(await a.inject('/ready')).json().data.checks, (await b.inject('/ready')).statusCode], [{ state_store: 'ok', token: 'ok', token_cache: 'ok', resend: 'ok', resend_queue: 'ok' }, 200])

  const states = await Promise.all(Array.from({ length: 20 }, async () => await signIn(a)))
  const completed = await Promise.all(states.map(async (state) => (await complete(b, state, ups)).statusCode))
  t.same(completed, Array(20).fill(200), '20 states made on one instance, completed on the other')
  t.equal((await complete(a, states[0] as string, ups)).statusCode, 400, 'and used once')

  const tokens = await Promise.all(Array.from({ length: 20 }, async (_unused, i) => await (i % 2 === 0 ? a : b).inject({ method: 'POST', url: '/token', headers, payload: { app: 'bills', session_name: 'user-cluster' } })))
  t.same([...new Set(tokens.map((res) => res.statusCode))], [200])
  t.equal(new Set(tokens.map((res) => res.json().data.access_token)).size, 1, 'one token for all')
  t.equal(ups.exchanges(), 1, '20 concurrent /token for one session: 1 exchange at Coze')

  const ids = (await Promise.all(Array.from({ length: 60 }, async (_unused, i) => await queue(i % 2 === 0 ? a : b, ups, `record-${i}`)))).map((res) => res.json().data.id as string)
  t.equal(new Set(ids).size, 60)
  t.ok(await waitFor(() => ups.records.size === 60, 60_000), `60 queued jobs delivered (${ups.records.size})`)
  t.same([...ups.records.values()].filter((count) => count !== 1), [], 'each once')
  t.ok(await waitFor(async () => (await Promise.all(ids.map(async (id) => await statusOf(b, id)))).every((status) => status === 'delivered'), 20_000), 'each found delivered')

  // Keys of different apps and sessions spread over the slots: the cluster's masters each hold some.
  const holding = new Set<number>()
  for (const port of await cluster.masters()) if (Number(await cluster.cli(port, 'dbsize')) > 0) holding.add(port)
  t.ok(holding.size >= 2, `keys on ${holding.size} of 3 masters`)

  const limited = settings(cluster.urls[2] as string, ups, { RATE_LIMIT_MAX: 20 })
  const [c, d] = [(await build(t, limited)).app, (await build(t, limited)).app]
  const statuses: number[] = []
  for (let i = 0; i < 30; i++) statuses.push((await (i % 2 === 0 ? c : d).inject({ url: '/api/auth-url', headers, remoteAddress: '198.51.100.7' })).statusCode)
  t.equal(statuses.filter((status) => status !== 429).length, 20, 'a rate limit of 20 holds across both instances for one address')
})

t.test('RESEND_QUEUE_PARTITIONS=12, jobs to 20 hosts: the queue on several masters, each job delivered once, found by status and listing', { skip }, async (t) => {
  const cluster = await startRedisCluster(t)
  const ups = await upstreams(t)
  const hosts = await Promise.all(Array.from({ length: 20 }, async () => await startUpstream(t, (request, res) => {
    const key = (JSON.parse(request.body) as { key: string }).key
    ups.records.set(key, (ups.records.get(key) ?? 0) + 1)
    sendJson(res, 200, { code: 0 })
  })))
  const config = settings(cluster.urls[0] as string, ups, { RESEND_QUEUE_PARTITIONS: 12, RESEND_WORKERS: 12, RESEND_ALLOWED_HOSTS: hosts.map((host) => host.url).join(',') })
  const [a, b] = [(await build(t, config)).app, (await build(t, config)).app]
  const prefix = config.REDIS_KEY_PREFIX as string
  const masters = new Set(await Promise.all(Array.from({ length: 12 }, async (_unused, i) => await cluster.masterOf(`{${prefix}resend-${i}}:x`))))
  t.ok(masters.size >= 2, `the 12 partitions sit on ${masters.size} masters`)
  const ids: string[] = []
  for (let i = 0; i < 100; i++) {
    const res = await (i % 2 === 0 ? a : b).inject({ method: 'POST', url: '/resend', headers, payload: { location: `${(hosts[i % 20] as Upstream).url}/records`, params: { key: `p-${i}` }, delivery: 'queued' } })
    ids.push(res.json().data.id as string)
  }
  t.ok(await waitFor(() => ups.records.size === 100, 60_000), `100 jobs to 20 hosts delivered (${ups.records.size})`)
  t.same([...ups.records.values()].filter((count) => count !== 1), [], 'each once')
  const statuses = await Promise.all(ids.map(async (id, i) => await statusOf(i % 2 === 0 ? b : a, id)))
  t.same([...new Set(statuses)], ['delivered'], 'each found by its status, whatever its partition')
  const listed = (await a.inject({ url: '/resend/jobs?status=delivered&limit=100', headers })).json().data.jobs as Array<{ id: string }>
  t.same(listed.map((job) => job.id).sort(), [...ids].sort(), 'and by the listing')
})

t.test('kill -9 of the master that holds the queue: ready again within 30 s, nothing lost that was accepted 2 s before, nothing twice', { skip }, async (t) => {
  const cluster = await startRedisCluster(t)
  const ups = await upstreams(t)
  const config = settings(cluster.urls.join(','), ups)
  const prefix = config.REDIS_KEY_PREFIX as string
  const [a, b] = [(await build(t, config)).app, (await build(t, config)).app]
  // Waiting for their next attempt when the master dies.
  ups.refuse.on = true
  const before = await Promise.all(Array.from({ length: 20 }, async (_unused, i) => (await queue(i % 2 === 0 ? a : b, ups, `before-${i}`)).json().data.id as string))
  await sleep(2000)
  const port = await cluster.masterOf(`{${prefix}resend}:x`)
  const victim = cluster.nodes.find((node) => node.port === port)
  t.ok(victim, `the master of the queue's slot: ${port}`)
  const killedAt = performance.now()
  await victim?.kill()
  // Requests that need Redis, on both instances, every 100 ms: a 503 or a fallback, never a hang or a 500.
  const failures: number[] = []
  const answered: number[] = []
  let readyBoth = -1
  while (performance.now() - killedAt < 60_000) {
    const started = performance.now()
    const results = await Promise.all([a, b].flatMap((app) => [app.inject({ url: '/api/auth-url', headers }), app.inject('/ready')]))
    answered.push(performance.now() - started)
    for (const res of results) t.ok([200, 503].includes(res.statusCode), `answered ${res.statusCode}`, { diagnostic: res.statusCode === 500 })
    if (results.some((res) => res.statusCode !== 200)) failures.push(performance.now() - killedAt)
    else if (readyBoth < 0 && await cluster.healthy()) readyBoth = performance.now() - killedAt
    if (readyBoth > 0 && performance.now() - killedAt > readyBoth + 2000) break
    await sleep(100)
  }
  t.ok(readyBoth > 0 && readyBoth < 30_000, `both instances ready again ${(readyBoth / 1000).toFixed(1)} s after the kill`)
  t.ok(Math.max(...answered) < 10_000, `every request answered within ${Math.max(...answered).toFixed(0)} ms`)
  const window = failures.length === 0 ? 0 : Math.max(...failures)
  t.comment(`failover: requests failed (503) for ${(window / 1000).toFixed(1)} s after the kill; both ready after ${(readyBoth / 1000).toFixed(1)} s`)
  ups.refuse.on = false
  const after = await Promise.all(Array.from({ length: 10 }, async (_unused, i) => await queue(i % 2 === 0 ? a : b, ups, `after-${i}`)))
  t.same(after.map((res) => res.statusCode), Array(10).fill(202), 'new jobs accepted')
  t.ok(await waitFor(() => ups.records.size === 30, 60_000), `every job delivered: ${ups.records.size} of 30`)
  t.same([...ups.records.values()].filter((count) => count !== 1), [], 'none twice')
  t.same((await Promise.all(before.map(async (id) => await statusOf(a, id)))).filter((status) => status !== 'delivered'), [], 'the jobs accepted before the kill, delivered')
})

t.test('TLS with a private CA (REDIS_TLS_CA_FILE): states work; a CA that did not sign the certificate never starts, saying so', { skip }, async (t) => {
  const tls = await makeTlsFiles(t)
  const redis = await startTlsRedis(t, tls)
  const ups = await upstreams(t)
  const common = { STATE_STORE: 'redis', REDIS_URL: redis.url, AUGMENT_TENANT_HOSTS: `http://127.0.0.1:${ups.tenant.port}` }
  const [a, b] = [(await build(t, { ...common, REDIS_TLS_CA_FILE: tls.ca })).app, (await build(t, { ...common, REDIS_TLS_CA_FILE: tls.ca })).app]
  const state = (await a.inject('/api/auth-url')).json().data.state as string
  t.equal((await b.inject({ method: 'POST', url: '/api/complete-auth', payload: { code: 'code-over-tls', state, tenant_url: `${ups.tenant.url}/` } })).statusCode, 200)
  t.equal((await a.inject('/ready')).json().data.checks.state_store, 'ok')
  const refused = await build(t, { ...common, REDIS_TLS_CA_FILE: tls.otherCa }).then(() => 'started', (err: Error) => err.message)
  t.match(refused, /TLS certificate does not verify \(.*\): set REDIS_TLS_CA_FILE to the CA that signed it/)
  const none = await build(t, common).then(() => 'started', (err: Error) => err.message)
  t.match(none, /TLS certificate does not verify/, 'the system\'s CAs alone do not trust a private one')
  const plain = await build(t, { ...common, REDIS_URL: redis.url.replace('rediss:', 'redis:') }).then(() => 'started', (err: Error) => err.message)
  t.match(plain, /cannot be reached/, 'redis:// to a TLS port')
})

t.test('a TLS cluster, as ElastiCache Serverless is: states, the token cache and queued delivery', { skip }, async (t) => {
  const tls = await makeTlsFiles(t)
  const cluster = await startRedisCluster(t, tls)
  const ups = await upstreams(t)
  const config = settings(cluster.urls[0] as string, ups, { REDIS_TLS_CA_FILE: tls.ca })
  const [a, b] = [(await build(t, config)).app, (await build(t, config)).app]
  const state = await signIn(a)
  t.equal((await complete(b, state, ups)).statusCode, 200, 'a state made on one, completed on the other')
  const tokens = await Promise.all([a, b, a, b].map(async (app) => await app.inject({ method: 'POST', url: '/token', headers, payload: { app: 'bills' } })))
  t.equal(new Set(tokens.map((res) => res.json().data.access_token)).size, 1)
  t.equal(ups.exchanges(), 1, 'one exchange for both instances')
  const ids = await Promise.all(Array.from({ length: 10 }, async (_unused, i) => (await queue(i % 2 === 0 ? a : b, ups, `tls-${i}`)).json().data.id as string))
  t.ok(await waitFor(() => ups.records.size === 10, 30_000), `queued jobs delivered over TLS (${ups.records.size})`)
  t.ok(await waitFor(async () => await statusOf(b, ids[0] as string) === 'delivered', 10_000), 'and found delivered')
})
