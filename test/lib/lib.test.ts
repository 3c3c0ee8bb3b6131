import { generateKeyPairSync } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { decodeJwt, decodeProtectedHeader } from 'jose'
import t from 'tap'
import { createApiKeyVerifier } from '../../src/lib/api-keys.js'
import { PrivateKeyError, createSigner, importRsaPrivateKey, readPrivateKeyPem } from '../../src/lib/coze-jwt.js'
import { ServiceError, outcomeOf } from '../../src/lib/errors.js'
import { loadConfig, trustProxySetting } from '../../src/schemas/config.js'
import { messageFor, pickLocale } from '../../src/lib/messages.js'
import { createTokenCache, reuseMillis } from '../../src/lib/token-cache.js'
import { isTimeout, parseJsonSafely, readBodyLimited, transportError } from '../../src/lib/upstream.js'
import { createCozeClient } from '../../src/plugins/coze.js'
import { createReadiness } from '../../src/plugins/readiness.js'
import { challengeFor, createOAuthState, createPkcePair, randomBase64url } from '../../src/lib/pkce.js'
import { tempDir, testKeys } from '../helper.js'

t.test('api keys: constant-time match against every configured key, nothing open', async (t) => {
  const none = createApiKeyVerifier(undefined)
  t.equal(none.configured, false)
  t.equal(none.verify('anything'), false)
  const keys = createApiKeyVerifier(' first , second ,, ')
  t.equal(keys.configured, true)
  t.equal(keys.verify('first'), true)
  t.equal(keys.verify('second'), true)
  t.equal(keys.verify('firs'), false)
  t.equal(keys.verify(''), false)
  t.equal(keys.verify(undefined), false)
  t.same([keys.match('first'), keys.match('second'), keys.match('third')], [0, 1, -1], 'match says which key, not what it is')
})

t.test('private keys: PKCS#8, PKCS#1, escaped newlines; clear refusals that never quote the key', async (t) => {
  const { pkcs8, pkcs1 } = testKeys()
  t.ok(await importRsaPrivateKey(pkcs8))
  t.ok(await importRsaPrivateKey(pkcs1))
  t.ok(await importRsaPrivateKey(`'${pkcs8.trim().replace(/\n/g, '\\r\\n')}'`))
  t.equal(await readPrivateKeyPem({}), undefined)
  t.equal(await readPrivateKeyPem({ pem: '  ', file: ' ' }), undefined)
  t.equal(await readPrivateKeyPem({ pem: pkcs8, file: '/ignored' }), pkcs8, 'the variable wins over the file')

  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  await t.rejects(importRsaPrivateKey(ec), new PrivateKeyError('JWT_PRIVATE_KEY is a ec key; Coze needs an RSA key for RS256'))
  const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  await t.rejects(importRsaPrivateKey(small), /1024-bit RSA key; RS256 needs at least 2048 bits/)
  const garbled = pkcs8.replace(/[A-Za-z]{20}/, 'x')
  const err = await importRsaPrivateKey(garbled).then(() => new Error('imported'), (error: unknown) => error as Error)
  t.match(err, { name: 'PrivateKeyError', message: /not a readable PEM private key/ })
  t.notOk(err.message.includes(pkcs8.split('\n')[2] ?? '-'), 'the message does not quote the key')
})

t.test('a key that is not a usable private key says what it is and what to do', async (t) => {
  const { pkcs8 } = testKeys()
  const refusal = async (value: string) => await importRsaPrivateKey(value).then(() => 'imported', (error: unknown) => (error as Error).message)

  // A multi-line key pasted into .env without quotes: the .env reader keeps its first line only.
  const dir = await tempDir(t, 'aibill-env-key-')
  await writeFile(join(dir, '.env'), `JWT_PRIVATE_KEY=${pkcs8}`)
  const { config } = loadConfig({ env: {}, dotenvPath: join(dir, '.env') })
  t.equal(config.JWT_PRIVATE_KEY, '-----BEGIN PRIVATE KEY-----')
  t.match(await refusal(config.JWT_PRIVATE_KEY as string), /only the first line of a PEM.*double quotes.*\\n.*JWT_PRIVATE_KEY_FILE/)

  const pair = generateKeyPairSync('rsa', { modulusLength: 2048 })
  t.match(await refusal(pair.publicKey.export({ type: 'spki', format: 'pem' }).toString()), /is a public key.*give the private key/)
  t.match(await refusal(pair.publicKey.export({ type: 'pkcs1', format: 'pem' }).toString()), /is a public key/)
  const encrypted = pair.privateKey.export({ type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase: 'secret-passphrase' }).toString()
  t.match(await refusal(encrypted), /encrypted.*openssl pkey -in key\.pem -out key-plain\.pem/)
  const der = pair.privateKey.export({ type: 'pkcs8', format: 'der' }).toString('base64')
  t.match(await refusal(der), /base64 DER.*BEGIN PRIVATE KEY.*openssl pkey -inform DER/)
  t.match(await refusal('hello'), /not a readable PEM private key/)
})

t.test('signer: RS256, kid in the header, fresh jti, optional session_name', async (t) => {
  const signer = createSigner(await importRsaPrivateKey(testKeys().pkcs8), () => 1_700_000_000_500)
  const jwt = await signer.signCozeJwt({ kid: 'kid-1', iss: 'app', aud: 'api.coze.com', ttlSeconds: 60, sessionName: 'u1' })
  t.same(decodeProtectedHeader(jwt), { alg: 'RS256', typ: 'JWT', kid: 'kid-1' })
  t.match(decodeJwt(jwt), { iss: 'app', aud: 'api.coze.com', iat: 1_700_000_000, exp: 1_700_000_060, session_name: 'u1' })
  const other = await signer.signCozeJwt({ kid: 'kid-1', iss: 'app', aud: 'api.coze.com', ttlSeconds: 60 })
  t.not(decodeJwt(other).jti, decodeJwt(jwt).jti)
})

t.test('token cache: a tenth of the duration at most, single flight, failures dropped', async (t) => {
  t.equal(reuseMillis(60, 86399), 60_000)
  t.equal(reuseMillis(60, 100), 10_000)
  t.equal(reuseMillis(60, 5), 500)
  const cache = createTokenCache({ reuseSeconds: 60, maxEntries: 2 })
  let n = 0
  const exchange = async () => { await sleep(10); return { token: { access_token: `t${++n}`, expires_in: 1, token_type: 'Bearer' }, logid: `log-${n}` } }
  const request = { kid: 'k', issuerId: 'app:i', durationSeconds: 600 }
  const [a, b] = await Promise.all([cache.get(request, exchange), cache.get(request, exchange)])
  t.same([a.outcome, b.outcome, a.token.access_token, b.token.access_token, a.logid, b.logid], ['miss', 'shared', 't1', 't1', 'log-1', 'log-1'])
  t.same(await cache.get(request, exchange), { token: a.token, outcome: 'hit' }, 'a hit made no exchange: no logid')
  await cache.get({ ...request, kid: 'k2' }, exchange)
  await cache.get({ ...request, kid: 'k3' }, exchange)
  t.equal(cache.size, 2, 'bounded')
  await t.rejects(cache.get({ ...request, kid: 'bad' }, async () => { throw new Error('refused') }), /refused/)
  t.equal((await cache.get({ ...request, kid: 'bad' }, exchange)).outcome, 'miss')
  t.equal((await cache.get({ ...request, durationSeconds: 0.001 * 5 }, exchange)).outcome, 'off', 'a window under a millisecond is no cache')
  t.equal((await createTokenCache({ reuseSeconds: 0 }).get(request, exchange)).outcome, 'off')

  // More exchanges in flight than the cache holds: none is evicted, each caller gets its own token.
  const small = createTokenCache({ reuseSeconds: 60, maxEntries: 2, maxPending: 10 })
  const own = async (kid: string) => { await sleep(20); return { token: { access_token: `token-${kid}`, expires_in: 1, token_type: 'Bearer' } } }
  const answers = await Promise.all(['a', 'b', 'c', 'd', 'e'].map(async (kid) => await small.get({ ...request, kid }, async () => await own(kid))))
  t.same(answers.map((answer) => answer.token.access_token), ['token-a', 'token-b', 'token-c', 'token-d', 'token-e'])
  t.equal(small.pending, 0)
  t.equal(small.size, 2)
})

t.test('upstream helpers: bounded reads and timeout classification', async (t) => {
  async function * chunks (...parts: string[]) { for (const part of parts) yield Buffer.from(part) }
  t.equal((await readBodyLimited(chunks('ab', 'cd'), 4)).toString(), 'abcd')
  await t.rejects(readBodyLimited(chunks('ab', 'cde'), 4), { name: 'ResponseTooLargeError', limit: 4 })
  t.equal(isTimeout(null), false)
  t.equal(isTimeout('TimeoutError'), false)
  t.equal(isTimeout({ code: 'UND_ERR_HEADERS_TIMEOUT' }), true)
  t.equal(isTimeout(new Error('wrapped', { cause: Object.assign(new Error('x'), { name: 'TimeoutError' }) })), true)
  t.equal(isTimeout(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })), false)
  t.match(transportError({ code: 'ETIMEDOUT' }), { code: 'UPSTREAM_TIMEOUT', statusCode: 504 })
  t.match(transportError(new Error('refused'), { host: 'h' }), { code: 'UPSTREAM_UNREACHABLE', statusCode: 502, details: { host: 'h' } })
  t.equal(parseJsonSafely('{"a":1'), undefined)
  t.same(parseJsonSafely('{"a":1}'), { a: 1 })
})

t.test('messages: one catalog, two languages', async (t) => {
  t.equal(pickLocale(undefined), 'zh-CN')
  t.equal(pickLocale(''), 'zh-CN')
  t.equal(pickLocale('en-GB'), 'en')
  t.equal(pickLocale('zh'), 'zh-CN')
  t.equal(pickLocale('en;q=0.5, zh-CN'), 'zh-CN')
  t.equal(messageFor('zh-CN', 'VALIDATION_FAILED'), '无效的请求数据')
  t.equal(messageFor('en', 'VALIDATION_FAILED', { reason: 'x is required' }), 'Invalid request data: x is required')
  t.equal(messageFor('en', 'COZE_EXCHANGE_FAILED'), 'Coze token exchange failed')
  t.equal(new ServiceError('UNAUTHORIZED').statusCode, 401)
  t.notMatch(String(new ServiceError('UNAUTHORIZED').stack), /\n\s+at /, 'expected outcomes carry no stack trace')
  t.match(String(new Error('defect').stack), /\n\s+at /, 'other errors still do')
  t.equal(outcomeOf(new ServiceError('UPSTREAM_TIMEOUT')), 'upstream_timeout')
  t.equal(outcomeOf(new TypeError('boom')), 'internal')
  t.equal(trustProxySetting('true'), true)
  t.equal(trustProxySetting('false'), false)
  t.equal(trustProxySetting('10.0.0.0/8, 172.16.0.0/12'), '10.0.0.0/8, 172.16.0.0/12')
  const oneHop = trustProxySetting('1') as (address: string, hop: number) => boolean
  t.same([oneHop('10.0.0.1', 0), oneHop('203.0.113.1', 1)], [true, false], 'a hop count trusts that many hops')
})

t.test('coze client without a signer answers NOT_CONFIGURED; readiness checks time out', async (t) => {
  const client = createCozeClient({ url: 'http://127.0.0.1:9/token', timeoutMs: 1000, signer: null, issuer: { appId: 'i' }, audience: 'a', jwtTtlSeconds: 60, reuseSeconds: 0 })
  await t.rejects(client.getAccessToken({ kid: 'k', callerKey: 'c', callerKeyIndex: 0, durationSeconds: 60 }), { code: 'NOT_CONFIGURED' })
  await client.close()

  const readiness = createReadiness(50)
  readiness.add('hangs', async () => await new Promise(() => {}))
  readiness.add('fine', async () => 'ok')
  t.same(await readiness.check(), { ready: false, checks: { hangs: 'down', fine: 'ok' } })
})

t.test('pooled randomness: right length, never handed out twice across refills', async (t) => {
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
