import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { Redis } from 'ioredis'
import { freePort, jsonLine, startNode, type Child } from './processes.js'

/**
 * npm run bench:listing: GET /resend/jobs with 100,000 jobs queued (BENCH_JOBS), and /health while four
 * connections list back to back. The jobs are accepted by the built server (RESEND_WORKERS=0: nothing delivers
 * them) on the Redis of REDIS_URL, under a key prefix of the bench's own, removed at the end.
 */
const JOBS = Number(process.env.BENCH_JOBS ?? 100_000)
const API_KEY = 'bench-listing-key-0123456789'
const percentile = (values: number[], p: number): number => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.ceil(p * values.length) - 1)] as number

async function timed (url: string): Promise<number> {
  const started = performance.now()
  const res = await fetch(url, { headers: { 'x-api-key': API_KEY } })
  await res.arrayBuffer()
  if (res.status !== 200) throw new Error(`${url}: ${res.status}`)
  return performance.now() - started
}

async function main (): Promise<void> {
  const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
  const prefix = `bench-listing-${randomBytes(4).toString('hex')}:`
  const redis = new Redis(redisUrl)
  const children: Child[] = []
  try {
    const mocks = await startNode('build/bench/mocks.js', {}, (line) => jsonLine<{ feishu: number }>(line, 'feishu'))
    children.push(mocks.child)
    const feishu = (mocks.value as { feishu: number }).feishu
    const port = await freePort()
    const service = await startNode('dist/server.js', {
      HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'info', ROUTES: 'resend', EXPECTED_COZE_API_KEY: API_KEY,
      RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${feishu}`, RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: randomBytes(32).toString('base64'),
      REDIS_URL: redisUrl, REDIS_KEY_PREFIX: prefix, RESEND_WORKERS: '0', RESEND_MAX_QUEUED: '10000000', RESEND_MAX_QUEUED_BYTES: String(4 * 1024 ** 3),
      RATE_LIMIT_MAX: '10000000', DOCS_ENABLED: 'false'
    }, (line) => (line.includes('Server listening at') ? true : undefined))
    children.push(service.child)
    for (let i = 0; i < 100; i++) {
      if (await fetch(`http://127.0.0.1:${port}/health`).then((res) => res.ok, () => false)) break
      await sleep(100)
    }
    const base = `http://127.0.0.1:${port}`
    const body = JSON.stringify({ location: `http://127.0.0.1:${feishu}/open-apis/bitable/v1/apps/A/tables/T/records/batch_create`, params: { records: [{ fields: { amount: 14.91 } }] }, delivery: 'queued' })
    process.stderr.write(`accepting ${JOBS} jobs\n`)
    const filled = await autocannon({ url: `${base}/resend`, method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': API_KEY }, body, amount: JOBS, connections: 32 })
    process.stderr.write(`  ${filled['2xx']} accepted in ${(filled.duration).toFixed(1)} s (${Math.round(filled['2xx'] / filled.duration)}/s), ${filled.non2xx} refused\n`)
    await sleep(6000) // the queue's counts are read every 5 s

    const listings: Record<string, number[]> = {}
    for (const path of ['/resend/jobs?limit=20', '/resend/jobs?status=queued&limit=100']) {
      await timed(`${base}${path}`)
      listings[path] = []
      for (let i = 0; i < 30; i++) listings[path]?.push(await timed(`${base}${path}`))
    }
    // /health every 20 ms while four connections list back to back.
    const probes: number[] = []
    let probing = true
    const prober = (async () => {
      while (probing) {
        const started = performance.now()
        await (await fetch(`${base}/health`)).arrayBuffer()
        probes.push(performance.now() - started)
        await sleep(20)
      }
    })()
    const load = await autocannon({ url: `${base}/resend/jobs?limit=100`, headers: { 'x-api-key': API_KEY }, connections: 4, duration: 10 })
    probing = false
    await prober
    const metrics = await (await fetch(`${base}/metrics`)).text()
    const queued = /\nresend_queue_jobs\{status="queued"\} (\d+)/.exec(metrics)?.[1]
    const bytes = /\nresend_queue_bytes (\d+)/.exec(metrics)?.[1]
    const report = {
      jobs_queued: Number(queued),
      queue_bytes: Number(bytes),
      listing_ms: Object.fromEntries(Object.entries(listings).map(([path, values]) => [path, { p50: percentile(values, 0.5), p99: percentile(values, 0.99) }])),
      listing_under_load: { requests_per_second: load.requests.average, p99_ms: load.latency.p99, non_2xx: load.non2xx },
      health_while_listing_ms: { p50: percentile(probes, 0.5), p99: percentile(probes, 0.99), max: Math.max(...probes), probes: probes.length }
    }
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`)
  } finally {
    await Promise.all(children.map(async (child) => { await child.stop() }))
    for (const pattern of [`${prefix}*`, `{${prefix}*`]) {
      let cursor = '0'
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
        if (keys.length > 0) await redis.del(...keys)
        cursor = next
      } while (cursor !== '0')
    }
    redis.disconnect()
  }
}

await main()
