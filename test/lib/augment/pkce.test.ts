import t from 'tap'
import { challengeFor, createOAuthState, createPkcePair, randomBase64url } from '../../../src/lib/augment/pkce.js'

t.test('PKCE: a 32-byte verifier, its S256 challenge, a 16-byte state, never twice the same', async (t) => {
  const seen = new Set<string>()
  for (let i = 0; i < 1000; i++) {
    const value = randomBase64url(32)
    t.equal(Buffer.from(value, 'base64url').length, 32)
    seen.add(value)
  }
  t.equal(seen.size, 1000)
  const { verifier, challenge } = createPkcePair()
  t.equal(challengeFor(verifier), challenge)
  t.match(createOAuthState(), /^[A-Za-z0-9_-]{22}$/)
})
