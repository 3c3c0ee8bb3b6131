import { readFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { Agent, request } from 'undici'
import { collectGarbage, startServer } from './fixtures/server-process.js'
import { API_KEY, KID, sendJson, startUpstream, testKeys } from './helper.js'

t.test('the server starts, finishes in-flight requests on SIGTERM, and exits 0', async (t) => {
  const coze = await startUpstream(t, async (_req, res) => {
    await sleep(400)
    sendJson(res, 200, { access_token: 'czs_slow', expires_in: 1900000000 })
  })
  const server = await startServer(t, {
    JWT_PRIVATE_KEY: testKeys().pkcs8, COZE_APP_ID: '1180000000001',
    EXPECTED_COZE_API_KEY: API_KEY,
    COZE_API_URL: `${coze.url}/api/permission/oauth2/token`
  })
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
  const server = await startServer(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${slow.port}`, SHUTDOWN_GRACE_MS: '5000' })
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

t.test('a request that outlasts SHUTDOWN_GRACE_MS: the process exits at the grace, and says so as a JSON log line', async (t) => {
  const silent = await startUpstream(t, () => { /* never answers */ })
  const server = await startServer(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${silent.port}`, SHUTDOWN_GRACE_MS: '300', RESEND_TIMEOUT_MS: '60000' })
  const pending = request(`${server.url as string}/resend`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': API_KEY }, body: JSON.stringify({ location: `${silent.url}/x`, params: {} }) }).catch(() => undefined)
  for (let i = 0; i < 100 && silent.requests.length === 0; i++) await sleep(20)
  server.child.kill('SIGTERM')
  t.not(await server.exited, 0, 'killed by the grace timeout')
  await pending
  const line = server.output().split('\n').find((text) => text.includes('killed by timeout'))
  t.match(JSON.parse(line ?? '{}'), { level: 50, msg: 'killed by timeout (300ms)' })
})

t.test('an invalid variable or key stops the start with exit code 1 and says which', async (t) => {
  const variable = await startServer(t, { COZE_TIMEOUT_MS: 'soon' })
  t.equal(await variable.exited, 1)
  t.match(variable.output(), /start failed/)
  t.match(variable.output(), /COZE_TIMEOUT_MS/)

  const broken = testKeys().pkcs8.split('\n').filter((_line, index) => index !== 3).join('\n')
  const key = await startServer(t, { JWT_PRIVATE_KEY: broken })
  t.equal(await key.exited, 1)
  t.match(key.output(), /start failed/)
  t.match(key.output(), /JWT_PRIVATE_KEY is not a readable PEM private key/)
  t.notOk(key.output().includes(broken.split('\n')[2] ?? '-'), 'the key is not quoted')
})

/** Resident memory of a process, in MB, from /proc. */
async function rssMb (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]) / 1024
}

t.test('30 clients that never read a large answer: cut off after WRITE_TIMEOUT_MS, and the memory comes back', { skip: process.platform !== 'linux' && 'reads /proc' }, async (t) => {
  // A client that does not read takes almost nothing into the kernel's buffers: the answer waits in the service.
  const big = JSON.stringify({ data: 'x'.repeat(4 * 1024 * 1024) })
  const upstream = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(big) })
    res.end(big)
  })
  const server = await startServer(t, {
    EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`, WRITE_TIMEOUT_MS: '2000', RESEND_MAX_RESPONSE_BYTES: String(16 * 1024 * 1024), RATE_LIMIT_MAX: '100000'
  }, { inspect: true })
  t.ok(server.url, server.output())
  const { port } = new URL(server.url ?? 'http://127.0.0.1:0')
  const pid = server.child.pid as number
  const body = JSON.stringify({ location: `${upstream.url}/big`, params: {} })
  const raw = `POST /resend HTTP/1.1\r\nHost: x\r\nX-API-Key: ${API_KEY}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  // A few answers read in full first, so that the baseline includes what served answers leave behind.
  for (let i = 0; i < 3; i++) {
    const warm = await request(`${server.url}/resend`, { method: 'POST', headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, body })
    t.equal(warm.statusCode, 200)
    await warm.body.dump()
  }
  // What the process holds: V8's heap and the memory outside it (Buffers), after a full collection. (RSS also
  // counts what the allocator keeps for later, which it need not give back.)
  const held = async (): Promise<number> => {
    await collectGarbage(server)
    await collectGarbage(server) // (Buffers are freed by the callbacks the first collection queues.)
    const metrics = await (await request(`${server.url}/metrics`)).body.text()
    const value = (name: string): number => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(metrics)?.[1])
    return (value('nodejs_heap_size_used_bytes') + value('nodejs_external_memory_bytes')) / 1024 / 1024
  }
  const before = await held()
  const rssBefore = await rssMb(pid)

  const sockets = Array.from({ length: 30 }, () => {
    const socket = connect(Number(port), '127.0.0.1')
    socket.on('error', () => {})
    socket.write(raw)
    socket.pause() // never reads
    return socket
  })
  t.teardown(() => { for (const socket of sockets) socket.destroy() })
  for (let i = 0; i < 400 && upstream.requests.length < 33; i++) await sleep(50)
  await sleep(1000)
  const peak = await rssMb(pid)
  // The connections are destroyed after 2 s without progress, however long a busy machine takes to get there (the
  // file's own timeout bounds the wait); then nothing may hold their answers. (Polled: each look is a full collection.)
  const cut = /"reason":"write_timeout".*connection closed to bound its cost/
  while (!cut.test(server.output()) && server.child.exitCode === null) await sleep(100)
  t.match(server.output(), cut, 'cut for the write timeout')
  let after = await held()
  for (let i = 0; i < 120 && after - before >= 20; i++) {
    await sleep(500)
    after = await held()
  }
  t.comment(`heap and Buffers: ${before.toFixed(0)} MB before, ${after.toFixed(0)} MB after the write timeout (RSS ${rssBefore.toFixed(0)}, ${peak.toFixed(0)} with 30 answers waiting, ${(await rssMb(pid)).toFixed(0)} after)`)
  t.ok(after - before < 20, `what the process holds is back within 20 MB of where it started (${(after - before).toFixed(0)} MB)`)
})
