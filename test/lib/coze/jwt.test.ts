import { generateKeyPairSync } from 'node:crypto'
import { chmod, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { decodeJwt, decodeProtectedHeader } from 'jose'
import t from 'tap'
import { createSigner, importRsaPrivateKey, keyLabel, PrivateKeyError, readPrivateKeyPem } from '../../../src/lib/coze/jwt.js'
import { loadConfig } from '../../../src/schemas/config.js'
import { tempDir, testKeys } from '../../helper.js'

t.test('private keys: PKCS#8, PKCS#1, escaped newlines; clear refusals that never quote the key', async (t) => {
  const { pkcs8, pkcs1 } = testKeys()
  t.ok(await importRsaPrivateKey(pkcs8))
  t.ok(await importRsaPrivateKey(pkcs1))
  t.ok(await importRsaPrivateKey(`'${pkcs8.trim().replace(/\n/g, '\\r\\n')}'`))
  t.equal(await readPrivateKeyPem({}), undefined)
  t.equal(await readPrivateKeyPem({ pem: '  ', file: ' ' }), undefined)
  t.equal(await readPrivateKeyPem({ pem: pkcs8, file: '/ignored' }), pkcs8, 'the variable wins over the file')

  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  await t.rejects(importRsaPrivateKey(ec), new PrivateKeyError('JWT_PRIVATE_KEY is an EC key; Coze needs an RSA key for RS256'))
  const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  await t.rejects(importRsaPrivateKey(small), /1024-bit RSA key; RS256 needs at least 2048 bits/)
  const garbled = pkcs8.replace(/[A-Za-z]{20}/, 'x')
  const err = await importRsaPrivateKey(garbled).then(() => new Error('imported'), (error: unknown) => error as Error)
  t.match(err, { name: 'PrivateKeyError', message: /not a readable PEM private key/ })
  t.notOk(err.message.includes(pkcs8.split('\n')[2] ?? '-'), 'the message does not quote the key')
})

t.test('a key file names its variable and its path; one this process may not read says why, with the uid and the mode', { skip: process.geteuid?.() === 0 ? false : 'acting as uid 1000 needs root' }, async (t) => {
  const dir = await tempDir(t, 'aibill-key-file-')
  const publicFile = join(dir, 'public.pem')
  await writeFile(publicFile, generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({ type: 'spki', format: 'pem' }).toString())
  const source = { file: publicFile }
  await t.rejects(importRsaPrivateKey(await readPrivateKeyPem(source) as string, keyLabel(source)), { message: `JWT_PRIVATE_KEY_FILE (${publicFile}) is a public key or a certificate: give the private key of the pair (Coze keeps the public key and shows its fingerprint as the kid)` })
  t.equal(keyLabel({ pem: 'x', file: publicFile }), 'JWT_PRIVATE_KEY', 'the variable wins, and is named')

  // As the image does: a key owned by root with mode 0600, read by uid 1000. Root reads anything, so the read is
  // made with the effective uid set to 1000 for its duration (in this process: a child would need a Node and a
  // checkout that uid can reach, which a checkout in a mode 0700 folder or under /root is not).
  const privateFile = join(dir, 'key.pem')
  await writeFile(privateFile, testKeys().pkcs8, { mode: 0o600 })
  await chmod(dir, 0o755)
  const hidden = join(dir, 'hidden')
  await mkdir(hidden, { mode: 0o700 })
  await writeFile(join(hidden, 'key.pem'), testKeys().pkcs8, { mode: 0o600 })
  const asUid1000 = async (file: string): Promise<string> => {
    process.seteuid?.(1000)
    try {
      return await readPrivateKeyPem({ file }).then(() => 'read', (err: Error) => err.message)
    } finally {
      process.seteuid?.(0)
    }
  }
  t.equal(await asUid1000(privateFile), `JWT_PRIVATE_KEY_FILE (${privateFile}) cannot be read (EACCES): mode 0600, owner uid 0 gid 0, and this process runs as uid 1000. Make it readable by that uid (in the image: uid 1000), e.g. chown 1000 on the file, or chmod 0444 where only the container sees it`)
  t.equal(await asUid1000(join(hidden, 'key.pem')), `JWT_PRIVATE_KEY_FILE (${join(hidden, 'key.pem')}) cannot be read (EACCES)`, 'a folder it may not enter: no mode to tell')
  t.equal(process.geteuid?.(), 0, 'the test runs as root again')
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
