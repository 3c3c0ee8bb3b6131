import { Type, type TSchema } from '@sinclair/typebox'
import { ERROR_STATUS, type ErrorCode, type ServiceError } from '../lib/errors.js'
import { messageFor, pickLocale, type SuccessText } from '../lib/messages.js'

/** The one shape of every answer: `{ success, data, message }`. */
export const Envelope = <T extends TSchema>(data: T) =>
  Type.Object({
    success: Type.Literal(true),
    data,
    message: Type.String()
  })

/** Error answers: `data.error` is a stable upper-case code; other fields are details of that code. */
export const ErrorEnvelope = Type.Object({
  success: Type.Literal(false),
  data: Type.Object({
    error: Type.Unsafe<ErrorCode>({ type: 'string', enum: Object.keys(ERROR_STATUS), description: 'The stable code; the HTTP status belongs to it.' })
  }, { additionalProperties: true }),
  message: Type.String()
}, { $id: 'ErrorEnvelope', description: 'An error: data.error is a stable code; data may carry details.' })

/** The error answers every route can give; routes add their own success schema. */
export const errorResponses = {
  '4xx': Type.Ref(ErrorEnvelope),
  '5xx': Type.Ref(ErrorEnvelope)
}

/** A success answer: the data, and the message of `text` in the caller's language. */
export function successEnvelope<T> (acceptLanguage: string | string[] | undefined, text: SuccessText, data: T): { success: true, data: T, message: string } {
  return { success: true, data, message: messageFor(pickLocale(acceptLanguage), text) }
}

/** An error answer: the code, its details, and its message in the caller's language. */
export function errorEnvelope (error: ServiceError, acceptLanguage: string | string[] | undefined) {
  return {
    success: false as const,
    data: Object.assign({}, error.details, { error: error.code }),
    message: messageFor(pickLocale(acceptLanguage), error.code, error.details)
  }
}
