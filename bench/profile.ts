import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import autocannon from 'autocannon'
import { CONNECTIONS, DURATION, FEISHU_PATH, FIELDS, WARMUP } from './measure.js'
import { freePort, jsonLine, startNode } from './processes.js'

/**
 * npm run bench:profile: POST /resend and the bare relay of bench/ceilings.ts under the same load (the seed's
 * json_parse, 32 connections), each with --cpu-prof, one after the other. Prints where each spends its CPU: self
 * time grouped by package (or by file of our own), the top functions, and the CPU per request of each group.
 * Everything listens on 127.0.0.1. The profiles are removed afterwards.
 */

const API_KEY = 'bench-service-key'
const TOP = Number(process.env.BENCH_PROFILE_TOP ?? 25)

interface ProfileNode { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }
interface Profile { nodes: ProfileNode[], samples: number[], timeDeltas: number[] }

/** Where a frame's code lives: a package, a file of the project, node's own, V8's. */
function placeOf (url: string, functionName: string): string {
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)'
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (pkg !== null) return pkg[1] as string
  if (url.startsWith('node:')) return 'node:' + url.slice(5).split('/')[0]
  const own = /\/(dist|build)\/(.*)$/.exec(url)
  return own !== null ? (own[2] as string) : url
}

/** Self time by place and by function, in ms of CPU, from one .cpuprofile. */
function selfTimes (profile: Profile): { byPlace: Map<string, number>, byFunction: Map<string, number>, totalMs: number } {
  const nodes = new Map(profile.nodes.map((node) => [node.id, node]))
  const byPlace = new Map<string, number>()
  const byFunction = new Map<string, number>()
  let totalMs = 0
  profile.samples.forEach((id, index) => {
    const node = nodes.get(id) as ProfileNode
    const ms = (profile.timeDeltas[index] ?? 0) / 1000
    // Idle is the event loop waiting: not CPU.
    if (node.callFrame.functionName === '(idle)') return
    totalMs += ms
    const place = placeOf(node.callFrame.url, node.callFrame.functionName)
    byPlace.set(place, (byPlace.get(place) ?? 0) + ms)
    const name = `${node.callFrame.functionName === '' ? '(anonymous)' : node.callFrame.functionName} ${place}:${node.callFrame.lineNumber + 1}`
    byFunction.set(name, (byFunction.get(name) ?? 0) + ms)
  })
  return { byPlace, byFunction, totalMs }
}

async function profiled (name: string, start: (dir: string) => Promise<{ url: string, stop: () => Promise<void> }>, body: string): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'aibill-profile-'))
  try {
    const target = await start(dir)
    const options = { url: target.url, method: 'POST' as const, headers: { 'content-type': 'application/json', 'x-api-key': API_KEY }, body, connections: CONNECTIONS }
    await autocannon({ ...options, duration: WARMUP })
    const result = await autocannon({ ...options, duration: DURATION })
    await target.stop()
    const file = readdirSync(dir).find((entry) => entry.endsWith('.cpuprofile'))
    if (file === undefined) throw new Error(`${name}: no profile written`)
    const { byPlace, byFunction, totalMs } = selfTimes(JSON.parse(readFileSync(join(dir, file), 'utf8')) as Profile)
    // The profile spans the warm-up too: CPU per request counts every request the process answered.
    const requests = result.requests.total + Math.round(result.requests.average * WARMUP)
    const perRequest = (ms: number): string => `${((1000 * ms) / requests).toFixed(1)} µs/req`
    const rows = (map: Map<string, number>, limit: number): string => [...map].sort((a, b) => b[1] - a[1]).slice(0, limit)
      .map(([key, ms]) => `  ${(100 * ms / totalMs).toFixed(1).padStart(5)}%  ${perRequest(ms).padStart(14)}  ${key}`).join('\n')
    process.stdout.write(`\n## ${name}: ${Math.round(result.requests.average)} req/s, ${result.non2xx + result.errors} errors, main thread ${perRequest(totalMs)}\n\nby place:\n${rows(byPlace, TOP)}\n\nby function:\n${rows(byFunction, TOP)}\n`)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function main (): Promise<void> {
  const mocks = await startNode('build/bench/mocks.js', {}, (line) => jsonLine<{ feishu: number }>(line, 'feishu'))
  try {
    const { feishu } = mocks.value as { feishu: number, coze: number }
    const location = `http://127.0.0.1:${feishu}${FEISHU_PATH}`
    const body = JSON.stringify({ location, headers: { Authorization: 'Bearer t-bench' }, params: { records: [{ fields: FIELDS }] }, commands: { json_parse: ['$.params.records[*].fields'] } })
    const cpuProf = (dir: string): string[] => ['--cpu-prof', `--cpu-prof-dir=${dir}`]
    await profiled('POST /resend (the service, as npm start runs it)', async (dir) => {
      const port = await freePort()
      const env = { HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'info', EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${feishu}`, RATE_LIMIT_MAX: '10000000', DOCS_ENABLED: 'false' }
      const service = await startNode('dist/server.js', env, (line) => (line.includes('Server listening at') ? true : undefined), ['dist/instrument.js'], cpuProf(dir))
      return { url: `http://127.0.0.1:${port}/resend`, stop: service.child.stop }
    }, body)
    await profiled('the bare relay (bench/ceilings.ts)', async (dir) => {
      const ceiling = await startNode('build/bench/ceilings.js', { JWT_PRIVATE_KEY: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), COZE_API_URL: 'http://127.0.0.1:9/', TENANT_URL: 'http://127.0.0.1:9/', FEISHU_ORIGIN: `http://127.0.0.1:${feishu}`, LOG_LEVEL: 'info' }, (line) => jsonLine<{ port: number }>(line, 'port'), [], cpuProf(dir))
      return { url: `http://127.0.0.1:${(ceiling.value as { port: number }).port}/bare-relay`, stop: ceiling.child.stop }
    }, body)
  } finally {
    await mocks.child.stop()
  }
}

await main()
