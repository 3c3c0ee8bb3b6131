import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import autocannon from 'autocannon'
import { SignJWT } from 'jose'
import { Pool } from 'undici'
import { importRsaPrivateKey } from '../src/lib/coze-jwt.js'
import { ROOT, cpuMs, freePort, jsonLine, rssMb, startNode, type Child } from './processes.js'

/**
 * npm run bench: every scenario beside its ceiling, measured in one run on this machine, then checked against
 * its target. Everything listens on 127.0.0.1; every request loop is bounded in time or count.
 */

const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32)
const DURATION = Number(process.env.BENCH_DURATION ?? 10)
const WARMUP = Number(process.env.BENCH_WARMUP ?? 3)
const AUTH_URL_REQUESTS = Number(process.env.BENCH_AUTH_URL_REQUESTS ?? 100_000)
// Each throughput target is measured beside its ceiling this many times, alternating; the median ratio counts.
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const API_KEY = 'bench-service-key'
const KID = '_v0VjcMlLdQc3tRTD3jC5Xz29TUnKQOhtuD5k-gpyf4'
const FEISHU_PATH = '/open-apis/bitable/v1/apps/APP/tables/TABLE/records/batch_create'
const FIELDS = '{"收支类型":"支出","款项金额":14.91,"消费类型":"交通","流水说明":"财付通-滴滴出行","日期时间":1745809165,"收入方":"滴滴出行","支出方":"用户","备注":""}'

interface Measured {
  name: string
  rps: number
  p50: number
  p99: number
  errors: number
  peakRssMb: number | null
  /** Share of one core the server process used during the run: near 100% means the server was the limit. */
  cpuPercent: number | null
  /** The server's own CPU time per request, in µs: its cost, whatever limited the run. */
  cpuMicrosPerRequest: number | null
}

type Options = autocannon.Options

async function measure (name: string, options: Options, pid?: number): Promise<Measured> {
  await autocannon({ connections: CONNECTIONS, ...options, duration: WARMUP })
  let peak = pid === undefined ? 0 : rssMb(pid)
  const sampler = pid === undefined ? undefined : setInterval(() => { peak = Math.max(peak, rssMb(pid)) }, 100)
  const cpuBefore = pid === undefined ? 0 : cpuMs(pid)
  const started = performance.now()
  const result = await autocannon({ connections: CONNECTIONS, duration: DURATION, ...options })
  const wallMs = performance.now() - started
  const cpuUsed = pid === undefined ? 0 : cpuMs(pid) - cpuBefore
  if (sampler !== undefined) clearInterval(sampler)
  const errors = result.errors + result.timeouts + result.non2xx + (result.mismatches ?? 0)
  const measured = {
    name,
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors,
    peakRssMb: pid === undefined ? null : Math.round(peak),
    cpuPercent: pid === undefined ? null : Math.round((100 * cpuUsed) / wallMs),
    cpuMicrosPerRequest: pid === undefined ? null : Math.round((1000 * cpuUsed) / Math.max(1, result.requests.total))
  }
  process.stderr.write(`  ${name}: ${Math.round(measured.rps)} req/s, p50 ${measured.p50} ms, p99 ${measured.p99} ms, errors ${errors}, server CPU ${String(measured.cpuPercent)}%\n`)
  return measured
}

/** Times `count` requests sent one after another on one keep-alive connection; reports the exact median. */
async function sequentialLatency (name: string, url: string, body: string, headers: Record<string, string>, count = 3000): Promise<Measured> {
  const client = new Pool(new URL(url).origin, { connections: 1 })
  const { pathname } = new URL(url)
  const times: number[] = []
  let errors = 0
  try {
    for (let i = 0; i < count + 300; i++) {
      const started = performance.now()
      const response = await client.request({ path: pathname, method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body })
      await response.body.dump()
      if (response.statusCode !== 200) errors++
      // The first 300 warm the path up.
      if (i >= 300) times.push(performance.now() - started)
    }
  } finally {
    await client.close()
  }
  times.sort((a, b) => a - b)
  const at = (q: number): number => Number((times[Math.min(times.length - 1, Math.floor(q * times.length))] as number).toFixed(3))
  const total = times.reduce((sum, time) => sum + time, 0)
  const measured = { name, rps: (1000 * times.length) / total, p50: at(0.5), p99: at(0.99), errors, peakRssMb: null, cpuPercent: null, cpuMicrosPerRequest: null }
  process.stderr.write(`  ${name}: p50 ${measured.p50} ms, p99 ${measured.p99} ms, errors ${errors}\n`)
  return measured
}

/** RS256 signatures per second with the same key and nothing else running, as many in flight as the load has. */
async function signaturesPerSecond (pem: string, seconds: number): Promise<number> {
  const key = await importRsaPrivateKey(pem)
  let count = 0
  const deadline = performance.now() + seconds * 1000
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline) {
      const now = Math.floor(Date.now() / 1000)
      await new SignJWT({}).setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: KID }).setIssuer('app').setAudience('api.coze.cn')
        .setIssuedAt(now).setExpirationTime(now + 600).setJti(randomBytes(32).toString('base64url')).sign(key)
      count++
    }
  }
  await Promise.all(Array.from({ length: CONNECTIONS }, worker))
  return count / seconds
}

async function scrape (port: number, metric: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  const line = text.split('\n').find((row) => row.startsWith(`${metric} `))
  return Number(line?.split(' ')[1] ?? NaN)
}

async function main (): Promise<void> {
  const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const children: Child[] = []
  const stopAll = async (): Promise<void> => { await Promise.all(children.map(async (child) => { await child.stop() })) }
  process.on('SIGINT', () => { void stopAll().then(() => process.exit(130)) })

  try {
    process.stderr.write('starting the mock upstreams\n')
    const mocks = await startNode('build/bench/mocks.js', {}, (line) => jsonLine<{ coze: number }>(line, 'coze'))
    children.push(mocks.child)
    const ports = mocks.value as { coze: number, feishu: number, augment: number }
    const cozeUrl = `http://127.0.0.1:${ports.coze}/api/permission/oauth2/token`

    const serviceEnv = (port: number, extra: Record<string, string>): Record<string, string> => ({
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'info',
      JWT_PRIVATE_KEY: pem, COZE_APP_ID: '1180000000001',
      EXPECTED_COZE_API_KEY: API_KEY,
      COZE_API_URL: cozeUrl,
      RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${ports.feishu}`,
      AUGMENT_TENANT_HOSTS: `http://127.0.0.1:${ports.augment}`,
      // The bench is one client sending as fast as it can: the limits are not what is measured.
      RATE_LIMIT_MAX: '10000000',
      RATE_LIMIT_AUTH_URL_MAX: '10000000',
      DOCS_ENABLED: 'false',
      ...extra
    })
    const startService = async (extra: Record<string, string>): Promise<{ port: number, pid: number, child: Child }> => {
      const port = await freePort()
      const service = await startNode('dist/server.js', serviceEnv(port, extra), (line) => (line.includes('Server listening at') ? true : undefined))
      children.push(service.child)
      return { port, pid: service.child.process.pid as number, child: service.child }
    }

    process.stderr.write('starting the ceilings\n')
    const ceilings = await startNode('build/bench/ceilings.js', { JWT_PRIVATE_KEY: pem, COZE_API_URL: cozeUrl, LOG_LEVEL: 'info' }, (line) => jsonLine<{ port: number }>(line, 'port'))
    children.push(ceilings.child)
    const ceilingPort = (ceilings.value as { port: number }).port
    const ceilingPid = ceilings.child.process.pid as number

    const signatures = await signaturesPerSecond(pem, 5)
    process.stderr.write(`  RS256 signatures: ${Math.round(signatures)}/s\n`)

    const tokenBody = JSON.stringify({ public_key: KID, coze_api_key: API_KEY, duration_seconds: 86399 })
    const jsonPost = (url: string, body: string): Options => ({ url, method: 'POST', headers: { 'content-type': 'application/json' }, body })

    process.stderr.write('measuring POST /token with the cache off, and its ceiling\n')
    const off = await startService({ COZE_TOKEN_REUSE_SECONDS: '0' })
    const tokenOff = await measure('POST /token, cache off', jsonPost(`http://127.0.0.1:${off.port}/token`, tokenBody), off.pid)
    const signAndPost = await measure('ceiling: sign + post (bare Fastify)', jsonPost(`http://127.0.0.1:${ceilingPort}/sign-and-post`, '{}'), ceilingPid)

    process.stderr.write('measuring the service with the cache on\n')
    const service = await startService({})
    const base = `http://127.0.0.1:${service.port}`
    const tokenOn = await measure('POST /token, cache on', jsonPost(`${base}/token`, tokenBody), service.pid)
    const health = await measure('GET /health', { url: `${base}/health` }, service.pid)
    const hello = await measure('ceiling: hello world (bare Fastify)', { url: `http://127.0.0.1:${ceilingPort}/hello` }, ceilingPid)
    // Not targets: the service's own answers from a bare server, to tell the answers' cost from the service's.
    const sameHealthOptions = { url: `http://127.0.0.1:${ceilingPort}/same-health` }
    const sameTokenOptions = jsonPost(`http://127.0.0.1:${ceilingPort}/same-token`, tokenBody)
    const sameHealth = await measure('reference: the /health answer (bare Fastify)', sameHealthOptions, ceilingPid)
    const sameToken = await measure('reference: the /token answer, body validated (bare Fastify)', sameTokenOptions, ceilingPid)

    const location = `http://127.0.0.1:${ports.feishu}${FEISHU_PATH}`
    const resendBody = JSON.stringify({
      location,
      headers: { Authorization: 'Bearer t-bench' },
      params: { records: [{ fields: FIELDS }] },
      commands: { json_parse: ['$.params.records[*].fields'] }
    })
    // Latency added by the relay: one request at a time (so the median is the path's cost, not queueing),
    // each timed here, since autocannon's percentiles have a resolution of a millisecond.
    const resend = await sequentialLatency('POST /resend (one at a time)', `${base}/resend`, resendBody, { 'x-api-key': API_KEY })
    const direct = await sequentialLatency('ceiling: the same request straight to the mock (one at a time)', location, JSON.stringify({ records: [{ fields: JSON.parse(FIELDS) }] }), {})
    const resendThroughput = await measure('POST /resend', { ...jsonPost(`${base}/resend`, resendBody), headers: { 'content-type': 'application/json', 'x-api-key': API_KEY } }, service.pid)

    const tenantUrl = `http://127.0.0.1:${ports.augment}/`
    const flowOptions = {
      url: base,
      requests: [
        {
          method: 'GET',
          path: '/api/auth-url',
          onResponse: (_status: number, body: string, context: Record<string, unknown>) => { context.state = (JSON.parse(body) as { data: { state: string } }).data.state }
        },
        {
          method: 'POST',
          path: '/api/complete-auth',
          headers: { 'content-type': 'application/json' },
          setupRequest: (request: Record<string, unknown>, context: Record<string, unknown>) => ({ ...request, body: JSON.stringify({ code: 'bench-code', state: context.state, tenant_url: tenantUrl }) })
        }
      ]
    } as Options
    const flow = await measure('GET /api/auth-url + POST /api/complete-auth', flowOptions, service.pid)

    // More rounds of each throughput pair, alternating scenario and ceiling, so that a burst of load from
    // elsewhere on the machine moves one round, not the verdict.
    const rounds: Record<string, number[]> = {
      tokenOff: [tokenOff.rps / signAndPost.rps],
      tokenOn: [tokenOn.rps / health.rps],
      health: [health.rps / hello.rps],
      flow: [flow.rps / health.rps],
      healthOverhead: [health.rps / sameHealth.rps],
      tokenOnOverhead: [tokenOn.rps / sameToken.rps]
    }
    const push = (key: string, value: number): void => { (rounds[key] as number[]).push(value) }
    for (let round = 2; round <= ROUNDS; round++) {
      process.stderr.write(`round ${round} of ${ROUNDS}\n`)
      const offAgain = await measure('POST /token, cache off', jsonPost(`http://127.0.0.1:${off.port}/token`, tokenBody), off.pid)
      push('tokenOff', offAgain.rps / (await measure('ceiling: sign + post (bare Fastify)', jsonPost(`http://127.0.0.1:${ceilingPort}/sign-and-post`, '{}'), ceilingPid)).rps)
      const onAgain = await measure('POST /token, cache on', jsonPost(`${base}/token`, tokenBody), service.pid)
      const healthAgain = await measure('GET /health', { url: `${base}/health` }, service.pid)
      const helloAgain = await measure('ceiling: hello world (bare Fastify)', { url: `http://127.0.0.1:${ceilingPort}/hello` }, ceilingPid)
      const flowAgain = await measure('GET /api/auth-url + POST /api/complete-auth', flowOptions, service.pid)
      push('tokenOn', onAgain.rps / healthAgain.rps)
      push('health', healthAgain.rps / helloAgain.rps)
      push('flow', flowAgain.rps / healthAgain.rps)
      push('healthOverhead', healthAgain.rps / (await measure('reference: the /health answer (bare Fastify)', sameHealthOptions, ceilingPid)).rps)
      push('tokenOnOverhead', onAgain.rps / (await measure('reference: the /token answer, body validated (bare Fastify)', sameTokenOptions, ceilingPid)).rps)
    }
    await off.child.stop()
    const median = (values: number[]): number => {
      const sorted = [...values].sort((a, b) => a - b)
      const middle = Math.floor(sorted.length / 2)
      return sorted.length % 2 === 1 ? sorted[middle] as number : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2
    }

    // The same service process, so its RSS at the end is the RSS after the whole bench.
    process.stderr.write(`measuring memory: ${AUTH_URL_REQUESTS} GET /api/auth-url with the memory store\n`)
    const rssBefore = rssMb(service.pid)
    const flood = await autocannon({ url: `${base}/api/auth-url`, connections: CONNECTIONS, amount: AUTH_URL_REQUESTS })
    const rssAfter = rssMb(service.pid)
    const stored = await scrape(service.port, 'oauth_states_stored')
    const floodErrors = flood.errors + flood.timeouts + flood.non2xx
    const serviceFinalRss = Math.round(rssAfter)

    const ratio = (key: string): number => median(rounds[key] as number[])
    // The same comparison by the servers' own CPU cost per request: what the ratio would be if the server,
    // not the load generator sharing its cores, were the limit.
    const costRatio = (a: Measured, b: Measured): number | null =>
      a.cpuMicrosPerRequest === null || b.cpuMicrosPerRequest === null ? null : b.cpuMicrosPerRequest / Math.max(1, a.cpuMicrosPerRequest)
    const scenarios = [
      { scenario: 'POST /token, cache off', key: 'tokenOff', measured: tokenOff, ceiling: signAndPost, value: ratio('tokenOff'), target: '>= 0.85', ok: ratio('tokenOff') >= 0.85, limit: 'RSA signing: CPU-bound, spread over libuv\'s thread pool' },
      { scenario: 'POST /token, cache on', key: 'tokenOn', measured: tokenOn, ceiling: health, value: ratio('tokenOn'), target: '>= 0.70', ok: ratio('tokenOn') >= 0.70, limit: 'request handling: validation, key check, cache lookup, serialization' },
      { scenario: 'GET /health', key: 'health', measured: health, ceiling: hello, value: ratio('health'), target: '>= 0.90', ok: ratio('health') >= 0.90, limit: 'Fastify\'s own request cost plus the service\'s hooks' },
      { scenario: 'POST /resend, added median latency (ms)', key: '', measured: resend, ceiling: direct, value: resend.p50 - direct.p50, target: '<= 1 ms', ok: resend.p50 - direct.p50 <= 1, limit: 'a second HTTP hop: parse, check, JSONPath, send, read, answer' },
      { scenario: 'auth-url + complete-auth, memory store', key: 'flow', measured: flow, ceiling: health, value: ratio('flow'), target: '>= 0.50', ok: ratio('flow') >= 0.50, limit: 'two requests per flow, PKCE hashing, the tenant round trip' }
    ]
    const references = [
      { scenario: 'GET /health vs the same answer from bare Fastify', key: 'healthOverhead', measured: health, ceiling: sameHealth },
      { scenario: 'POST /token, cache on, vs the same answer from bare Fastify', key: 'tokenOnOverhead', measured: tokenOn, ceiling: sameToken }
    ].map((r) => ({ ...r, value: ratio(r.key) }))
    const all = [tokenOff, signAndPost, tokenOn, health, hello, sameHealth, sameToken, resend, direct, resendThroughput, flow]
    const errorsOk = all.every((m) => m.errors === 0) && floodErrors === 0
    const memory = {
      requests: AUTH_URL_REQUESTS,
      rss_before_mb: Math.round(rssBefore),
      rss_after_mb: Math.round(rssAfter),
      growth_mb: Math.round(rssAfter - rssBefore),
      growth_ok: rssAfter - rssBefore < 60,
      states_stored: stored,
      max_entries_held: stored <= 10_000,
      errors: floodErrors
    }
    const peakServiceRss = Math.max(...[tokenOff, tokenOn, health, resend, resendThroughput, flow].map((m) => m.peakRssMb ?? 0), serviceFinalRss)

    const line = (cells: string[]): string => `| ${cells.join(' | ')} |`
    const rows = [
      line(['scenario', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'peak RSS MB', 'server CPU %', 'server CPU µs/req']),
      line(['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:']),
      ...all.map((m) =>
        line([m.name, String(Math.round(m.rps)), String(m.p50), String(m.p99), String(m.errors), m.peakRssMb === null ? '-' : String(m.peakRssMb),
          m.cpuPercent === null ? '-' : String(m.cpuPercent), m.cpuMicrosPerRequest === null ? '-' : String(m.cpuMicrosPerRequest)]))
    ]
    const checks = [
      line(['target', `measured (median of ${ROUNDS} rounds)`, 'rounds', 'wanted', 'result', 'by server CPU per request']),
      line(['---', '---:', '---', '---', '---', '---:']),
      ...scenarios.map((s) => {
        const cost = s.key === '' ? null : costRatio(s.measured, s.ceiling)
        const each = s.key === '' ? '-' : (rounds[s.key] as number[]).map((value) => value.toFixed(2)).join(', ')
        return line([s.scenario, s.value.toFixed(2), each, s.target, s.ok ? 'met' : 'FALLS SHORT', cost === null ? '-' : cost.toFixed(2)])
      }),
      line(['errors in every scenario', String(errorsOk ? 0 : 'some'), '-', '0', errorsOk ? 'met' : 'FALLS SHORT', '-']),
      line([`RSS growth after ${AUTH_URL_REQUESTS} auth-url`, `${memory.growth_mb} MB`, '-', '< 60 MB', memory.growth_ok ? 'met' : 'FALLS SHORT', '-']),
      line(['OAuth states kept (OAUTH_STATE_MAX_ENTRIES 10000)', String(stored), '-', '<= 10000', memory.max_entries_held ? 'met' : 'FALLS SHORT', '-']),
      line(['service RSS after the whole bench', `${serviceFinalRss} MB`, '-', '< 200 MB', serviceFinalRss < 200 ? 'met' : 'FALLS SHORT', '-'])
    ]
    const referenceRows = [
      line(['not a target: what the service adds', `ratio (median of ${ROUNDS} rounds)`, 'rounds', 'by server CPU per request']),
      line(['---', '---:', '---', '---:']),
      ...references.map((r) => line([r.scenario, r.value.toFixed(2), (rounds[r.key] as number[]).map((value) => value.toFixed(2)).join(', '), costRatio(r.measured, r.ceiling)?.toFixed(2) ?? '-']))
    ]
    const tokenShare = tokenOff.rps / signatures
    const summary = [
      `machine: ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}; ${CONNECTIONS} connections, ${WARMUP} s warm-up, ${DURATION} s per scenario, ${ROUNDS} rounds of each ratio (the first shown)`,
      '',
      ...rows,
      '',
      `RS256 signatures/s with the same key, nothing else running: ${Math.round(signatures)}; POST /token with the cache off reaches ${(tokenShare * 100).toFixed(0)}% of it.`,
      `Peak RSS of the service during the bench: ${peakServiceRss} MB.`,
      '',
      ...checks,
      '',
      ...referenceRows
    ].join('\n')
    process.stdout.write(`\n${summary}\n`)

    const allOk = scenarios.every((s) => s.ok) && errorsOk && memory.growth_ok && memory.max_entries_held && serviceFinalRss < 200
    const shortfalls = scenarios.filter((s) => !s.ok).map((s) => s.scenario)
    if (!errorsOk) shortfalls.push('errors')
    if (!memory.growth_ok) shortfalls.push('RSS growth')
    if (!memory.max_entries_held) shortfalls.push('OAUTH_STATE_MAX_ENTRIES')
    if (serviceFinalRss >= 200) shortfalls.push('final RSS')
    process.stdout.write(allOk ? '\nEvery target is met.\n' : `\nFalls short: ${shortfalls.join('; ')}.\n`)

    mkdirSync(`${ROOT}/bench/results`, { recursive: true })
    const file = `${ROOT}/bench/results/${new Date().toISOString().replace(/[:.]/g, '-')}.json`
    writeFileSync(file, JSON.stringify({
      date: new Date().toISOString(),
      machine: { cores: cpus().length, model: cpus()[0]?.model, memory_gib: Math.round(totalmem() / 2 ** 30), node: process.version },
      settings: { connections: CONNECTIONS, warmup_s: WARMUP, duration_s: DURATION, rounds: ROUNDS },
      signatures_per_second: signatures,
      token_share_of_signatures: tokenShare,
      measured: all,
      references: references.map(({ scenario, key, value, measured, ceiling }) => ({ scenario, value, rounds: rounds[key], cost_ratio: costRatio(measured, ceiling) })),
      targets: scenarios.map(({ scenario, key, value, target, ok, limit, measured, ceiling }) => ({ scenario, value, rounds: rounds[key] ?? null, target, ok, limit, cost_ratio: costRatio(measured, ceiling) })),
      memory,
      peak_service_rss_mb: peakServiceRss,
      final_service_rss_mb: serviceFinalRss,
      all_targets_met: allOk
    }, null, 2))
    process.stdout.write(`Written to ${file}\n`)
    process.exitCode = allOk ? 0 : 1
  } finally {
    await stopAll()
  }
}

await main()
