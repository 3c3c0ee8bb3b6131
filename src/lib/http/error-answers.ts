import { STATUS_CODES as HTTP_REASONS } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { type ErrorCode, isServiceError, ServiceError } from './errors.js'
import { errorEnvelope } from './envelope.js'
import { stringifyWithRaw } from './exact-json.js'

/**
 * How anything that goes wrong becomes the envelope: Fastify's errors and validation failures mapped to the
 * service's codes, the one error handler, and the answer to a request Node's parser refused.
 */

const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_BODY_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_JSON',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_JSON',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'BAD_REQUEST',
  FST_ERR_BAD_URL: 'BAD_REQUEST'
}

const STATUS_CODES: Record<number, ErrorCode> = {
  400: 'BAD_REQUEST',
  401: 'UNAUTHORIZED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  429: 'RATE_LIMITED',
  503: 'SERVICE_UNAVAILABLE'
}

interface ValidationIssue {
  instancePath: string
  keyword: string
  params: Record<string, unknown>
  message?: string
}

/** Names the field and what is wrong with it, from the first Ajv error. */
export function describeValidation (issues: ValidationIssue[], context: string): { field: string, reason: string } {
  const issue = issues[0] as ValidationIssue
  const path = issue.instancePath.slice(1).split('/').filter(Boolean)
  if (issue.keyword === 'required') path.push(String(issue.params.missingProperty))
  if (issue.keyword === 'additionalProperties') path.push(String(issue.params.additionalProperty))
  const field = path.join('.') || context
  const what = issue.keyword === 'required'
    ? 'is required'
    : issue.keyword === 'additionalProperties'
      ? 'is not an allowed field'
      : String(issue.message)
  return { field, reason: `${field} ${what}` }
}

/** Turns anything thrown into the service's own error, so every answer has a stable code. */
export function toServiceError (err: FastifyError, validationDetails?: Record<string, unknown>, hints?: Record<string, string>): ServiceError {
  if (isServiceError(err)) return err
  if (Array.isArray(err.validation) && err.validation.length > 0) {
    const described = describeValidation(err.validation as ValidationIssue[], String(err.validationContext))
    const hint = hints?.[described.field]
    // The hint says what the field takes, in place of the validator's words (a regex helps nobody here).
    if (hint !== undefined) described.reason = `${described.field} is not valid: ${hint}`
    return new ServiceError('VALIDATION_FAILED', validationDetails === undefined ? described : validationDetails)
  }
  const byCode = FASTIFY_CODES[err.code]
  if (byCode !== undefined) return new ServiceError(byCode, {}, { cause: err })
  const status = err.statusCode ?? 500
  const byStatus = status < 500 || status === 503 ? STATUS_CODES[status] : undefined
  return new ServiceError(byStatus ?? (status < 500 ? 'BAD_REQUEST' : 'INTERNAL'), {}, { cause: err })
}

export function sendError (err: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const { validationDetails, validationHints } = request.routeOptions.config
  const error = toServiceError(err, validationDetails, validationHints)
  if (error.logFields !== undefined) request.logFields = Object.assign(request.logFields ?? {}, error.logFields)
  if (error.code === 'INTERNAL') {
    request.log.error({ err }, 'request failed')
  } else if (error.statusCode >= 500) {
    // Upstream failures are expected; the cause says why, without request data.
    const cause = error.cause as { code?: unknown, message?: unknown } | undefined
    request.log.warn({ code: error.code, origin: error.details.origin, cause: error.details.cause ?? cause?.code ?? cause?.message }, 'request failed')
  }
  // An error that says when to come back says it in Retry-After too (RFC 9110), unless a header is already set.
  const retryAfter = error.details.retry_after_seconds
  if (typeof retryAfter === 'number' && !reply.hasHeader('retry-after')) void reply.header('retry-after', String(retryAfter))
  return reply.code(error.statusCode).type('application/json; charset=utf-8').send(serializeErrorEnvelope(error, request))
}

/**
 * The error answer as JSON text, serialized here rather than by Fastify so that no detail (an upstream body
 * included) can make serialization fail and leave the envelope: what cannot be written is left out, said so.
 */
export function serializeErrorEnvelope (error: ServiceError, request: FastifyRequest): string {
  const envelope = errorEnvelope(error, request.headers['accept-language'])
  try {
    return stringifyWithRaw(envelope)
  } catch (err) {
    request.log.warn({ code: error.code, reason: (err as Error).message.slice(0, 200) }, 'error details could not be serialized; left out')
    return JSON.stringify({ ...envelope, data: { error: error.code, details: 'omitted: not serializable' } })
  }
}

/**
 * A request Node's HTTP parser refused (a broken header line, Content-Length with Transfer-Encoding, headers
 * too large, too slow): the envelope where the socket can still take it, and a log line with the parser's code
 * only. (The default handler logs err.rawPacket, whose bytes hold the caller's headers, keys included.)
 */
export function answerClientError (this: FastifyInstance, err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const code: ErrorCode = err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
    ? 'REQUEST_TIMEOUT'
    : err.code === 'HPE_HEADER_OVERFLOW' ? 'HEADERS_TOO_LARGE' : 'BAD_REQUEST'
  this.log.info({ code: err.code, reason: code }, 'malformed request refused')
  if (socket.writable) {
    const error = new ServiceError(code)
    const body = JSON.stringify(errorEnvelope(error, undefined))
    socket.write(`HTTP/1.1 ${error.statusCode} ${String(HTTP_REASONS[error.statusCode])}\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
  }
  socket.destroy()
}
