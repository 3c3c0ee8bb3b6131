import { spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import app, { type AppOptions } from '../src/app.js'
import { connectionLimits, serverOptions } from '../src/options.js'
import { type Config, loadConfig, trustProxySetting } from '../src/schemas/config.js'
import { trackChild, type TestContext } from './fixtures/cleanup.js'
import { freePort } from './fixtures/ports.js'

export { freePort }

/**
 * Every secret the tests create or see: private keys, caller keys, issued tokens, OAuth codes and verifiers.
 * When a test process exits, no log line of any app it built may contain one; otherwise it fails.
 */
const secrets = new Set<string>()
const captures: LogCapture[] = []

export function registerSecret (value: unknown): void {
  // Short values (test placeholders such as "k" or "wrong") would match by chance.
  if (typeof value === 'string' && value.length >= 12) secrets.add(value)
}

function registerPem (pem: unknown): void {
  if (typeof pem !== 'string') return
  for (const line of pem.replace(/\\n/g, '\n').split('\n')) if (!line.startsWith('-----')) registerSecret(line.trim())
}

process.on('exit', () => {
  const leaks: string[] = []
  for (const capture of captures) {
    for (const line of capture.lines) {
      for (const secret of secrets) if (line.includes(secret)) leaks.push(`${secret.slice(0, 6)}… in: ${line.slice(0, 200)}`)
    }
  }
  if (leaks.length > 0) {
    process.stderr.write(`SECRETS IN LOGS (${leaks.length}):\n${leaks.slice(0, 10).join('\n')}\n`)
    process.exitCode = 1
  }
})


export { stopChild, tempDir, trackChild } from './fixtures/cleanup.js'

export interface TestKeys {
  pkcs8: string
  pkcs1: string
  publicKey: KeyObject
}

let keys: TestKeys | undefined
/** One RSA key pair per test process (generation costs ~100 ms). */
export function testKeys (): TestKeys {
  if (keys === undefined) {
    const pair = generateKeyPairSync('rsa', { modulusLength: 2048 })
    keys = {
      pkcs8: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      pkcs1: pair.privateKey.export({ type: 'pkcs1', format: 'pem' }).toString(),
      publicKey: pair.publicKey
    }
    registerPem(keys.pkcs8)
    registerPem(keys.pkcs1)
  }
  return keys
}

export const API_KEY = 'test-service-key-0123456789'
registerSecret(API_KEY)
export const KID = '_v0VjcMlLdQc3tRTD3jC5Xz29TUnKQOhtuD5k-gpyf4'

/** Every log line the app wrote, as text, for the secret checks. */
export class LogCapture extends Writable {
  readonly lines: string[] = []

  constructor () {
    super()
    captures.push(this)
  }

  override _write (chunk: Buffer, _encoding: string, callback: () => void): void {
    this.lines.push(...chunk.toString('utf8').split('\n').filter(Boolean))
    callback()
  }

  get text (): string { return this.lines.join('\n') }
  records (): Array<Record<string, unknown>> { return this.lines.map((line) => JSON.parse(line) as Record<string, unknown>) }
}

export interface Built {
  app: FastifyInstance
  logs: LogCapture
}

/** The app as production builds it, with configuration passed as data and the environment ignored. */
export async function build (t: TestContext, config: Partial<Record<keyof Config, unknown>> & Record<string, unknown> = {}, options: Omit<AppOptions, 'config' | 'warnings' | 'broker' | 'feishuApps'> = {}): Promise<Built> {
  registerPem(config.JWT_PRIVATE_KEY)
  for (const key of String(config.EXPECTED_COZE_API_KEY ?? '').split(',')) registerSecret(key.trim())
  const logs = new LogCapture()
  // Limits high enough for suites that send hundreds of requests; the rate-limit tests set their own. Lag never
  // sheds here (a busy test machine lags): only the test of shedding turns it on.
  const defaults = { LOG_LEVEL: 'debug', RATE_LIMIT_MAX: 100000, RATE_LIMIT_AUTH_URL_MAX: 100000, PRESSURE_MAX_EVENT_LOOP_DELAY_MS: 0 }
  const loaded = loadConfig({ overrides: { ...defaults, ...config }, env: false })
  const instance = Fastify(serverOptions({ logStream: logs, logLevel: 'debug', trustProxy: trustProxySetting(loaded.config.TRUST_PROXY), connections: connectionLimits(loaded.config) }))
  await instance.register(fp(app), { ...options, ...loaded })
  await instance.ready()
  t.teardown(async () => await instance.close())
  return { app: instance, logs }
}

export interface RecordedRequest {
  method: string
  url: string
  headers: IncomingMessage['headers']
  body: string
}

export interface Upstream {
  url: string
  port: number
  requests: RecordedRequest[]
  server: Server
}

export type UpstreamHandler = (request: RecordedRequest, res: ServerResponse) => void | Promise<void>

/** A real HTTP server on 127.0.0.1 that records what it receives; the handler decides the answer. */
export async function startUpstream (t: TestContext, handler: UpstreamHandler): Promise<Upstream> {
  const requests: RecordedRequest[] = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const recorded = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') }
      requests.push(recorded)
      // What reaches an upstream on the service's behalf is secret: JWTs, tokens, codes, verifiers.
      registerSecret(req.headers.authorization)
      try {
        const sent = JSON.parse(recorded.body) as Record<string, unknown>
        for (const field of ['code', 'code_verifier', 'access_token']) registerSecret(sent[field])
      } catch { /* not JSON: nothing to register */ }
      Promise.resolve(handler(recorded, res)).catch((err: unknown) => { res.destroy(err as Error) })
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return { url: `http://127.0.0.1:${port}`, port, requests, server }
}

export function sendJson (res: ServerResponse, status: number, body: unknown): void {
  registerSecret((body as { access_token?: unknown } | null)?.access_token)
  const text = JSON.stringify(body)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) })
  res.end(text)
}

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

/** Whether a Redis answers PING at the URL, within a second. */
export async function redisAnswers (url = REDIS_URL): Promise<boolean> {
  const { hostname, port } = new URL(url)
  return await new Promise((resolve) => {
    const socket = connect({ host: hostname, port: Number(port || 6379) })
    const done = (answer: boolean) => { socket.destroy(); resolve(answer) }
    socket.setTimeout(1000, () => { done(false) })
    socket.on('error', () => { done(false) })
    socket.on('connect', () => { socket.write('PING\r\n') })
    socket.on('data', (data) => { done(data.toString().startsWith('+PONG')) })
  })
}

const underCi = (): boolean => process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false'

/**
 * A system tool a test runs (Debian's chromium, promtool). Outside CI a missing tool skips the test, saying what to
 * install; under CI the test runs and fails with that one line (`missing`) instead of a spawn error.
 */
export function systemTool (path: string, debianPackage: string): { skip: false | string, missing?: string } {
  if (existsSync(path)) return { skip: false }
  const what = `no ${path}: apt-get install ${debianPackage} (or npm run setup:test-tools)`
  return underCi() ? { skip: false, missing: what } : { skip: what }
}

/**
 * Tests that need Redis run where one answers; elsewhere they are skipped with a visible reason, except under CI,
 * where they run and fail: pass the result as the `skip` option of the test.
 */
export async function skipWithoutRedis (): Promise<false | string> {
  if (await redisAnswers()) return false
  return underCi() ? false : `no Redis answers at ${REDIS_URL} (start one, or set REDIS_URL)`
}

/** A key prefix of the test's own on the shared Redis (the hash-tagged keys of the queue and its byte count included), removed at the end. */
export function redisKeyPrefix (t: TestContext, label: string): string {
  const prefix = `test-${label}-${randomBytes(4).toString('hex')}:`
  t.teardown(async () => {
    const redis = new Redis(REDIS_URL)
    for (const pattern of [`${prefix}*`, `{${prefix}*`]) {
      const keys = await redis.keys(pattern)
      if (keys.length > 0) await redis.del(...keys)
    }
    redis.disconnect()
  })
  return prefix
}

export interface RedisServer {
  url: string
  stop (): Promise<void>
  start (): Promise<void>
}

/** A redis-server of the test's own on 127.0.0.1, to stop and start at will. */
export async function startRedisServer (t: TestContext, extraArgs: string[] = []): Promise<RedisServer> {
  const port = await freePort()
  let child: ChildProcess | undefined
  const url = `redis://127.0.0.1:${port}`
  const server: RedisServer = {
    url,
    async start () {
      child = trackChild(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...extraArgs], { stdio: 'ignore' }))
      for (let i = 0; i < 100 && !(await redisAnswers(url)); i++) await sleep(50)
    },
    async stop () {
      if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child?.once('exit', resolve))
      child.kill('SIGKILL')
      await exited
    }
  }
  await server.start()
  t.teardown(async () => { await server.stop() })
  return server
}
