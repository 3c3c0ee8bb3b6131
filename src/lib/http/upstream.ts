import type { Dispatcher } from 'undici'
import { ServiceError } from './errors.js'
import { USER_AGENT } from './service-info.js'
import { isDestinationRefusal } from './upstream-policy.js'

export class ResponseTooLargeError extends Error {
  constructor (readonly limit: number) {
    super(`upstream response exceeds ${limit} bytes`)
    this.name = 'ResponseTooLargeError'
  }
}

/** Reads a response body up to `limit` bytes and stops reading, without buffering the rest, past it. */
export async function readBodyLimited (body: AsyncIterable<Uint8Array> & { destroy?: (err?: Error) => void }, limit: number): Promise<Buffer> {
  const chunks: Uint8Array[] = []
  let size = 0
  for await (const chunk of body) {
    size += chunk.length
    if (size > limit) {
      const err = new ResponseTooLargeError(limit)
      body.destroy?.(err)
      throw err
    }
    chunks.push(chunk)
  }
  return Buffer.concat(chunks, size)
}

const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'ETIMEDOUT'])

/** Whether a failure to talk to an upstream was a timeout (504) or anything else (502 unreachable). */
export function isTimeout (err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false
  const { name, code, cause } = err as { name?: unknown, code?: unknown, cause?: unknown }
  if (name === 'TimeoutError' || (typeof code === 'string' && TIMEOUT_CODES.has(code))) return true
  return cause !== undefined && cause !== err && isTimeout(cause)
}

/** The code of a transport failure (ECONNREFUSED, UND_ERR_SOCKET, ...), looked for through its causes. */
export function causeCode (err: unknown): string | undefined {
  for (let at = err, depth = 0; typeof at === 'object' && at !== null && depth < 5; at = (at as { cause?: unknown }).cause, depth++) {
    const { code, name } = at as { code?: unknown, name?: unknown }
    if (typeof code === 'string') return code
    if (name === 'TimeoutError') return 'timeout'
  }
  return undefined
}

/**
 * Maps a transport failure to the service's answer, naming where (the origin only: a path or a query may hold
 * secrets) and the cause's code. The cause itself is kept for the log, never shown.
 */
export function transportError (err: unknown, origin: string, details: Record<string, unknown> = {}): ServiceError {
  const cause = causeCode(err)
  return new ServiceError(isTimeout(err) ? 'UPSTREAM_TIMEOUT' : 'UPSTREAM_UNREACHABLE', { origin, ...(cause === undefined ? {} : { cause }), ...details }, { cause: err })
}

/** The JSON object in an answer, or an empty object when it holds none (not JSON, an array, a string). */
export function jsonObject (raw: Buffer): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(raw.toString('utf8'))
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : {}
  } catch {
    return {}
  }
}

/**
 * Runs `call` with an AbortSignal that fires after `ms`, and clears the timer as soon as the call ends.
 * (AbortSignal.timeout keeps its timer, and what hangs on the signal, alive for the whole timeout even after
 * the request is done: at thousands of requests a second that is a hundred thousand live timers.)
 */
export async function withDeadline<T> (ms: number, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController()
  const timer = setTimeout(() => { controller.abort(new DOMException(`no answer within ${ms} ms`, 'TimeoutError')) }, ms)
  try {
    return await call(controller.signal)
  } finally {
    clearTimeout(timer)
  }
}

export interface PostJsonOptions {
  headers?: Record<string, string>
  timeoutMs: number
  /** Past this many bytes the answer is not read further: ResponseTooLargeError. */
  maxResponseBytes: number
}

/** POSTs a JSON body and reads the answer, all within the deadline; the caller decides what the answer means. */
export async function postJson (dispatcher: Dispatcher, url: URL, body: unknown, options: PostJsonOptions): Promise<{ status: number, headers: Dispatcher.ResponseData['headers'], raw: Buffer }> {
  return await withDeadline(options.timeoutMs, async (signal) => {
    const response = await dispatcher.request({
      origin: url.origin,
      path: url.pathname + url.search,
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json', 'user-agent': USER_AGENT, ...options.headers },
      body: JSON.stringify(body),
      signal
    })
    return { status: response.statusCode, headers: response.headers, raw: await readBodyLimited(response.body, options.maxResponseBytes) }
  })
}

export interface JsonExchangeOptions extends PostJsonOptions {
  /** The answer when the upstream's body is over maxResponseBytes. */
  tooLarge: () => ServiceError
  /** The answer when the connect-time address check refused the upstream (policy-checked upstreams only). */
  refused?: () => ServiceError
}

export interface JsonAnswer {
  status: number
  headers: Dispatcher.ResponseData['headers']
  /** The JSON object the upstream sent, or {} when it sent none. */
  body: Record<string, unknown>
}

/**
 * A JSON exchange with an upstream (Coze, an Augment tenant), with every failure mapped here and only here: a
 * body over the limit, a refused address, a timeout (504) or any other transport failure (502).
 */
export async function exchangeJson (dispatcher: Dispatcher, url: URL, body: unknown, options: JsonExchangeOptions): Promise<JsonAnswer> {
  let answer
  try {
    answer = await postJson(dispatcher, url, body, options)
  } catch (err) {
    if (err instanceof ResponseTooLargeError) throw options.tooLarge()
    if (options.refused !== undefined && isDestinationRefusal(err)) throw options.refused()
    throw transportError(err, url.origin)
  }
  return { status: answer.status, headers: answer.headers, body: jsonObject(answer.raw) }
}
