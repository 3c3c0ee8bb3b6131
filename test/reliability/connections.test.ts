import { readFile } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { request } from 'undici'
import { startServer } from '../fixtures/server-process.js'
import { API_KEY, startUpstream } from '../helper.js'

// Connections that cost the service without a request: silent sockets, pipelined floods, slow readers.

const percentile = (values: number[], p: number): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)] as number
}

async function rssMb (pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]) / 1024
}

/** A plain GET /health on a connection of its own (HTTP/1.0: the server closes it), timed from connect to answer. */
async function probe (port: number, localAddress = '127.0.0.1'): Promise<{ status: number, ms: number }> {
  const started = performance.now()
  return await new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress })
    let text = ''
    const done = (status: number): void => { socket.destroy(); resolve({ status, ms: performance.now() - started }) }
    socket.setTimeout(10_000, () => { done(0) })
    socket.on('error', () => { done(0) })
    socket.on('connect', () => { socket.write('GET /health HTTP/1.0\r\nHost: x\r\n\r\n') })
    socket.on('data', (chunk: Buffer) => { text += chunk.toString('latin1') })
    socket.on('close', () => { done(Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0)) })
  })
}

async function openSockets (port: number, count: number, options: { localAddress?: string, send?: string } = {}): Promise<Socket[]> {
  return await Promise.all(Array.from({ length: count }, async () => await new Promise<Socket>((resolve) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress: options.localAddress ?? '127.0.0.1' })
    socket.on('error', () => {})
    socket.once('connect', () => {
      if (options.send !== undefined) socket.write(options.send)
      socket.pause() // never reads
      resolve(socket)
    })
  })))
}

/** The server's log, once it says what is looked for (its lines reach the test a moment after they are written). */
async function logged (server: { output: () => string }, pattern: RegExp): Promise<string> {
  for (let i = 0; i < 100 && !pattern.test(server.output()); i++) await sleep(50)
  return server.output()
}

const portOf = (url: string | undefined): number => Number(new URL(url ?? 'http://127.0.0.1:0').port)

t.test('60 silent sockets beside MAX_CONNECTIONS=50: the oldest idle ones make room, so /health keeps answering', async (t) => {
  const server = await startServer(t, { MAX_CONNECTIONS: '50', HEADERS_TIMEOUT_MS: '60000' })
  t.ok(server.url, server.output())
  const port = portOf(server.url)
  const silent = await openSockets(port, 60)
  t.teardown(() => { for (const socket of silent) socket.destroy() })
  await sleep(500)
  const answers = []
  for (let i = 0; i < 50; i++) answers.push(await probe(port))
  t.same([...new Set(answers.map((answer) => answer.status))], [200], 'every probe answered')
  const p99 = percentile(answers.map((answer) => answer.ms), 0.99)
  // Starved, a probe waits out its 10 s timeout; a loaded machine (CI beside two busy loops) adds a second of its own.
  t.ok(p99 < 5000, `probe p99 ${p99.toFixed(1)} ms`)
  t.comment(`silent sockets: /health p99 ${p99.toFixed(1)} ms, max ${Math.max(...answers.map((answer) => answer.ms)).toFixed(1)} ms over 50 probes beside 60 silent sockets`)
  t.match(await logged(server, /"reason":"evicted"/), /"reason":"evicted"/)
})

t.test('HEADERS_TIMEOUT_MS: a connection that sends no request head, or half of one, is closed', async (t) => {
  const server = await startServer(t, { HEADERS_TIMEOUT_MS: '1000' })
  const port = portOf(server.url)
  const [silent, partial] = [...await openSockets(port, 1), ...await openSockets(port, 1, { send: 'GET /health HTTP/1.1\r\nHost: x\r\n' })]
  const started = performance.now()
  const closedAfter = async (socket: Socket | undefined): Promise<number> => await new Promise((resolve) => {
    socket?.resume()
    socket?.once('close', () => { resolve(performance.now() - started) })
  })
  const [silentMs, partialMs] = await Promise.all([closedAfter(silent), closedAfter(partial)])
  t.ok(silentMs >= 900 && silentMs < 5000, `silent socket closed after ${silentMs.toFixed(0)} ms`)
  t.ok(partialMs < 5000, `half a head closed after ${partialMs.toFixed(0)} ms`)
  t.match(await logged(server, /"reason":"head_timeout"/), /"reason":"head_timeout"/)
})

t.test('MAX_CONNECTIONS_PER_IP: one address cannot hold more; another address is served', async (t) => {
  const server = await startServer(t, { MAX_CONNECTIONS_PER_IP: '5', HEADERS_TIMEOUT_MS: '60000', TRUST_PROXY: '1' })
  const port = portOf(server.url)
  const held = await openSockets(port, 5)
  t.teardown(() => { for (const socket of held) socket.destroy() })
  await sleep(100)
  t.equal((await probe(port)).status, 0, 'the sixth from 127.0.0.1 is refused (X-Forwarded-For is never asked)')
  t.equal((await probe(port, '127.0.0.2')).status, 200, '127.0.0.2 is served')
  t.match(await logged(server, /"reason":"over_address_limit"/), /"reason":"over_address_limit"/)
})

t.test('pipelined floods: 200 connections pipelining 64 KiB of GET /health and never reading leave the probes and the memory alone', { skip: process.platform !== 'linux' && 'reads /proc' }, async (t) => {
  const server = await startServer(t, {})
  const port = portOf(server.url)
  const pid = server.child.pid as number
  for (let i = 0; i < 50; i++) await probe(port)
  const one = 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n'
  const flood = one.repeat(Math.floor(65536 / one.length))
  // A first flood warms every path up (the test loader compiles, the JIT settles): the second is what is measured.
  const warm = await openSockets(port, 200, { send: flood })
  await sleep(1000)
  for (const socket of warm) socket.destroy()
  for (let i = 0; i < 50; i++) await probe(port)
  const before = await rssMb(pid)
  const sockets = await openSockets(port, 200, { send: flood })
  t.teardown(() => { for (const socket of sockets) socket.destroy() })
  const answers = []
  for (let i = 0; i < 50; i++) answers.push(await probe(port))
  const peak = await rssMb(pid)
  t.same([...new Set(answers.map((answer) => answer.status))], [200])
  const p99 = percentile(answers.map((answer) => answer.ms), 0.99)
  // (As above: starved would be the 10 s timeout; CI beside two busy loops once measured 1,031 ms.)
  t.ok(p99 < 5000, `probe p99 ${p99.toFixed(1)} ms during the flood`)
  // Each connection's read is parsed no further than its 17th request: without that, 200 connections held
  // 400,000 requests and their answers (+240 MB measured; the figures of the built server are in docs/reliability.md).
  t.ok(peak - before < 150, `RSS ${before.toFixed(0)} → ${peak.toFixed(0)} MB`)
  t.comment(`pipelined flood, 200 connections: /health p99 ${p99.toFixed(1)} ms, RSS ${before.toFixed(0)} → ${peak.toFixed(0)} MB`)
  t.match(await logged(server, /"reason":"pipelined","limit":16/), /"reason":"pipelined","limit":16/)
})

t.test('a large answer read slowly but steadily completes; the write timeout cuts only clients that stop', async (t) => {
  const big = JSON.stringify({ data: 'x'.repeat(3 * 1024 * 1024) })
  const upstream = await startUpstream(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(big) })
    res.end(big)
  })
  const server = await startServer(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`, WRITE_TIMEOUT_MS: '1500', RESEND_MAX_RESPONSE_BYTES: String(8 * 1024 * 1024) })
  const body = JSON.stringify({ location: `${upstream.url}/big`, params: {} })
  const res = await request(`${server.url as string}/resend`, { method: 'POST', headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, body, highWaterMark: 16 * 1024 })
  t.equal(res.statusCode, 200)
  // About 320 KiB/s: ten seconds for the answer, and no pause as long as the write timeout.
  let received = 0
  const started = performance.now()
  try {
    for await (const chunk of res.body) {
      received += (chunk as Buffer).length
      const due = received / (320 * 1024) * 1000
      const ahead = due - (performance.now() - started)
      if (ahead > 0) await sleep(ahead)
    }
  } catch (err) {
    t.fail(`cut off after ${received} bytes: ${(err as Error).message}`)
  }
  t.ok(received > 3 * 1024 * 1024, `received ${received} bytes in ${((performance.now() - started) / 1000).toFixed(1)} s`)
  t.notMatch(server.output(), /"reason":"write_timeout"/, 'no write timeout for a steady reader')
})
