import { randomBytes } from 'node:crypto'
import autocannon from 'autocannon'
import { SignJWT } from 'jose'
import { Pool } from 'undici'
import { importRsaPrivateKey } from '../src/lib/coze/jwt.js'
import { cpuMs, mainThreadCpuMs, rssMb } from './processes.js'

/** How the bench measures: throughput beside a ceiling, one-at-a-time latency, the RS256 signing limit. */

/** The seed's example request: a Feishu batch_create whose fields arrive as a JSON string (json_parse's case). */
export const FEISHU_PATH = '/open-apis/bitable/v1/apps/APP/tables/TABLE/records/batch_create'
export const FIELDS = '{"收支类型":"支出","款项金额":14.91,"消费类型":"交通","流水说明":"财付通-滴滴出行","日期时间":1745809165,"收入方":"滴滴出行","支出方":"用户","备注":""}'

export const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32)
export const DURATION = Number(process.env.BENCH_DURATION ?? 10)
export const WARMUP = Number(process.env.BENCH_WARMUP ?? 3)
export const AUTH_URL_REQUESTS = Number(process.env.BENCH_AUTH_URL_REQUESTS ?? 100_000)
// Each throughput target is measured beside its ceiling this many times, alternating; the median ratio counts.
export const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)

export interface Measured {
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
  /** Of that, the main thread's (the event loop's): everything but the thread pool's signing. */
  mainThreadMicrosPerRequest: number | null
}

export type Options = autocannon.Options

export async function measure (name: string, options: Options, pid?: number): Promise<Measured> {
  await autocannon({ connections: CONNECTIONS, ...options, duration: WARMUP })
  let peak = pid === undefined ? 0 : rssMb(pid)
  const sampler = pid === undefined ? undefined : setInterval(() => { peak = Math.max(peak, rssMb(pid)) }, 100)
  const cpuBefore = pid === undefined ? 0 : cpuMs(pid)
  const mainBefore = pid === undefined ? 0 : mainThreadCpuMs(pid)
  const started = performance.now()
  const result = await autocannon({ connections: CONNECTIONS, duration: DURATION, ...options })
  const wallMs = performance.now() - started
  const cpuUsed = pid === undefined ? 0 : cpuMs(pid) - cpuBefore
  const mainUsed = pid === undefined ? 0 : mainThreadCpuMs(pid) - mainBefore
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
    cpuMicrosPerRequest: pid === undefined ? null : Math.round((1000 * cpuUsed) / Math.max(1, result.requests.total)),
    mainThreadMicrosPerRequest: pid === undefined ? null : Math.round((1000 * mainUsed) / Math.max(1, result.requests.total))
  }
  process.stderr.write(`  ${name}: ${Math.round(measured.rps)} req/s, p50 ${measured.p50} ms, p99 ${measured.p99} ms, errors ${errors}, server CPU ${String(measured.cpuPercent)}%\n`)
  return measured
}

/** Times `count` requests sent one after another on one keep-alive connection; reports the exact median. */
export async function sequentialLatency (name: string, url: string, body: string, headers: Record<string, string>, count = 3000, expectStatus = 200): Promise<Measured> {
  const client = new Pool(new URL(url).origin, { connections: 1 })
  const { pathname } = new URL(url)
  const times: number[] = []
  let errors = 0
  try {
    for (let i = 0; i < count + 300; i++) {
      const started = performance.now()
      const response = await client.request({ path: pathname, method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body })
      await response.body.dump()
      if (response.statusCode !== expectStatus) errors++
      // The first 300 warm the path up.
      if (i >= 300) times.push(performance.now() - started)
    }
  } finally {
    await client.close()
  }
  times.sort((a, b) => a - b)
  const at = (q: number): number => Number((times[Math.min(times.length - 1, Math.floor(q * times.length))] as number).toFixed(3))
  const total = times.reduce((sum, time) => sum + time, 0)
  const measured = { name, rps: (1000 * times.length) / total, p50: at(0.5), p99: at(0.99), errors, peakRssMb: null, cpuPercent: null, cpuMicrosPerRequest: null, mainThreadMicrosPerRequest: null }
  process.stderr.write(`  ${name}: p50 ${measured.p50} ms, p99 ${measured.p99} ms, errors ${errors}\n`)
  return measured
}

/** RS256 signatures per second with the same key and nothing else running, as many in flight as the load has. */
export async function signaturesPerSecond (pem: string, seconds: number, kid: string): Promise<number> {
  const key = await importRsaPrivateKey(pem)
  let count = 0
  const deadline = performance.now() + seconds * 1000
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline) {
      const now = Math.floor(Date.now() / 1000)
      await new SignJWT({}).setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid }).setIssuer('app').setAudience('api.coze.cn')
        .setIssuedAt(now).setExpirationTime(now + 600).setJti(randomBytes(32).toString('base64url')).sign(key)
      count++
    }
  }
  await Promise.all(Array.from({ length: CONNECTIONS }, worker))
  return count / seconds
}
