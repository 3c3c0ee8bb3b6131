import type { ResendMethod } from './request.js'

/**
 * The request as a queued job stores it (sealed): what was checked and prepared at acceptance, sent as it is on
 * every attempt. Its body is kept as the bytes it is, after a small JSON head: a body inside JSON would be escaped
 * (a megabyte of quotes or backslashes becomes two, control characters six times over).
 */
export interface Payload {
  location: string
  method: ResendMethod
  headers: Record<string, string>
  body: string | undefined
  feishuApp?: string | undefined
  /** Feishu Bitable's client_token: fixed per job, so a repeated creation is a no-op. */
  clientToken: string
}

type Head = Omit<Payload, 'body'> & { hasBody: boolean }

/** The head's length (4 bytes), the head as JSON, then the body's bytes. */
export function packPayload (payload: Payload): Buffer {
  const { body, ...rest } = payload
  const head = Buffer.from(JSON.stringify({ ...rest, hasBody: body !== undefined } satisfies Head), 'utf8')
  const length = Buffer.alloc(4)
  length.writeUInt32BE(head.length)
  return Buffer.concat([length, head, Buffer.from(body ?? '', 'utf8')])
}

/**
 * The payload packPayload made. A job queued by an earlier version holds its payload as one JSON document, whose
 * first byte is `{`; a packed one starts with the high byte of its head's length, 0 for any head it can have.
 */
export function unpackPayload (bytes: Buffer): Payload {
  if (bytes[0] === 0x7b) return JSON.parse(bytes.toString('utf8')) as Payload
  const length = bytes.readUInt32BE(0)
  const { hasBody, ...head } = JSON.parse(bytes.subarray(4, 4 + length).toString('utf8')) as Head
  return { ...head, body: hasBody ? bytes.subarray(4 + length).toString('utf8') : undefined }
}
