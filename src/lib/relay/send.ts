import { setTimeout as sleep } from 'node:timers/promises'
import type { Dispatcher } from 'undici'
import { createPolicyAgents, isDestinationRefusal, jsonDeeperThan, mayLoseNumbers, outcomeOf, type PolicyEntry, RawJson, readBodyLimited, type Resolver, ResponseTooLargeError, ServiceError, transportError, withDeadline } from '../http/index.js'
import type { Attributes } from '@opentelemetry/api'
import { inSpan } from '../tracing/index.js'
import type { CommandReport } from './commands.js'
import type { AttemptOutcome, Destinations } from './destinations.js'
import { allowedDestination, destinationRefused } from './destination.js'
import { FEISHU_ORIGINS, FEISHU_RATE_LIMITED, FEISHU_TOKEN_REFUSED, feishuCode, type FeishuToken, type FeishuTokens } from './feishu.js'
import type { JsonPathPool } from './json-path-pool.js'
import { createPreparer, type PreparedRequest, type RelayRequest } from './request.js'

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
   * The first stage of every request, now or queued (request.ts): the destination policy, the auth, the
   * commands. A refusal is counted as the request's outcome.
   */
  prepare (request: RelayRequest): Promise<PreparedRequest>
  /**
   * Sends now, retrying where allowed (up to `maxAttempts`, default 1); never follows redirects. Returns the
   * answer with its trace; a failure is a ServiceError whose `logFields` hold the trace.
   */
  send (prepared: PreparedRequest, maxAttempts?: number): Promise<{ answer: RelayAnswer, trace: RelayTrace }>
  /** The policy check alone (throws its refusal): a stored request is checked again before each attempt. */
  check (location: string): { url: URL, host: string, allowPrivate: boolean }
  /** Whether answers from this origin speak Feishu's body codes: Feishu's and Lark's, and the apps' bases. */
  speaksFeishu (origin: string): boolean
  /** One attempt of a prepared request; `extra` adds a URL (client_token) and headers (Idempotency-Key). */
  attempt (prepared: PreparedRequest, attemptNo: number, extra?: AttemptExtra, trace?: RelayTrace): Promise<AttemptResult>
  close (): Promise<void>
}

/** What a queued attempt adds: a URL (client_token), headers (Idempotency-Key), and the job, for its span. */
export interface AttemptExtra { url?: URL, headers?: Record<string, string>, jobId?: string }

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
  /** The configured Feishu apps' tenant tokens, for requests that name one. */
  feishu?: FeishuTokens | undefined
  /**
   * The destinations' limits and breakers (the queue's, in Redis), once there are: a request sent now meets them
   * before each attempt, and each attempt counts for its host.
   */
  destinations?: (() => Destinations | undefined) | undefined
}

const RETRY_STATUSES = new Set([429, 503])
const RETRY_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET'])
const MAX_RETRY_DELAY_MS = 10_000
// What a destination may ask a queued job to wait: a day at most (the job's age bounds it anyway).
const MAX_ASKED_DELAY_MS = 86_400_000

export function isRetryableTransportError (err: unknown): boolean {
  const { code, cause } = err as { code?: unknown, cause?: { code?: unknown } }
  return RETRY_CODES.has(String(code)) || RETRY_CODES.has(String(cause?.code))
}

/** Retry-After in seconds or as an HTTP date, capped; undefined when absent or unreadable. */
export function retryAfterMillis (value: string | string[] | undefined, now = Date.now(), cap = MAX_RETRY_DELAY_MS): number | undefined {
  const text = Array.isArray(value) ? value[0] : value
  if (text === undefined || text.trim() === '') return undefined
  const millis = /^\s*\d+\s*$/.test(text) ? Number(text) * 1000 : Date.parse(text) - now
  return Number.isNaN(millis) ? undefined : Math.min(Math.max(millis, 0), cap)
}

/** Exponential back-off with full jitter around it: 250 ms, 500 ms, 1 s, ... capped. */
export function backoffMillis (attempt: number): number {
  return Math.min(MAX_RETRY_DELAY_MS, 250 * 2 ** (attempt - 1) * (0.5 + Math.random()))
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

/**
 * How one attempt ended: an answer of the destination (any status), or a failure to get one. `retryInMs` is what
 * the destination asked for (Retry-After, Feishu's reset header), when it asked.
 */
export type AttemptResult =
  | { answer: RelayAnswer, askedRetryInMs?: number | undefined }
  | { failure: ServiceError, connectionFailed: boolean }

/** When Feishu's rate limit says nothing of its reset: the whole host pauses this long. */
export const FEISHU_DEFAULT_PAUSE_MS = 1000

/**
 * How an attempt counts for its destination (destinations.ts): the host answered (below 500), or it did not (no
 * connection, a timeout, a 5xx), or nothing reached it (the Feishu token could not be had). Feishu's rate limit,
 * and a 429 that says when to come back, pause the whole host until then.
 */
export function attemptOutcome (result: AttemptResult, speaksFeishu: boolean, now: number): AttemptOutcome {
  if ('failure' in result) return result.failure.code === 'FEISHU_TOKEN_FAILED' ? { kind: 'none' } : { kind: 'failed', error: result.failure.code }
  const { answer, askedRetryInMs } = result
  const feishuLimited = speaksFeishu && feishuCode(answer.body) === FEISHU_RATE_LIMITED
  const pauseUntil = feishuLimited ? now + (askedRetryInMs ?? FEISHU_DEFAULT_PAUSE_MS) : answer.status === 429 && askedRetryInMs !== undefined ? now + askedRetryInMs : undefined
  if (answer.status >= 500) return { kind: 'failed', error: `status_${answer.status}`, pauseUntil }
  return { kind: 'ok', pauseUntil }
}

/**
 * How long to wait before sending now again, or undefined to stop: only after a refused or reset connection, a
 * 429 or 503, or Feishu's rate limit, and while attempts remain.
 */
function retryWait (result: AttemptResult, attemptNo: number, maxAttempts: number): number | undefined {
  if (attemptNo >= maxAttempts) return undefined
  if ('failure' in result) return result.connectionFailed ? backoffMillis(attemptNo) : undefined
  const { answer } = result
  const rateLimited = RETRY_STATUSES.has(answer.status) || (answer.status === 400 && feishuCode(answer.body) === FEISHU_RATE_LIMITED)
  return rateLimited ? Math.min(result.askedRetryInMs ?? backoffMillis(attemptNo), MAX_RETRY_DELAY_MS) : undefined
}

/** The relay behind POST /resend: only to allowed destinations, checked again at connect time. */
export function createRelay (options: RelayOptions): Relay {
  const agents = createPolicyAgents({ timeoutMs: options.timeoutMs, resolver: options.resolver })
  const { feishu } = options
  const prepare = createPreparer(options)
  const check = (location: string): { url: URL, host: string, allowPrivate: boolean } => allowedDestination(location, options.allowList)
  const speaksFeishu = (origin: string): boolean => FEISHU_ORIGINS.has(origin) || feishu?.isFeishuOrigin(origin) === true

  /**
   * One attempt, within RESEND_TIMEOUT_MS from sending to the last byte. With a Feishu app, a token the answer
   * says is invalid is replaced once and the same attempt repeated. Refusals of the policy are thrown.
   */
  async function attempt (prepared: PreparedRequest, attemptNo: number, extra: AttemptExtra = {}, trace: RelayTrace = {}): Promise<AttemptResult> {
    // A span per attempt, now or queued: the destination without its query, the attempt, the job, the outcome.
    const attributes: Attributes = { 'server.address': prepared.url.hostname, 'url.path': prepared.url.pathname, 'aibill.resend.destination': `${prepared.url.host}${prepared.url.pathname}`, 'aibill.resend.attempt': attemptNo }
    if (extra.jobId !== undefined) attributes['aibill.resend.job_id'] = extra.jobId
    return await inSpan('resend attempt', attributes, async (span) => {
      const result = await attemptOnce(prepared, attemptNo, extra, trace)
      span.setAttributes('answer' in result
        ? { 'aibill.resend.outcome': 'answered', 'http.response.status_code': result.answer.status }
        : { 'aibill.resend.outcome': result.failure.code.toLowerCase() })
      if (trace.token_refreshed === true) span.setAttribute('aibill.feishu.token_refreshed', true)
      return result
    })
  }

  async function attemptOnce (prepared: PreparedRequest, attemptNo: number, extra: AttemptExtra, trace: RelayTrace): Promise<AttemptResult> {
    const url = extra.url ?? prepared.url
    const dispatcher = agents.dispatcherFor(prepared.allowPrivate)
    trace.attempts = attemptNo
    async function once (token: FeishuToken | undefined): Promise<AttemptResult & { token?: FeishuToken }> {
      const headers = { ...prepared.headers, ...extra.headers }
      if (token !== undefined) headers.authorization = `Bearer ${token.value}`
      return await withDeadline(options.timeoutMs, async (signal) => {
        let response: Dispatcher.ResponseData
        try {
          response = await dispatcher.request({ origin: url.origin, path: url.pathname + url.search, method: prepared.method, headers, body: prepared.body, signal })
        } catch (err) {
          if (isDestinationRefusal(err)) {
            options.onRefusedAddress?.(trace)
            throw destinationRefused('resolved')
          }
          return { failure: transportError(err, url.origin, { attempts: attemptNo }), connectionFailed: isRetryableTransportError(err) }
        }
        let raw: Buffer
        try {
          raw = await readBodyLimited(response.body, options.maxResponseBytes)
        } catch (err) {
          if (err instanceof ResponseTooLargeError) throw new ServiceError('UPSTREAM_RESPONSE_TOO_LARGE', { status: response.statusCode, limit: options.maxResponseBytes, attempts: attemptNo })
          return { failure: transportError(err, url.origin, { attempts: attemptNo }), connectionFailed: false }
        }
        const answer: RelayAnswer = { status: response.statusCode, body: parseBody(raw, response.headers['content-type'], options.maxDepth), attempts: attemptNo }
        if (prepared.report !== undefined) answer.commands = prepared.report
        // How long the destination asks us to wait: Retry-After, or Feishu's seconds until its window resets.
        const asked = retryAfterMillis(response.headers['retry-after'], Date.now(), MAX_ASKED_DELAY_MS) ?? retryAfterMillis(response.headers['x-ogw-ratelimit-reset'], Date.now(), MAX_ASKED_DELAY_MS)
        return { answer, askedRetryInMs: asked, token }
      })
    }
    const tokenFor = async (refused?: FeishuToken): Promise<FeishuToken | undefined> => {
      if (prepared.feishuApp === undefined) return undefined
      return await (feishu as FeishuTokens).token(prepared.feishuApp, url.origin, refused)
    }
    // The token's origin is checked before anything is sent: a refusal of the policy, not a failure to retry.
    if (prepared.feishuApp !== undefined) (feishu as FeishuTokens).checkOrigin(prepared.feishuApp, url.origin)
    let token: FeishuToken | undefined
    try {
      token = await tokenFor()
    } catch (err) {
      return { failure: err as ServiceError, connectionFailed: false }
    }
    const first = await once(token)
    if (token === undefined || !('answer' in first) || !FEISHU_TOKEN_REFUSED.has(feishuCode(first.answer.body) as number)) return first
    try {
      token = await tokenFor(token)
    } catch (err) {
      return { failure: err as ServiceError, connectionFailed: false }
    }
    trace.token_refreshed = true
    return await once(token)
  }

  /**
   * An attempt sent now, through its host's limit and breaker: a host at its limit is 429, a paused one 503, both
   * saying when to come back. (With their Redis failing, the attempt goes.)
   */
  async function gatedAttempt (prepared: PreparedRequest, attemptNo: number, trace: RelayTrace): Promise<AttemptResult> {
    const gate = options.destinations?.()
    if (gate === undefined) return await attempt(prepared, attemptNo, {}, trace)
    const { probe } = await gate.admitNow(prepared.url.host).catch((err: unknown) => {
      if (err instanceof ServiceError) throw err
      return { probe: false }
    })
    let outcome: AttemptOutcome = { kind: 'none' }
    try {
      const result = await attempt(prepared, attemptNo, {}, trace)
      outcome = attemptOutcome(result, prepared.feishuApp !== undefined || speaksFeishu(prepared.url.origin), Date.now())
      return result
    } finally {
      gate.settle(prepared.url.host, outcome, { probe }).catch(() => {})
    }
  }

  async function sendNow (prepared: PreparedRequest, maxAttempts: number, trace: RelayTrace): Promise<RelayAnswer> {
    let attemptNo = 1
    let result = await gatedAttempt(prepared, attemptNo, trace)
    for (let wait = retryWait(result, attemptNo, maxAttempts); wait !== undefined; wait = retryWait(result, attemptNo, maxAttempts)) {
      await sleep(wait)
      attemptNo++
      result = await gatedAttempt(prepared, attemptNo, trace)
    }
    if ('failure' in result) throw result.failure
    const { answer } = result
    trace.upstream_status = answer.status
    if (answer.status < 200 || answer.status > 299) throw new ServiceError('UPSTREAM_ERROR', { ...answer })
    return answer
  }

  return {
    async prepare (request) {
      return await prepare(request).catch((err: unknown) => {
        options.onOutcome?.(outcomeOf(err), 0)
        if (err instanceof ServiceError) err.logFields = {}
        throw err
      })
    },
    async send (prepared, maxAttempts = 1) {
      const trace: RelayTrace = { destination: `${prepared.host}${prepared.url.pathname}`, upstream_method: prepared.method }
      const started = performance.now()
      try {
        const answer = await sendNow(prepared, maxAttempts, trace)
        trace.upstream_ms = Math.round(performance.now() - started)
        options.onOutcome?.('success', answer.attempts)
        return { answer, trace }
      } catch (err) {
        trace.upstream_ms = Math.round(performance.now() - started)
        // The attempts made (none when the destination's limit or pause refused the first).
        options.onOutcome?.(outcomeOf(err), (trace.attempts as number | undefined) ?? 0)
        if (err instanceof ServiceError) err.logFields = trace
        throw err
      }
    },
    check,
    speaksFeishu,
    attempt,
    async close () {
      await agents.close()
    }
  }
}
