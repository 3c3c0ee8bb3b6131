import { connect, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { Agent, request } from 'undici'
import { type Child, freePort, jsonLine, rssMb, startNode } from './processes.js'

/**
 * npm run bench:attacks: the hostile callers of docs/reliability.md against the built server, each while a prober
 * asks /health on fresh connections: silent sockets, pipelined floods, the worst JSONPath expressions. Prints one
 * table; loopback only.
 */

const API_KEY = 'bench-attacks-key-0123456789'

interface Probed { p50: number, p99: number, max: number, count: number }

async function probeOnce (port: number): Promise<number> {
  const started = performance.now()
  await new Promise<void>((resolve) => {
    const socket = connect(port, '127.0.0.1', () => { socket.write('GET /health HTTP/1.0\r\nHost: x\r\n\r\n') })
    socket.on('data', () => {})
    socket.on('close', () => { resolve() })
    socket.on('error', () => {})
  })
  return performance.now() - started
}

async function probeFor (port: number, ms: number): Promise<Probed> {
  const times: number[] = []
  const until = performance.now() + ms
  while (performance.now() < until) {
    times.push(await probeOnce(port))
    await sleep(10)
  }
  times.sort((a, b) => a - b)
  const at = (q: number): number => Number((times[Math.min(times.length - 1, Math.ceil(q * times.length) - 1)] as number).toFixed(1))
  return { p50: at(0.5), p99: at(0.99), max: at(1), count: times.length }
}

async function openSockets (port: number, count: number, send?: string): Promise<Socket[]> {
  return await Promise.all(Array.from({ length: count }, async () => await new Promise<Socket>((resolve) => {
    const socket = connect(port, '127.0.0.1', () => {
      if (send !== undefined) socket.write(send)
      socket.pause()
      resolve(socket)
    })
    socket.on('error', () => {})
  })))
}

async function service (env: Record<string, string>): Promise<{ child: Child, port: number }> {
  const port = await freePort()
  const { child } = await startNode('dist/server.js', { HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'info', PRESSURE_MAX_EVENT_LOOP_DELAY_MS: '0', ...env }, (line) => (line.includes('Server listening at') ? true : undefined))
  return { child, port }
}

const rows: string[][] = []

// Silent sockets beside MAX_CONNECTIONS=50.
{
  const { child, port } = await service({ MAX_CONNECTIONS: '50' })
  const silent = await openSockets(port, 60)
  await sleep(500)
  const probed = await probeFor(port, 3000)
  rows.push(['60 silent sockets, MAX_CONNECTIONS=50', `${probed.count} probes`, `${probed.p50} / ${probed.p99} / ${probed.max} ms`, '-'])
  for (const socket of silent) socket.destroy()
  await child.stop()
}

// Pipelined floods: 64 KiB of GET /health per connection, never read.
for (const connections of [50, 200]) {
  const { child, port } = await service({})
  for (let i = 0; i < 200; i++) await probeOnce(port)
  const pid = child.process.pid as number
  const before = rssMb(pid)
  const one = 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n'
  const flood = await openSockets(port, connections, one.repeat(Math.floor(65536 / one.length)))
  const probed = await probeFor(port, 3000)
  rows.push([`${connections} connections pipelining 64 KiB of GET /health`, `${probed.count} probes`, `${probed.p50} / ${probed.p99} / ${probed.max} ms`, `${before.toFixed(0)} → ${rssMb(pid).toFixed(0)} MB`])
  for (const socket of flood) socket.destroy()
  await child.stop()
}

// The worst expressions, four connections back to back.
{
  const mocks = await startNode('build/bench/mocks.js', {}, (line) => jsonLine<{ feishu: number }>(line, 'feishu'))
  const { feishu } = mocks.value as { feishu: number }
  const { child, port } = await service({ EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${feishu}` })
  const location = `http://127.0.0.1:${feishu}/open-apis/x`
  const limit = 1048576
  const widest = `{"location":"${location}","params":[${Array.from({ length: Math.floor((limit - 200) / 2) }, () => '0').join(',')}],"commands":{"json_parse":["$..*"]}}`
  let deep = '"x"'
  for (let i = 0; i < 60; i++) deep = `[${deep},{"a":"1"}]`
  const deepest = `{"location":"${location}","params":[${Array.from({ length: Math.floor((limit - 200) / (deep.length + 1)) }, () => deep).join(',')}],"commands":{"json_parse":["$..*..*"]}}`
  const filtered = deepest.replace('"$..*..*"', '"$..[?@..[?@..a]]"')
  const agent = new Agent({ connections: 4 })
  let stop = false
  const answers = new Map<string, number>()
  const attacker = async (body: string): Promise<void> => {
    while (!stop) {
      const res = await request(`http://127.0.0.1:${port}/resend`, { method: 'POST', dispatcher: agent, headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, body })
      const answer = await res.body.json() as { data: { reason?: string } }
      const key = `${res.statusCode} ${String(answer.data.reason).replace(/ \(.*$/, '')}`
      answers.set(key, (answers.get(key) ?? 0) + 1)
    }
  }
  const attacks = [widest, deepest, filtered, widest].map(attacker)
  await sleep(500)
  const probed = await probeFor(port, 5000)
  stop = true
  await Promise.all(attacks)
  rows.push(['4 connections: $..* (widest), $..*..* (deepest), filters of descents', [...answers].map(([key, count]) => `${count} × ${key}`).join('; '), `${probed.p50} / ${probed.p99} / ${probed.max} ms`, '-'])
  await agent.close()
  await child.stop()
  await mocks.child.stop()
}

process.stdout.write(`\n| Attack | Answers | /health p50 / p99 / max | RSS |\n|---|---|---|---|\n${rows.map((row) => `| ${row.join(' | ')} |`).join('\n')}\n`)
