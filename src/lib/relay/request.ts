import { type PolicyEntry, ServiceError, USER_AGENT } from '../http/index.js'
import { type CommandReport, type Commands, prepareBody } from './commands.js'
import { allowedDestination } from './destination.js'
import type { FeishuTokens } from './feishu.js'
import type { JsonPathPool } from './json-path-pool.js'

/** What a caller asks the relay to send, and what is sent: checked against the policy, its commands applied. */

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
  /** A configured Feishu app whose tenant token is attached instead of the caller's Authorization. */
  auth?: { feishu_app: string } | undefined
}

// Hop-by-hop and framing headers belong to each connection, not to the message being replayed.
const DROPPED_HEADERS = new Set([
  'host', 'content-length', 'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect', 'http2-settings'
])
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

export interface PreparerOptions {
  allowList: PolicyEntry[]
  /** Where json_parse runs, and the exact re-serialization of bodies with numbers JSON.parse would change. */
  jsonPath: JsonPathPool
  feishu?: FeishuTokens | undefined
}

/** The first stage of every request, now or queued: the destination, the auth, the commands, the headers. */
export function createPreparer (options: PreparerOptions): (request: RelayRequest) => Promise<PreparedRequest> {
  return async function prepare (request: RelayRequest): Promise<PreparedRequest> {
    const method = request.method ?? DEFAULT_METHOD
    const decision = allowedDestination(request.location, options.allowList)
    const feishuApp = request.auth?.feishu_app
    if (feishuApp !== undefined) {
      if (options.feishu?.has(feishuApp) !== true) throw new ServiceError('VALIDATION_FAILED', { field: 'auth.feishu_app', reason: `${feishuApp} is not a configured Feishu app (FEISHU_APPS_FILE, FEISHU_APPS or feishu_apps)` })
      options.feishu.checkOrigin(feishuApp, decision.url.origin)
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
}
