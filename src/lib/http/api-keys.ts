import { hash, timingSafeEqual } from 'node:crypto'

export interface ApiKeyVerifier {
  /** True when at least one key is configured; with none, callers get NOT_CONFIGURED, never open access. */
  readonly configured: boolean
  /** Constant-time check of a presented key against every configured key. */
  verify (presented: string | undefined): boolean
  /** Like verify, but says which key matched (its place in the list), or -1: an identity that is not the secret. */
  match (presented: string | undefined): number
}

// One-shot hashing: no Hash object per request.
const digest = (value: string): Buffer => hash('sha256', value, 'buffer')

/**
 * Which of the SHA-256 digests the presented key has, or -1. Hashing first gives equal-length buffers, and every
 * digest is compared, so timing shows nothing. The shared caller keys and the broker's callers both use it.
 */
export function matchKeyDigest (digests: readonly Buffer[], presented: string | undefined): number {
  if (typeof presented !== 'string' || presented.length === 0) return -1
  const candidate = digest(presented)
  let matched = -1
  digests.forEach((known, index) => { if (timingSafeEqual(candidate, known)) matched = index })
  return matched
}

/** Accepts a comma-separated list so that keys can be rotated without downtime. */
export function createApiKeyVerifier (list: string | undefined): ApiKeyVerifier {
  const keys = (list ?? '').split(',').map((key) => key.trim()).filter((key) => key.length > 0).map(digest)
  return {
    configured: keys.length > 0,
    verify (presented) { return this.match(presented) >= 0 },
    match (presented) { return matchKeyDigest(keys, presented) }
  }
}
