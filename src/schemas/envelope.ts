import { Type, type TSchema } from '@sinclair/typebox'
import { ERROR_STATUS, type ErrorCode } from '../lib/http/index.js'

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
