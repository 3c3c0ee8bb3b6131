import { createHmac } from 'node:crypto'
import { LosslessNumber } from 'lossless-json'
import { mayLoseNumbers, parseExact } from '../http/index.js'

/**
 * Idempotency-Key (the IETF httpapi draft) for queued delivery. The key names the job itself: its id is derived
 * from the caller and the key, so that the key and the job are one write (BullMQ adds a job id once), and a key
 * whose job was never stored is simply free. The request is compared as data, not as bytes.
 */

// Fields of the body that say how to ask, not what to send: the same request asked either way is the same request.
const NOT_THE_REQUEST = new Set(['delivery', 'coze_api_key'])

function canonical (value: unknown): string {
  if (value instanceof LosslessNumber) return value.value
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const entries = Object.keys(value).sort().map((key) => `${JSON.stringify(key)}:${canonical((value as Record<string, unknown>)[key])}`)
    return `{${entries.join(',')}}`
  }
  return JSON.stringify(value)
}

/**
 * The request body as data: keys in order, white space gone, numbers as values (`1.0` is `1`; a number a double
 * cannot hold keeps its digits), and without the fields that only say how it was asked (`delivery`, the key).
 */
export function canonicalRequest (parsed: unknown, text: string): string {
  const body = (mayLoseNumbers(text) ? parseExact(text) : parsed) as Record<string, unknown>
  return canonical(Object.fromEntries(Object.entries(body).filter(([field]) => !NOT_THE_REQUEST.has(field))))
}

/** A UUID (version 4's layout, as job ids are) made from an HMAC: the same caller and key give the same id. */
export function idempotentJobId (secret: Buffer, owner: string, key: string): string {
  const bytes = createHmac('sha256', secret).update(`${owner}\u0000${key}`).digest().subarray(0, 16)
  bytes[6] = ((bytes[6] as number) & 0x0f) | 0x40
  bytes[8] = ((bytes[8] as number) & 0x3f) | 0x80
  const hex = bytes.toString('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}
