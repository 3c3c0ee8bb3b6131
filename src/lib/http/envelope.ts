import type { ServiceError } from './errors.js'
import { messageFor, pickLocale, type SuccessText } from './messages.js'

/** What every answer is made of, `{ success, data, message }`: the schemas of it are in schemas/envelope.ts. */

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
