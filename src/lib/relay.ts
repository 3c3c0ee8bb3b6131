import { setTimeout as sleep } from 'node:timers/promises'
import type { Dispatcher } from 'undici'
import { ServiceError, outcomeOf } from './errors.js'
import { RawJson, mayLoseNumbers } from './exact-json.js'
import { jsonDeeperThan } from './json-depth.js'
import type { JsonPathPool } from './json-path-pool.js'
import { prepareBody, type CommandReport, type Commands } from './resend-commands.js'
import { USER_AGENT } from './service-info.js'
import { ResponseTooLargeError, readBodyLimited, transportError, withDeadline } from './upstream.js'
import { checkDestination, createPolicyAgents, isDestinationRefusal, type PolicyEntry, type Resolver } from './upstream-policy.js'

export const RESEND_METHODS = ['POST', 'PUT', 'PATCH', 'DELETE', 'GET'] as const
export type ResendMethod = typeof RESEND_METHODS[number]
export const DEFAULT_METHOD: ResendMethod = 'POST'

export interface RelayRequest {
  location: string
  method?: ResendMethod | undefined
  headers?: Record<string, string> | undefined
  params?: unknown
  /** The request body as it arrived, so that params reach the destination with their numbers exact. */
  bodyText?: string | undefined
  commands?: Commands | undefined
  /** 1 (the default): no retry. */
  maxAttempts?: number | undefined
}

/** A 2xx answer of the destination; anything else is thrown as UPSTREAM_ERROR with the same fields. */
export interface RelayAnswer {
  status: number
  /** Parsed JSON, RawJson (JSON whose numbers a parse would change), or text. */
  body: unknown
  attempts: number
  /** What the commands did, when there were any. */
  commands?: CommandReport
}

/** Where the request went and how it ended, for the request's log line: never a header value or the body. */
export type RelayTrace = Record<string, unknown>

export interface Relay {
  /**
   * Applies the commands, checks the destination, sends, retries where allowed; never follows redirects. Returns
   * the answer with its trace; a failure is a ServiceError whose `logFields` hold the trace.
   */
  send (request: RelayRequest): Promise<{ answer: RelayAnswer, trace: RelayTrace }>
  close (): Promise<void>
}

export interface RelayOptions {
  allowList: PolicyEntry[]
  timeoutMs: number
  maxResponseBytes: number
  /** BODY_MAX_DEPTH: how deep the rewritten body and a JSON answer may nest. */
  maxDepth: number
  /** Where json_parse runs, and the exact re-serialization of bodies with numbers JSON.parse would change. */
  jsonPath: JsonPathPool
  resolver?: Resolver | undefined
  /** Told how each relay ended (`success` or the error code, lower case) and after how many attempts. */
  onOutcome?: (outcome: string, attempts: number) => void
  /** Told when a destination resolved to an address the policy refuses (worth a warning in the logs). */
  onRefusedAddress?: (trace: RelayTrace) => void
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

/**
 * JSON answers are passed on parsed, or as their own text where a parse would change a number (an id beyond
 * 2^53); text, and JSON nested too deep to carry, as text.
 */
function parseBody (raw: Buffer, contentType: string | string[] | undefined, maxDepth: number): unknown {
  const text = raw.toString('utf8')
  if (/\bjson\b/i.test(String(contentType)) && !jsonDeeperThan(text, maxDepth)) {
    try {
      const parsed: unknown = JSON.parse(text)
      return mayLoseNumbers(text) ? new RawJson(text.trim()) : parsed
    } catch {
      return text
    }
  }
  return text
}

// What each rule of the policy means to the caller who met it.
const REFUSALS: Record<string, { reason: string, detail: string }> = {
  host: { reason: 'host', detail: 'the host is not in RESEND_ALLOWED_HOSTS' },
  scheme: { reason: 'scheme', detail: 'only https, unless RESEND_ALLOWED_HOSTS names the destination as an http:// origin' },
  port: { reason: 'port', detail: 'the port is not allowed: RESEND_ALLOWED_HOSTS allows the scheme\'s port, or the port an entry names' },
  address: { reason: 'address', detail: 'the host is an address that is not public: RESEND_ALLOWED_HOSTS must name that exact address to allow it' },
  resolved: { reason: 'address', detail: 'the host resolves to an address that is not public: RESEND_ALLOWED_HOSTS must name that exact host to allow it' },
  userinfo: { reason: 'userinfo', detail: 'a user name or password in the URL is not allowed' }
}

function destinationRefused (rule: string): ServiceError {
  const refusal = REFUSALS[rule] as { reason: string, detail: string }
  return new ServiceError('DESTINATION_NOT_ALLOWED', { ...refusal, variable: 'RESEND_ALLOWED_HOSTS' })
}

type Attempt = { answer: RelayAnswer } | { retryInMs: number }

/** The relay behind POST /resend: only to allowed destinations, checked again at connect time. */
export function createRelay (options: RelayOptions): Relay {
  const agents = createPolicyAgents({ timeoutMs: options.timeoutMs, resolver: options.resolver })

  async function send (request: RelayRequest, trace: RelayTrace): Promise<RelayAnswer> {
    const method = request.method ?? DEFAULT_METHOD
    const maxAttempts = request.maxAttempts ?? 1
    const decision = checkDestination(request.location, options.allowList)
    if (!decision.allowed) {
      if (decision.reason === 'url') throw new ServiceError('VALIDATION_FAILED', { field: 'location', reason: 'location must be an absolute http(s) URL' })
      throw destinationRefused(decision.reason)
    }
    const { url } = decision
    // Commands run before anything is sent: a failed command sends nothing.
    const prepared = await prepareBody(request, options.jsonPath)
    const report = prepared.report
    const body = method !== 'GET' ? prepared.body : undefined
    const hasBody = body !== undefined
    const headers = outgoingHeaders(request.headers, hasBody)
    const dispatcher = agents.dispatcherFor(decision.allowPrivate)
    const started = performance.now()
    trace.destination = `${decision.host}${url.pathname}`
    trace.upstream_method = method

    // One attempt, within RESEND_TIMEOUT_MS from sending to the last byte: the answer, or how long to wait.
    async function attemptOnce (attempt: number, signal: AbortSignal): Promise<Attempt> {
      const last = attempt >= maxAttempts
      trace.attempts = attempt
      let response: Dispatcher.ResponseData
      try {
        response = await dispatcher.request({ origin: url.origin, path: url.pathname + url.search, method, headers, body, signal })
      } catch (err) {
        if (isDestinationRefusal(err)) {
          options.onRefusedAddress?.(trace)
          throw destinationRefused('resolved')
        }
        if (!last && isRetryableTransportError(err)) return { retryInMs: backoffMillis(attempt) }
        throw transportError(err, url.origin, { attempts: attempt })
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
        if (err instanceof ResponseTooLargeError) throw new ServiceError('UPSTREAM_RESPONSE_TOO_LARGE', { status: response.statusCode, limit: options.maxResponseBytes, attempts: attempt })
        throw transportError(err, url.origin, { attempts: attempt })
      }
      const parsed = parseBody(raw, response.headers['content-type'], options.maxDepth)
      if (!last && response.statusCode === 400 && (parsed as { code?: unknown } | null)?.code === FEISHU_RATE_LIMITED) return { retryInMs: wait() }
      trace.upstream_status = response.statusCode
      const answer: RelayAnswer = { status: response.statusCode, body: parsed, attempts: attempt }
      if (report !== undefined) answer.commands = report
      return { answer }
    }

    try {
      let attempt = 1
      let result = await withDeadline(options.timeoutMs, async (signal) => await attemptOnce(attempt, signal))
      while ('retryInMs' in result) {
        await sleep(result.retryInMs)
        attempt++
        result = await withDeadline(options.timeoutMs, async (signal) => await attemptOnce(attempt, signal))
      }
      const { answer } = result
      if (answer.status < 200 || answer.status > 299) throw new ServiceError('UPSTREAM_ERROR', { ...answer })
      return answer
    } finally {
      trace.upstream_ms = Math.round(performance.now() - started)
    }
  }

  return {
    async send (request) {
      const trace: RelayTrace = {}
      try {
        const answer = await send(request, trace)
        options.onOutcome?.('success', answer.attempts)
        return { answer, trace }
      } catch (err) {
        options.onOutcome?.(outcomeOf(err), typeof trace.attempts === 'number' ? trace.attempts : 0)
        if (err instanceof ServiceError) err.logFields = trace
        throw err
      }
    },
    async close () {
      await agents.close()
    }
  }
}
