import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto'

/** Values kept in Redis that no one without the secret can read or change unseen. */
export interface Sealer {
  /** AES-256-GCM of the value's JSON, bound to `name`: a sealed value moved under another name does not open. */
  seal (name: string, value: unknown): string
  /** The value, or undefined when absent, sealed with another secret, under another name, or tampered with. */
  open<T> (name: string, sealed: string | null | undefined): T | undefined
  /** The same for bytes as they are (no JSON around them): base64 of IV, tag and ciphertext. */
  sealBytes (name: string, bytes: Buffer): string
  openBytes (name: string, sealed: string | null | undefined): Buffer | undefined
}

/** A sealer whose key is derived from `secret` for one purpose, so one secret can serve several stores. */
export function createSealer (secret: Buffer, purpose: string): Sealer {
  const key = Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), purpose, 32))
  function sealBytes (name: string, bytes: Buffer): string {
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', key, iv)
    cipher.setAAD(Buffer.from(name))
    const body = Buffer.concat([cipher.update(bytes), cipher.final()])
    return Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64')
  }
  function openBytes (name: string, sealed: string | null | undefined): Buffer | undefined {
    if (sealed === null || sealed === undefined) return undefined
    try {
      const raw = Buffer.from(sealed, 'base64')
      const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12))
      decipher.setAAD(Buffer.from(name))
      decipher.setAuthTag(raw.subarray(12, 28))
      return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()])
    } catch {
      return undefined
    }
  }
  return {
    seal: (name, value) => sealBytes(name, Buffer.from(JSON.stringify(value), 'utf8')),
    open<T> (name: string, sealed: string | null | undefined): T | undefined {
      const bytes = openBytes(name, sealed)
      return bytes === undefined ? undefined : JSON.parse(bytes.toString('utf8')) as T
    },
    sealBytes,
    openBytes
  }
}
