import { execFile, spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { Agent, request } from 'undici'
import { DEFAULT_CONNECTION_LIMITS, GUARD_EVENT, createGuardedServer, type ConnectionLimits } from '../../../src/lib/http/connection-guard.js'
import { API_KEY, build, tempDir, trackChild } from '../../helper.js'

async function guarded (t: Test, limits: Partial<ConnectionLimits>, handler: (req: IncomingMessage, res: ServerResponse) => void) {
  const reasons: string[] = []
  const server = createGuardedServer(handler, { ...DEFAULT_CONNECTION_LIMITS, ...limits })
  server.on(GUARD_EVENT, (reason: string) => { reasons.push(reason) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return { port: (server.address() as AddressInfo).port, reasons }
}

/** Two processes that spin, as a busy machine does (ended with the test). */
function busyLoops (t: Test): void {
  for (let i = 0; i < 2; i++) {
    const child = trackChild(spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }))
    t.teardown(() => { child.kill('SIGKILL') })
  }
}

/**
 * A raw request on a socket of its own, read at `bytesPerSecond`; after `stopAfter` bytes, not at all for
 * `stopMs`, then all at once (what a cut connection lost never arrives).
 */
async function readAt (port: number, bytesPerSecond: number, stopAfter = Infinity, stopMs = 0, path = '/big', size = 4 * 1024 * 1024): Promise<{ received: number, cut: boolean, seconds: number }> {
  const socket = connect({ port, host: '127.0.0.1' })
  socket.on('error', () => {})
  socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
  const started = performance.now()
  let received = 0
  return await new Promise((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length
      socket.pause()
      if (received >= stopAfter) {
        setTimeout(() => { socket.resume() }, stopMs)
        stopAfter = Infinity
        bytesPerSecond = Infinity
        return
      }
      const due = received / bytesPerSecond * 1000 - (performance.now() - started)
      setTimeout(() => { socket.resume() }, Math.max(0, due))
    })
    socket.on('close', () => { resolve({ received, cut: received < size, seconds: (performance.now() - started) / 1000 }) })
    socket.on('end', () => { socket.destroy() })
  })
}

t.test('a minimum data rate, not a pause, tells a stopped reader from a slow one', async (t) => {
  // The stopped reader asks for more than loopback's socket buffers hold (several MB where they tune themselves
  // up): the server must wait on it, whatever the machine.
  const big = Buffer.alloc(4 * 1024 * 1024, 'x')
  const huge = Buffer.alloc(64 * 1024 * 1024, 'x')
  const { port, reasons } = await guarded(t, { writeTimeoutMs: 3000 }, (req, res) => {
    const answer = req.url === '/huge' ? huge : big
    res.writeHead(200, { 'content-length': answer.length })
    // In chunks, as the connections plugin writes large answers.
    let offset = 0
    const next = (): void => {
      while (offset < answer.length) {
        const more = res.write(answer.subarray(offset, offset += 64 * 1024))
        if (!more) { res.once('drain', next); return }
      }
      res.end()
    }
    next()
  })
  const [steady, stopped] = await Promise.all([readAt(port, 256 * 1024), readAt(port, Infinity, 256 * 1024, 8000, '/huge', huge.length)])
  t.notOk(steady.cut, `a steady reader at 256 KiB/s took the whole answer (${steady.received} bytes) in ${steady.seconds.toFixed(1)} s`)
  t.ok(stopped.cut, `a reader that stopped for 8 s was cut: ${stopped.received} bytes reached it`)
  t.same(reasons, ['write_timeout'], 'one cut: the stopped reader')
})

t.test('at MAX_CONNECTIONS, silent connections go before a balancer\'s pooled ones; the newcomer is refused when none can go', async (t) => {
  const { port, reasons } = await guarded(t, { maxConnections: 100, headersTimeoutMs: 60_000 }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2 })
    res.end('ok')
  })
  // The balancer: 20 pooled keep-alive connections from one address, bursts of requests.
  const pool = new Agent({ connections: 20, keepAliveTimeout: 60_000, localAddress: '127.0.0.1' })
  t.teardown(async () => { await pool.destroy() })
  const burst = async (): Promise<number[]> => await Promise.all(Array.from({ length: 50 }, async () => {
    try {
      const res = await request(`http://127.0.0.1:${port}/`, { dispatcher: pool })
      await res.body.dump()
      return res.statusCode
    } catch {
      return 0
    }
  }))
  await burst()
  // Another client opens silent connections up to the cap and reopens each one that is closed.
  let silentOpen = 0
  let stop = false
  const silent = new Set<Socket>()
  const openSilent = (n: number): void => {
    const socket = connect({ port, host: '127.0.0.1', localAddress: `127.0.0.${2 + (n % 200)}` })
    silent.add(socket)
    socket.on('error', () => {})
    socket.on('connect', () => { silentOpen++ })
    socket.on('close', () => {
      silent.delete(socket)
      if (!stop) setTimeout(() => { openSilent(n + 1) }, 20)
    })
  }
  for (let i = 0; i < 150; i++) openSilent(i)
  t.teardown(() => {
    stop = true
    for (const socket of silent) socket.destroy()
  })
  const statuses: number[] = []
  for (let round = 0; round < 23; round++) {
    statuses.push(...await burst())
    await sleep(300)
  }
  const failed = statuses.filter((status) => status !== 200).length
  t.ok(silentOpen >= 150, `${silentOpen} silent connections opened`)
  t.ok(failed <= statuses.length / 100, `${failed} of ${statuses.length} pooled requests failed`)
  t.ok(reasons.includes('evicted'), 'silent ones made room')
  t.comment(`pooled keep-alive beside silent reopened connections at MAX_CONNECTIONS=100: ${failed} of ${statuses.length} failed`)
})

t.test('a body over the limit: 413 in the envelope, every time, for a client that writes it whole and for one that asks first', async (t) => {
  const { app } = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, BODY_LIMIT_BYTES: 1024 * 1024, RATE_LIMIT_MAX: 1_000_000 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const body = Buffer.alloc(1100 * 1024, 'a')
  busyLoops(t)
  const whole = async (): Promise<string> => await new Promise((resolve) => {
    const req = httpRequest({ port, host: '127.0.0.1', method: 'POST', path: '/token', headers: { 'content-type': 'application/json', 'content-length': body.length, 'x-api-key': API_KEY, connection: 'close' } }, (res) => {
      let text = ''
      res.on('data', (chunk: Buffer) => { text += chunk.toString() })
      res.on('end', () => { resolve(`${res.statusCode ?? 0} ${text}`) })
      res.on('error', (err) => { resolve(`error ${err.message}`) })
    })
    req.on('error', (err: NodeJS.ErrnoException) => { resolve(`error ${String(err.code)}`) })
    req.end(body)
  })
  const answers: string[] = []
  for (let i = 0; i < 90; i++) answers.push(await whole())
  const wrong = answers.filter((answer) => !answer.startsWith('413 {"success":false,"data":{"error":"PAYLOAD_TOO_LARGE"}'))
  t.same(wrong, [], `90 whole writes of 1.1 MB: ${90 - wrong.length} answered 413 in the envelope`)

  const file = join(await tempDir(t, 'aibill-big-body-'), 'body.json')
  await writeFile(file, body)
  // (curl runs beside the server, which is in this process: never spawnSync here.)
  const curl = async (args: string[]): Promise<{ status: number, stdout: string }> => await new Promise((resolve) => {
    execFile('curl', args, { encoding: 'utf8', timeout: 30_000 }, (err, stdout) => { resolve({ status: err === null ? 0 : Number((err as { code?: unknown }).code ?? -1), stdout }) })
  })
  const curls: string[] = []
  for (let i = 0; i < 30; i++) {
    const run = await curl(['-s', '-o', '-', '-w', ' %{http_code}', '-H', 'Expect: 100-continue', '-H', 'content-type: application/json', '-H', `x-api-key: ${API_KEY}`, '--data-binary', `@${file}`, `http://127.0.0.1:${port}/token`])
    curls.push(`${run.status} ${run.stdout}`)
  }
  const refused = curls.filter((answer) => /^0 \{"success":false,"data":\{"error":"PAYLOAD_TOO_LARGE"\}.* 413$/.test(answer))
  t.equal(refused.length, 30, `30 curl runs with Expect: 100-continue: ${refused.length} got 413 before sending the body (${curls.find((answer) => !refused.includes(answer)) ?? 'all'})`)
  // A body that fits is asked for (100 Continue) and read as usual.
  const small = await curl(['-s', '-o', '/dev/null', '-w', '%{http_code}', '-H', 'Expect: 100-continue', '-H', 'content-type: application/json', '--data-binary', '{}', `http://127.0.0.1:${port}/token`])
  t.equal(small.stdout, '401', 'a body that fits is asked for, and read')
})
