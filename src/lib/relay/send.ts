import { setTimeout as sleep } from 'node:timers/promises'
import type { Dispatcher } from 'undici'
import { ServiceError, outcomeOf } from '../errors.js'
import { RawJson, mayLoseNumbers } from '../exact-json.js'
import { jsonDeeperThan } from '../json-depth.js'
import type { JsonPathPool } from './json-path-pool.js'
import { prepareBody, type CommandReport, type Commands } from './commands.js'
import { FEISHU_TOKEN_REFUSED, type FeishuToken, type FeishuTokens } from './feishu-tokens.js'
import { USER_AGENT } from '../service-info.js'
import { ResponseTooLargeError, readBodyLimited, transportError, withDeadline } from '../upstream.js'
import { checkDestination, createPolicyAgents, isDestinationRefusal, type PolicyEntry, type Resolver } from '../upstream-policy.js'

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
  /** A configured Feishu app whose tenant token is attached instead of the caller's Authorization. */
  auth?: { feishu_app: string } | undefined
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
  /** The policy check and the commands, as `send` does them first: what queued delivery stores. */
  prepare (request: RelayRequest): Promise<PreparedRequest>
  /** The policy check alone (throws its refusal): a stored request is checked again before each attempt. */
  check (location: string): { url: URL, host: string, allowPrivate: boolean }
  /** Whether answers from this origin speak Feishu's body codes: Feishu's and Lark's, and the apps' bases. */
  speaksFeishu (origin: string): boolean
  /** One attempt of a prepared request; `extra` adds a URL (client_token) and headers (Idempotency-Key). */
  attempt (prepared: PreparedRequest, attemptNo: number, extra?: { url?: URL, headers?: Record<string, string> }, trace?: RelayTrace): Promise<AttemptResult>
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
  /** The configured Feishu apps' tenant tokens, for requests that name one. */
  feishu?: FeishuTokens | undefined
}

// Hop-by-hop and framing headers belong to each connection, not to the message being replayed.
const DROPPED_HEADERS = new Set([
  'host', 'content-length', 'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect', 'http2-settings'
])
const RETRY_STATUSES = new Set([429, 503])
// Feishu's older APIs say "over the rate limit" as HTTP 400 with this body code.
export const FEISHU_RATE_LIMITED = 99991400
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

/** A request checked against the policy and with its commands applied: what is sent, attempt after attempt. */
export interface PreparedRequest {
  url: URL
  method: ResendMethod
  /** The destination's host, for traces and refusals. */
  host: string
  allowPrivate: boolean
  headers: Record<string, string>
  body: string | undefined
  /** A configured Feishu app whose tenant token each attempt carries. */
  feishuApp?: string | undefined
  report?: CommandReport | undefined
}

/**
 * How one attempt ended: an answer of the destination (any status), or a failure to get one. `retryInMs` is what
 * the destination asked for (Retry-After, Feishu's reset header), when it asked.
 */
export type AttemptResult =
  | { answer: RelayAnswer, askedRetryInMs?: number | undefined }
  | { failure: ServiceError, connectionFailed: boolean }

/** The Feishu body code of an answer, when it is a JSON object with a numeric `code`. */
export function feishuCode (body: unknown): number | undefined {
  const code = (body as { code?: unknown } | null)?.code
  return typeof body === 'object' && typeof code === 'number' ? code : undefined
}

const FEISHU_ORIGINS = new Set(['https://open.feishu.cn', 'https://open.larksuite.com'])

// Feishu's Bitable record creation takes a client_token (a UUID v4) that makes a repeat of it a no-op.
const BITABLE_CREATE = /^\/open-apis\/bitable\/v1\/apps\/[^/]+\/tables\/[^/]+\/records(\/batch_create)?\/?$/

/** The URL with `client_token` added, for Bitable record creation without one; any other URL as it is. */
export function withClientToken (url: URL, method: string, clientToken: string): URL {
  if (method !== 'POST' || !BITABLE_CREATE.test(url.pathname) || url.searchParams.has('client_token')) return url
  const out = new URL(url)
  out.searchParams.set('client_token', clientToken)
  return out
}

/** The relay behind POST /resend: only to allowed destinations, checked again at connect time. */
export function createRelay (options: RelayOptions): Relay {
  const agents = createPolicyAgents({ timeoutMs: options.timeoutMs, resolver: options.resolver })
  const { feishu } = options

  function check (location: string): Extract<ReturnType<typeof checkDestination>, { allowed: true }> {
    const decision = checkDestination(location, options.allowList)
    if (!decision.allowed) {
      if (decision.reason === 'url') throw new ServiceError('VALIDATION_FAILED', { field: 'location', reason: 'location must be an absolute http(s) URL' })
      throw destinationRefused(decision.reason)
    }
    return decision
  }

  async function prepare (request: RelayRequest): Promise<PreparedRequest> {
    const method = request.method ?? DEFAULT_METHOD
    const decision = check(request.location)
    const feishuApp = request.auth?.feishu_app
    if (feishuApp !== undefined) {
      if (feishu?.has(feishuApp) !== true) throw new ServiceError('VALIDATION_FAILED', { field: 'auth.feishu_app', reason: `${feishuApp} is not a configured Feishu app (FEISHU_APPS_FILE, FEISHU_APPS or feishu_apps)` })
      if (Object.keys(request.headers ?? {}).some((name) => name.toLowerCase() === 'authorization')) {
        throw new ServiceError('VALIDATION_FAILED', { field: 'auth', reason: 'auth.feishu_app and an Authorization header: send one' })
      }
    }
    // Commands run before anything is sent: a failed command sends nothing.
    const prepared = await prepareBody(request, options.jsonPath)
    const body = method !== 'GET' ? prepared.body : undefined
    return {
      url: decision.url,
      method,
      host: decision.host,
      allowPrivate: decision.allowPrivate,
      headers: outgoingHeaders(request.headers, body !== undefined),
      body,
      feishuApp,
      report: prepared.report
    }
  }

  /**
   * One attempt, within RESEND_TIMEOUT_MS from sending to the last byte. With a Feishu app, a token the answer
   * says is invalid is replaced once and the same attempt repeated. Refusals of the policy are thrown.
   */
  async function attempt (prepared: PreparedRequest, attemptNo: number, extra: { url?: URL, headers?: Record<string, string> } = {}, trace: RelayTrace = {}): Promise<AttemptResult> {
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
      return await (feishu as FeishuTokens).token(prepared.feishuApp, refused)
    }
    let token: FeishuToken | undefined
    try {
      token = await tokenFor()
    } catch (err) {
      return { failure: err as ServiceError, connectionFailed: false }
    }
    const first = await once(token)
    if (token === undefined || !('answer' in first) || !FEISHU_TOKEN_REFUSED.has(feishuCode(first.answer.body) ?? 0)) return first
    try {
      token = await tokenFor(token)
    } catch (err) {
      return { failure: err as ServiceError, connectionFailed: false }
    }
    trace.token_refreshed = true
    return await once(token)
  }

  async function sendNow (request: RelayRequest, trace: RelayTrace): Promise<RelayAnswer> {
    const maxAttempts = request.maxAttempts ?? 1
    const prepared = await prepare(request)
    const started = performance.now()
    trace.destination = `${prepared.host}${prepared.url.pathname}`
    trace.upstream_method = prepared.method
    try {
      for (let attemptNo = 1; ; attemptNo++) {
        const last = attemptNo >= maxAttempts
        const result = await attempt(prepared, attemptNo, {}, trace)
        if ('failure' in result) {
          if (last || !result.connectionFailed) throw result.failure
          await sleep(backoffMillis(attemptNo))
          continue
        }
        const { answer } = result
        const rateLimited = RETRY_STATUSES.has(answer.status) || (answer.status === 400 && feishuCode(answer.body) === FEISHU_RATE_LIMITED)
        if (!last && rateLimited) {
          await sleep(Math.min(result.askedRetryInMs ?? backoffMillis(attemptNo), MAX_RETRY_DELAY_MS))
          continue
        }
        trace.upstream_status = answer.status
        if (answer.status < 200 || answer.status > 299) throw new ServiceError('UPSTREAM_ERROR', { ...answer })
        return answer
      }
    } finally {
      trace.upstream_ms = Math.round(performance.now() - started)
    }
  }

  return {
    async send (request) {
      const trace: RelayTrace = {}
      try {
        const answer = await sendNow(request, trace)
        options.onOutcome?.('success', answer.attempts)
        return { answer, trace }
      } catch (err) {
        options.onOutcome?.(outcomeOf(err), typeof trace.attempts === 'number' ? trace.attempts : 0)
        if (err instanceof ServiceError) err.logFields = trace
        throw err
      }
    },
    prepare,
    check,
    speaksFeishu: (origin) => FEISHU_ORIGINS.has(origin) || feishu?.isFeishuOrigin(origin) === true,
    attempt,
    async close () {
      await agents.close()
    }
  }
}
