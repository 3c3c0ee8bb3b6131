import { createPrivateKey, randomBytes, sign, type KeyObject } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import { promisify } from 'node:util'

export class PrivateKeyError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'PrivateKeyError'
  }
}

export interface PrivateKeySource {
  pem?: string | undefined
  file?: string | undefined
  /** The names messages give the two (default JWT_PRIVATE_KEY and JWT_PRIVATE_KEY_FILE). */
  pemName?: string
  fileName?: string
}

/** Where the key of a source comes from, as messages name it: `JWT_PRIVATE_KEY_FILE (./key.pem)`. */
export function keyLabel (source: PrivateKeySource): string {
  if (source.pem !== undefined && source.pem.trim() !== '') return source.pemName ?? 'JWT_PRIVATE_KEY'
  return `${source.fileName ?? 'JWT_PRIVATE_KEY_FILE'} (${String(source.file)})`
}

/** Why a key file cannot be read: for a permission refusal, its mode and owner and who this process is. */
async function whyUnreadable (file: string, err: NodeJS.ErrnoException): Promise<string> {
  if (err.code !== 'EACCES') return `cannot be read (${String(err.code)})`
  const found = await stat(file).catch(() => undefined)
  if (found === undefined) return 'cannot be read (EACCES)'
  const mode = (found.mode & 0o777).toString(8).padStart(4, '0')
  return `cannot be read (EACCES): mode ${mode}, owner uid ${found.uid} gid ${found.gid}, and this process runs as uid ${String(process.geteuid?.())}. ` +
    'Make it readable by that uid (in the image: uid 1000), e.g. chown 1000 on the file, or chmod 0444 where only the container sees it'
}

/** Reads the key from the variable or the file. Returns undefined when neither is set. */
export async function readPrivateKeyPem (source: PrivateKeySource): Promise<string | undefined> {
  if (source.pem !== undefined && source.pem.trim() !== '') return source.pem
  if (source.file !== undefined && source.file.trim() !== '') {
    try {
      return await readFile(source.file, 'utf8')
    } catch (err) {
      throw new PrivateKeyError(`${keyLabel(source)} ${await whyUnreadable(source.file, err as NodeJS.ErrnoException)}`)
    }
  }
  return undefined
}

/**
 * Accepts PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM, also written on one line
 * with literal `\n` (how single-line secret stores hold it), and returns the key object that signs RS256.
 */
// How each other kind of key is named, with its article.
const KEY_TYPES: Record<string, string> = {
  ec: 'an EC', ed25519: 'an Ed25519', ed448: 'an Ed448', x25519: 'an X25519', x448: 'an X448', dsa: 'a DSA', dh: 'a DH', 'rsa-pss': 'an RSA-PSS'
}

/** `label` names where the key came from in every refusal (a variable, or a key of the apps document). */
export async function importRsaPrivateKey (pem: string, label = 'JWT_PRIVATE_KEY'): Promise<KeyObject> {
  const text = pem.trim().replace(/^(["'])([\s\S]*)\1$/, '$2').replace(/\\r/g, '').replace(/\\n/g, '\n')
  let key
  try {
    key = createPrivateKey({ key: text, format: 'pem' })
  } catch {
    // The parser's own message may quote the input; say what is wrong, and what to do, without it.
    throw new PrivateKeyError(whyNotAPrivateKey(text, label))
  }
  if (key.asymmetricKeyType !== 'rsa') {
    const type = String(key.asymmetricKeyType)
    /* c8 ignore next - a kind of key a later Node may add */
    const named = KEY_TYPES[type] ?? `a ${type}`
    throw new PrivateKeyError(`${label} is ${named} key; Coze needs an RSA key for RS256`)
  }
  // Node sets the details of every RSA key.
  const bits = key.asymmetricKeyDetails!.modulusLength!
  if (bits < 2048) {
    throw new PrivateKeyError(`${label} is a ${bits}-bit RSA key; RS256 needs at least 2048 bits`)
  }
  return key
}

/** What a value that is not a readable private key most likely is, and what to do about it. */
export function whyNotAPrivateKey (text: string, label = 'JWT_PRIVATE_KEY'): string {
  const lines = text.split('\n').filter((line) => line.trim() !== '')
  if (/-----BEGIN (RSA )?PUBLIC KEY-----|-----BEGIN CERTIFICATE-----/.test(text)) {
    return `${label} is a public key or a certificate: give the private key of the pair (Coze keeps the public key and shows its fingerprint as the kid)`
  }
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(text)) {
    return `${label} is encrypted with a passphrase: decrypt it once with \`openssl pkey -in key.pem -out key-plain.pem\` and give that`
  }
  if (lines.length === 1 && /^-----BEGIN [A-Z ]*PRIVATE KEY-----$/.test(lines[0] as string)) {
    return `${label} holds only the first line of a PEM (a multi-line key pasted into .env without quotes): put the key in double quotes, write it on one line with \\n between lines, or give the file as JWT_PRIVATE_KEY_FILE`
  }
  // A 2048-bit key is over 1,200 characters of base64; a short word is not one.
  if (!text.includes('-----BEGIN') && text.length >= 256 && /^[A-Za-z0-9+/=\s]+$/.test(text)) {
    return `${label} looks like base64 DER without the PEM lines: wrap it in -----BEGIN PRIVATE KEY----- and -----END PRIVATE KEY-----, or convert it with \`openssl pkey -inform DER -in key.der -out key.pem\``
  }
  return `${label} is not a readable PEM private key (expected BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)`
}

export interface CozeJwtClaims {
  /** Public-key fingerprint shown on the Coze OAuth app page; goes into the header's kid. */
  kid: string
  /** The Coze OAuth app id. */
  iss: string
  /** Host of the Coze API: api.coze.cn or api.coze.com. */
  aud: string
  ttlSeconds: number
  sessionName?: string | undefined
  /** Coze's session_context: `{ device_info: { device_id } }` or `{ device_info: { custom_consumer } }`. */
  sessionContext?: Record<string, unknown> | undefined
}

export interface Signer {
  signCozeJwt (claims: CozeJwtClaims): Promise<string>
}

// With a callback, node:crypto signs on libuv's thread pool, off the event loop.
const signOnThreadPool = promisify(sign)
const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

/**
 * Signs the one-time JWT that Coze exchanges for an access token: RS256 (RSASSA-PKCS1-v1_5 with SHA-256), made
 * with node:crypto's sign on libuv's thread pool. The header of each kid is encoded once; per request only the
 * claims are. (jose's builder did the same work with more steps on the main thread: measured, it was a tenth of
 * the main thread's time per /token with the cache off.) The tests verify every JWT with jose.
 */
export function createSigner (key: KeyObject, now: () => number = Date.now): Signer {
  const headers = new Map<string, string>()
  return {
    async signCozeJwt ({ kid, iss, aud, ttlSeconds, sessionName, sessionContext }) {
      let header = headers.get(kid)
      if (header === undefined) {
        header = encode({ alg: 'RS256', typ: 'JWT', kid })
        // Bounded: kids come from configuration or, in single-app mode, from callers (128 characters each).
        if (headers.size < 1000) headers.set(kid, header)
      }
      const iat = Math.floor(now() / 1000)
      // Coze rejects a reused JWT; 32 random bytes make every jti new.
      const claims: Record<string, unknown> = { iss, aud, iat, exp: iat + ttlSeconds, jti: randomBytes(32).toString('base64url') }
      if (sessionName !== undefined) claims.session_name = sessionName
      if (sessionContext !== undefined) claims.session_context = sessionContext
      const signingInput = `${header}.${encode(claims)}`
      const signature = await signOnThreadPool('sha256', Buffer.from(signingInput), key)
      return `${signingInput}.${signature.toString('base64url')}`
    }
  }
}
