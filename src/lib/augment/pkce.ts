import { hash, randomBytes } from 'node:crypto'

/** `size` fresh random bytes, base64url without padding. */
export function randomBase64url (size: number): string {
  return randomBytes(size).toString('base64url')
}

export interface PkcePair {
  /** 32 random bytes, base64url without padding: 43 characters. */
  verifier: string
  /** base64url(SHA-256(verifier as ASCII)), without padding (S256). */
  challenge: string
}

export function createPkcePair (): PkcePair {
  const verifier = randomBase64url(32)
  return { verifier, challenge: challengeFor(verifier) }
}

export function challengeFor (verifier: string): string {
  // The verifier's own ASCII characters are hashed, not the bytes they encode.
  return hash('sha256', verifier, 'base64url')
}

/** 16 random bytes, base64url: the OAuth state, unguessable and used once. */
export function createOAuthState (): string {
  return randomBase64url(16)
}

export interface AuthorizeParams {
  challenge: string
  clientId: string
  state: string
}

/** The authorize link with exactly the parameters, in the order, that Augment's own client sends. */
export function buildAuthorizeUrl (base: string, { challenge, clientId, state }: AuthorizeParams): string {
  const url = new URL(base)
  url.search = new URLSearchParams([
    ['response_type', 'code'],
    ['code_challenge', challenge],
    ['client_id', clientId],
    ['state', state],
    ['prompt', 'login']
  ]).toString()
  return url.toString()
}
