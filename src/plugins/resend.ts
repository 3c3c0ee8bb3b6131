import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyBaseLogger } from 'fastify'
import fp from 'fastify-plugin'
import type { Dispatcher } from 'undici'
import { ServiceError } from '../lib/errors.js'
import { jsonDeeperThan } from '../lib/json-depth.js'
import { USER_AGENT } from '../lib/service-info.js'
import { applyCommands, type CommandReport, type Commands } from '../lib/resend-commands.js'
import { readBodyLimited, transportError, withDeadline } from '../lib/upstream.js'
import { createPolicyAgents } from '../lib/policy-agents.js'
import { checkDestination, isDestinationRefusal, parseAllowList, type PolicyEntry, type Resolver } from '../lib/upstream-policy.js'

declare module 'fastify' {
  interface FastifyInstance {
    resend: ResendProcessor
  }
}

export type ResendMethod = 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'GET'

export interface ResendRequest {
  location: string
  method: ResendMethod
  headers?: Record<string, string>
  params?: unknown
  commands?: Commands
  maxAttempts: number
}

export interface ResendOutcome {
  status: number
  body: unknown
  attempts: number
  /** What the commands did, when there were any. */
  commands?: CommandReport
}

export interface ResendProcessor {
  /**
   * Applies the commands, checks the destination, sends, retries where allowed; never follows redirects.
   * Fills `trace` with what the request's log line should say: destination, method, status, attempts, time.
   */
  resend (request: ResendRequest, log: FastifyBaseLogger, trace?: Record<string, unknown>): Promise<ResendOutcome>
  close (): Promise<void>
}

export interface ResendOptions {
  allowList: PolicyEntry[]
  timeoutMs: number
  maxResponseBytes: number
  /** BODY_MAX_DEPTH: how deep the rewritten body and a JSON answer may nest. */
  maxDepth: number
  resolver?: Resolver
}

// Hop-by-hop and framing headers belong to each connection, not to the message being replayed.
const DROPPED_HEADERS = new Set([
  'host', 'content-length', 'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect', 'http2-settings'
])
const RETRY_STATUSES = new Set([429, 503])
// Feishu's older APIs say "over the rate limit" as HTTP 400 with this body code.
const FEISHU_RATE_LIMITED = 99991400
const RETRY_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET'])
const MAX_RETRY_DELAY_MS = 10_000

export function isRetryableTransportError (err: unknown): boolean {
  const { code, cause } = err as { code?: unknown, cause?: { code?: unknown } }
  return RETRY_CODES.has(String(code)) || RETRY_CODES.has(String(cause?.code))
}

/** Retry-After in seconds or as an HTTP date, capped; undefined when absent or unreadable. */
export function retryAfterMillis (value: string | string[] | undefined, now = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value
  if (text === undefined || text.trim() === '') return undefined
  const millis = /^\s*\d+\s*$/.test(text) ? Number(text) * 1000 : Date.parse(text) - now
  return Number.isNaN(millis) ? undefined : Math.min(Math.max(millis, 0), MAX_RETRY_DELAY_MS)
}

/** Exponential back-off with full jitter around it: 250 ms, 500 ms, 1 s, ... capped. */
export function backoffMillis (attempt: number): number {
  return Math.min(MAX_RETRY_DELAY_MS, 250 * 2 ** (attempt - 1) * (0.5 + Math.random()))
}

export function outgoingHeaders (headers: Record<string, string> = {}, hasBody: boolean): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase()
    if (!DROPPED_HEADERS.has(lower)) out[lower] = value
  }
  if (hasBody) out['content-type'] ??= 'application/json; charset=utf-8'
  out['user-agent'] ??= USER_AGENT
  return out
}

/** JSON answers are passed on parsed; text, and JSON nested too deep to carry, as text. */
function parseBody (raw: Buffer, contentType: string | string[] | undefined, maxDepth: number): unknown {
  const text = raw.toString('utf8')
  if (/\bjson\b/i.test(String(contentType)) && !jsonDeeperThan(text, maxDepth)) {
    try {
      return JSON.parse(text)
    } catch {
      return text
    }
  }
  return text
}

export function createResendProcessor (options: ResendOptions): ResendProcessor {
  const agents = createPolicyAgents({ timeoutMs: options.timeoutMs, resolver: options.resolver })

  return {
    async resend (request, log, trace = {}) {
      const decision = checkDestination(request.location, options.allowList)
      if (!decision.allowed) {
        if (decision.reason === 'url') throw new ServiceError('VALIDATION_FAILED', { field: 'location', reason: 'location must be an absolute http(s) URL' })
        throw new ServiceError('DESTINATION_NOT_ALLOWED', { reason: decision.reason })
      }
      const { url } = decision
      // Commands rewrite the body in place: it belongs to this request alone, and a failed command sends nothing.
      const document = { params: request.params }
      const report = request.commands === undefined ? undefined : applyCommands(document, request.commands, options.maxDepth)
      const { params } = document
      const hasBody = request.method !== 'GET' && params !== undefined
      const body = hasBody ? JSON.stringify(params) : undefined
      const headers = outgoingHeaders(request.headers, hasBody)
      const dispatcher = agents.dispatcherFor(decision.allowPrivate)
      const destination = `${decision.host}${url.pathname}`
      const started = performance.now()
      Object.assign(trace, { destination, upstream_method: request.method })
      const settle = (fields: Record<string, unknown>): void => { Object.assign(trace, fields, { upstream_ms: Math.round(performance.now() - started) }) }

      // One attempt, within RESEND_TIMEOUT_MS from sending to the last byte: the outcome, or how long to wait.
      async function attemptOnce (attempt: number, signal: AbortSignal): Promise<ResendOutcome | { retryInMs: number }> {
        const last = attempt >= request.maxAttempts
        let response: Dispatcher.ResponseData
        try {
          response = await dispatcher.request({ origin: url.origin, path: url.pathname + url.search, method: request.method, headers, body, signal })
        } catch (err) {
          if (isDestinationRefusal(err)) {
            log.warn({ destination, method: request.method }, 'resend refused: destination resolves to a non-public address')
            throw new ServiceError('DESTINATION_NOT_ALLOWED', { reason: 'address' })
          }
          if (!last && isRetryableTransportError(err)) return { retryInMs: backoffMillis(attempt) }
          settle({ attempts: attempt })
          throw transportError(err, { attempts: attempt })
        }
        // How long the destination asks us to wait: Retry-After, or Feishu's seconds until its window resets.
        const wait = (): number => retryAfterMillis(response.headers['retry-after']) ?? retryAfterMillis(response.headers['x-ogw-ratelimit-reset']) ?? backoffMillis(attempt)
        if (!last && RETRY_STATUSES.has(response.statusCode)) {
          await response.body.dump()
          return { retryInMs: wait() }
        }
        let raw: Buffer
        try {
          raw = await readBodyLimited(response.body, options.maxResponseBytes)
        } catch (err) {
          if ((err as Error).name === 'ResponseTooLargeError') {
            throw new ServiceError('UPSTREAM_RESPONSE_TOO_LARGE', { status: response.statusCode, limit: options.maxResponseBytes, attempts: attempt })
          }
          throw transportError(err, { attempts: attempt })
        }
        const answer = parseBody(raw, response.headers['content-type'], options.maxDepth)
        if (!last && response.statusCode === 400 && (answer as { code?: unknown } | null)?.code === FEISHU_RATE_LIMITED) return { retryInMs: wait() }
        settle({ upstream_status: response.statusCode, attempts: attempt })
        const outcome: ResendOutcome = { status: response.statusCode, body: answer, attempts: attempt }
        if (report !== undefined) outcome.commands = report
        return outcome
      }

      let attempt = 1
      const attemptWithDeadline = async (): Promise<ResendOutcome | { retryInMs: number }> =>
        await withDeadline(options.timeoutMs, async (signal) => await attemptOnce(attempt, signal))
      let result = await attemptWithDeadline()
      while ('retryInMs' in result) {
        await sleep(result.retryInMs)
        attempt++
        result = await attemptWithDeadline()
      }
      return result
    },
    async close () {
      await agents.close()
    }
  }
}

export interface ResendPluginOptions {
  /** Replaces DNS for the destination check (tests: names that resolve to private addresses, without DNS). */
  resolver?: Resolver
}

export default fp<ResendPluginOptions>(async function resend (fastify, opts) {
  const { config } = fastify
  const processor = createResendProcessor({
    allowList: parseAllowList('RESEND_ALLOWED_HOSTS', config.RESEND_ALLOWED_HOSTS),
    timeoutMs: config.RESEND_TIMEOUT_MS,
    maxResponseBytes: config.RESEND_MAX_RESPONSE_BYTES,
    maxDepth: config.BODY_MAX_DEPTH,
    resolver: opts.resolver
  })
  fastify.decorate('resend', processor)
  fastify.addHook('onClose', async () => await processor.close())
}, { name: 'resend', fastify: '5.x', dependencies: ['config'] })
