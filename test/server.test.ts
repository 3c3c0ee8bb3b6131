import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { Agent, request } from 'undici'
import { ConfigSchema } from '../src/schemas/config.js'
import { API_KEY, KID, sendJson, startUpstream, testKeys } from './helper.js'

const SERVER = fileURLToPath(new URL('../src/server.ts', import.meta.url))

interface Started {
  child: ChildProcess
  output: () => string
  exited: Promise<number | null>
  url?: string
}

/** tap's loader and coverage settings, without any of the service's own variables. */
function inheritedEnvironment (): NodeJS.ProcessEnv {
  const env = { ...process.env }
  for (const name of Object.keys(ConfigSchema.properties)) delete env[name]
  // The child runs in an empty folder: point its TypeScript loader at the project's settings.
  env.TS_NODE_PROJECT = fileURLToPath(new URL('../tsconfig.json', import.meta.url))
  return env
}

/** Runs src/server.ts as production runs dist/server.js, in an empty folder so no .env is read. */
async function startServer (env: Record<string, string>): Promise<Started> {
  const cwd = await mkdtemp(join(tmpdir(), 'aibill-server-'))
  const child = spawn(process.execPath, [...process.execArgv, SERVER], {
    cwd,
    env: { ...inheritedEnvironment(), HOST: '127.0.0.1', PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  const started: Started = { child, output: () => output, exited }
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline && child.exitCode === null) {
    const match = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(output)
    if (match !== null) return { ...started, url: match[1] as string }
    await sleep(50)
  }
  return started
}

t.test('the server starts, finishes in-flight requests on SIGTERM, and exits 0', async (t) => {
  const coze = await startUpstream(t, async (_req, res) => {
    await sleep(400)
    sendJson(res, 200, { access_token: 'czs_slow', expires_in: 1900000000 })
  })
  const server = await startServer({
    JWT_PRIVATE_KEY: testKeys().pkcs8,
    EXPECTED_COZE_API_KEY: API_KEY,
    COZE_API_URL: `${coze.url}/api/permission/oauth2/token`
  })
  t.teardown(() => { server.child.kill('SIGKILL') })
  t.ok(server.url, server.output())
  const health = await request(`${server.url}/health`)
  t.equal(health.statusCode, 200)
  t.equal((await health.body.json() as { success: boolean }).success, true)

  const inFlight = request(`${server.url}/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ public_key: KID, coze_api_key: API_KEY })
  })
  await sleep(150)
  server.child.kill('SIGTERM')
  const answer = await inFlight
  t.equal(answer.statusCode, 200, 'the request in flight at SIGTERM got its full answer')
  t.match(await answer.body.json(), { success: true, data: { access_token: 'czs_slow' } })
  t.equal(await server.exited, 0)
  t.match(server.output(), /"signal":"SIGTERM"/)
  t.notOk(server.output().includes('czs_slow'), 'no token in the logs')
  await t.rejects(request(`${server.url}/health`), 'new connections are refused after the stop')
})

t.test('SIGTERM with 50 requests in flight: each gets its full answer, new connections are refused, exit 0 within the grace delay', async (t) => {
  const slow = await startUpstream(t, async (req, res) => {
    await sleep(600)
    sendJson(res, 200, { echoed: JSON.parse(req.body) as unknown })
  })
  const server = await startServer({ EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${slow.port}`, SHUTDOWN_GRACE_MS: '5000' })
  t.teardown(() => { server.child.kill('SIGKILL') })
  t.ok(server.url, server.output())
  const agent = new Agent({ connections: 60 })
  t.teardown(async () => { await agent.close() })
  const inFlight = Array.from({ length: 50 }, async (_unused, index) => {
    const res = await request(`${server.url}/resend`, {
      dispatcher: agent,
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
      body: JSON.stringify({ location: `${slow.url}/slow`, params: { index } })
    })
    return { status: res.statusCode, body: await res.body.json() as { data: { body: { echoed: { index: number } } } } }
  })
  for (let i = 0; i < 100 && slow.requests.length < 50; i++) await sleep(20)
  t.equal(slow.requests.length, 50, 'all 50 are in flight')
  const stopped = Date.now()
  server.child.kill('SIGTERM')
  await sleep(100)
  await t.rejects(request(`${server.url}/health`, { dispatcher: new Agent() }), { code: 'ECONNREFUSED' }, 'a new connection is refused')
  const answers = await Promise.all(inFlight)
  t.same(answers.map((answer) => answer.status), Array(50).fill(200), 'every in-flight request got its answer')
  t.same(answers.map((answer) => answer.body.data.body.echoed.index), Array.from({ length: 50 }, (_unused, index) => index), '...in full')
  t.equal(await server.exited, 0)
  t.ok(Date.now() - stopped < 5000, `stopped in ${Date.now() - stopped} ms, within the grace delay`)
})

t.test('an invalid variable or key stops the start with exit code 1 and says which', async (t) => {
  const variable = await startServer({ COZE_TIMEOUT_MS: 'soon' })
  t.equal(await variable.exited, 1)
  t.match(variable.output(), /start failed/)
  t.match(variable.output(), /COZE_TIMEOUT_MS/)

  const broken = testKeys().pkcs8.split('\n').filter((_line, index) => index !== 3).join('\n')
  const key = await startServer({ JWT_PRIVATE_KEY: broken })
  t.equal(await key.exited, 1)
  t.match(key.output(), /start failed/)
  t.match(key.output(), /JWT_PRIVATE_KEY is not a readable PEM private key/)
  t.notOk(key.output().includes(broken.split('\n')[2] ?? '-'), 'the key is not quoted')
})
