import { generateKeyPairSync } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import autocannon from 'autocannon'
import { type Child, freePort, jsonLine, rssMb, startNode } from './processes.js'

/**
 * npm run soak: at least 200,000 mixed requests against the built server (health, token with reuse, resend,
 * the Augment sign-in), then errors (0 expected) and the server's RSS at the start and the end
 * (growth under 30 MB). Everything is on 127.0.0.1 and the run is bounded by its request count.
 */
const TOTAL = Number(process.env.SOAK_REQUESTS ?? 200_000)
const CONNECTIONS = Number(process.env.SOAK_CONNECTIONS ?? 32)
const API_KEY = 'soak-service-key'
const FIELDS = '{"收支类型":"支出","款项金额":14.91}'

async function main (): Promise<void> {
  const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const children: Child[] = []
  try {
    const mocks = await startNode('build/bench/mocks.js', {}, (line) => jsonLine<{ coze: number }>(line, 'coze'))
    children.push(mocks.child)
    const ports = mocks.value as { coze: number, feishu: number, augment: number }
    const port = await freePort()
    const service = await startNode('dist/server.js', {
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'info',
      JWT_PRIVATE_KEY: pem, COZE_APP_ID: '1180000000001',
      EXPECTED_COZE_API_KEY: API_KEY,
      COZE_API_URL: `http://127.0.0.1:${ports.coze}/api/permission/oauth2/token`,
      RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${ports.feishu}`,
      AUGMENT_TENANT_HOSTS: `http://127.0.0.1:${ports.augment}`,
      RATE_LIMIT_MAX: '10000000',
      RATE_LIMIT_AUTH_URL_MAX: '10000000'
    }, (line) => (line.includes('Server listening at') ? true : undefined))
    children.push(service.child)
    const pid = service.child.process.pid as number
    const json = { 'content-type': 'application/json' }
    const mix: autocannon.Request[] = [
      { method: 'GET', path: '/health' },
      { method: 'POST', path: '/token', headers: json, body: JSON.stringify({ public_key: 'soak-kid', coze_api_key: API_KEY, duration_seconds: 3600 }) },
      {
        method: 'POST',
        path: '/resend',
        headers: { ...json, 'x-api-key': API_KEY },
        body: JSON.stringify({ location: `http://127.0.0.1:${ports.feishu}/open-apis/x`, params: { records: [{ fields: FIELDS }] }, commands: { json_parse: ['$.params.records[*].fields'] } })
      },
      {
        method: 'GET',
        path: '/api/auth-url?user_id=soak',
        onResponse: (_status: number, body: string, context: object) => { (context as { state?: string }).state = (JSON.parse(body) as { data: { state: string } }).data.state }
      },
      {
        method: 'POST',
        path: '/api/complete-auth',
        headers: json,
        setupRequest: (request: autocannon.Request, context: object) =>
          ({ ...request, body: JSON.stringify({ code: 'soak-code', state: (context as { state?: string }).state, tenant_url: `http://127.0.0.1:${ports.augment}/` }) })
      }
    ]
    const url = `http://127.0.0.1:${port}`
    await autocannon({ url, connections: CONNECTIONS, amount: 5000, requests: mix })
    await sleep(1000)
    const rssStart = rssMb(pid)
    process.stderr.write(`soak: ${TOTAL} mixed requests, ${CONNECTIONS} connections; RSS at the start ${rssStart.toFixed(1)} MB\n`)
    const started = performance.now()
    const result = await autocannon({ url, connections: CONNECTIONS, amount: TOTAL, requests: mix })
    const seconds = (performance.now() - started) / 1000
    await sleep(1000)
    const rssEnd = rssMb(pid)
    const errors = result.errors + result.timeouts + result.non2xx
    const growth = rssEnd - rssStart
    const ok = errors === 0 && growth < 30 && result.requests.total >= TOTAL
    process.stdout.write([
      `requests: ${result.requests.total} in ${seconds.toFixed(1)} s (${Math.round(result.requests.total / seconds)} req/s)`,
      `errors: ${errors} (non-2xx ${result.non2xx}, timeouts ${result.timeouts}, socket errors ${result.errors})`,
      `RSS: ${rssStart.toFixed(1)} MB at the start, ${rssEnd.toFixed(1)} MB at the end, growth ${growth.toFixed(1)} MB (under 30 MB wanted)`,
      ok ? 'soak: passed' : 'soak: FAILED',
      ''
    ].join('\n'))
    process.exitCode = ok ? 0 : 1
  } finally {
    await Promise.all(children.map(async (child) => { await child.stop() }))
  }
}

await main()
