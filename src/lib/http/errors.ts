// Every error the service answers with has a stable code; the HTTP status belongs to the code.
export const ERROR_STATUS = {
  VALIDATION_FAILED: 400,
  INVALID_JSON: 400,
  BAD_REQUEST: 400,
  COMMAND_FAILED: 400,
  TENANT_URL_NOT_ALLOWED: 400,
  OAUTH_STATE_NOT_FOUND: 400,
  OAUTH_STATE_EXPIRED: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  DESTINATION_NOT_ALLOWED: 403,
  NOT_FOUND: 404,
  CONFLICT: 409,
  IDEMPOTENCY_KEY_REUSED: 422,
  METHOD_NOT_ALLOWED: 405,
  REQUEST_TIMEOUT: 408,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  RATE_LIMITED: 429,
  HEADERS_TOO_LARGE: 431,
  INTERNAL: 500,
  COZE_EXCHANGE_FAILED: 502,
  UPSTREAM_UNREACHABLE: 502,
  UPSTREAM_ERROR: 502,
  UPSTREAM_RESPONSE_TOO_LARGE: 502,
  TOKEN_EXCHANGE_FAILED: 502,
  FEISHU_TOKEN_FAILED: 502,
  UPSTREAM_TIMEOUT: 504,
  NOT_CONFIGURED: 503,
  NOT_READY: 503,
  SERVICE_UNAVAILABLE: 503,
  STATE_STORE_UNAVAILABLE: 503
} as const

export type ErrorCode = keyof typeof ERROR_STATUS

export type ErrorDetails = Record<string, unknown>

/** A failure the service explains to its caller: a stable code, its HTTP status, and safe details. */
export class ServiceError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number
  readonly details: ErrorDetails
  /** Fields for the request's log line (where a relay went, how it ended); never shown to the caller. */
  logFields?: Record<string, unknown>

  constructor (code: ErrorCode, details: ErrorDetails = {}, options?: { cause?: unknown }) {
    // An expected outcome, not a defect: a stack trace would only cost time (a flood of 401s or 429s
    // builds thousands). A cause keeps its own stack for the log.
    const limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
    super(code, options)
    Error.stackTraceLimit = limit
    this.name = 'ServiceError'
    this.code = code
    this.statusCode = ERROR_STATUS[code]
    this.details = details
  }
}

export function isServiceError (err: unknown): err is ServiceError {
  return err instanceof ServiceError
}

/** A metrics label for how something ended: the error code in lower case, or `internal` for anything else. */
export function outcomeOf (err: unknown): string {
  return isServiceError(err) ? err.code.toLowerCase() : 'internal'
}

/** A configuration that cannot work: the start stops with its message, which names the variable and never a value. */
export class ConfigError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'ConfigError'
  }
}
