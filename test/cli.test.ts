import { spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose'
import t from 'tap'
import { HELP, runCozeJwt } from '../src/cli/coze-jwt.js'
import { KID, sendJson, startUpstream, tempDir, testKeys, trackChild } from './helper.js'

const { pkcs8, pkcs1, publicKey } = testKeys()

// One empty folder for the runs that need no files of their own: no .env is found there.
const emptyDir = await tempDir(t, 'coze-jwt-')

async function run (argv: string[], env: Record<string, string | undefined> = {}, cwd?: string) {
  let stdout = ''
  let stderr = ''
  const code = await runCozeJwt(argv, { env, cwd: cwd ?? emptyDir, stdout: (text) => { stdout += text }, stderr: (text) => { stderr += text } })
  return { code, stdout, stderr }
}

t.test('prints a signed JWT Coze would accept', async (t) => {
  const { code, stdout, stderr } = await run(['--kid', KID, '--app-id', '1180000000001', '--session-name', 'u1', '--ttl', '120'], { JWT_PRIVATE_KEY: pkcs8 })
  t.equal(code, 0, stderr)
  const jwt = stdout.trim()
  t.same(decodeProtectedHeader(jwt), { alg: 'RS256', typ: 'JWT', kid: KID })
  const { payload } = await jwtVerify(jwt, publicKey, { audience: 'api.coze.cn', issuer: '1180000000001' })
  t.equal(payload.session_name, 'u1')
  t.equal((payload.exp as number) - (payload.iat as number), 120)
})

t.test('reads the key from --key, JWT_PRIVATE_KEY_FILE or .env; settings from the environment', async (t) => {
  const dir = await tempDir(t, 'coze-jwt-')
  await writeFile(join(dir, 'key.pem'), pkcs1)
  const fromFlag = await run(['--kid', KID, '--app-id', 'a', '--key', join(dir, 'key.pem'), '--aud', 'api.coze.com'])
  t.equal(fromFlag.code, 0, fromFlag.stderr)
  t.equal(decodeJwt(fromFlag.stdout.trim()).aud, 'api.coze.com')
  const fromFile = await run(['--kid', KID], { JWT_PRIVATE_KEY_FILE: join(dir, 'key.pem'), COZE_APP_ID: 'env-app', COZE_API_URL: 'https://api.coze.com/api/permission/oauth2/token' })
  t.match(decodeJwt(fromFile.stdout.trim()), { iss: 'env-app', aud: 'api.coze.com' })
  await writeFile(join(dir, '.env'), `JWT_PRIVATE_KEY="${pkcs8.trim().replace(/\n/g, '\\n')}"\nCOZE_APP_ID=dotenv-app\nCOZE_JWT_AUDIENCE=custom.aud\n`)
  const fromDotenv = await run(['--kid', KID], { COZE_APP_ID: 'real-env-wins' }, dir)
  t.equal(fromDotenv.code, 0, fromDotenv.stderr)
  t.match(decodeJwt(fromDotenv.stdout.trim()), { iss: 'real-env-wins', aud: 'custom.aud' })
})

t.test('--exchange posts the JWT to Coze and prints the answer; failures say why and exit 1', async (t) => {
  let answer = 200
  const coze = await startUpstream(t, async (req, res) => {
    await jwtVerify((req.headers.authorization ?? '').replace('Bearer ', ''), publicKey)
    if (answer === 200) sendJson(res, 200, { access_token: 'czs_cli', expires_in: 1900000000, token_type: 'Bearer' })
    else sendJson(res, 401, { error_code: 'invalid_client', error_message: 'invalid jwt: kid not been registred' })
  })
  const url = `${coze.url}/api/permission/oauth2/token`
  const ok = await run(['--kid', KID, '--app-id', 'a', '--exchange', '--duration', '3600', '--url', url], { JWT_PRIVATE_KEY: pkcs8 })
  t.equal(ok.code, 0, ok.stderr)
  t.same(JSON.parse(ok.stdout), { access_token: 'czs_cli', expires_in: 1900000000, token_type: 'Bearer' })
  t.same(JSON.parse(coze.requests[0]?.body ?? ''), { grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', duration_seconds: 3600 })
  t.equal(decodeJwt((coze.requests[0]?.headers.authorization ?? '').replace('Bearer ', '')).aud, '127.0.0.1')

  answer = 401
  const refused = await run(['--kid', KID, '--app-id', 'a', '--exchange', '--url', url], { JWT_PRIVATE_KEY: pkcs8, COZE_TIMEOUT_MS: '2000' })
  t.equal(refused.code, 1)
  t.match(refused.stderr, /exchange failed: COZE_EXCHANGE_FAILED HTTP 401 invalid_client invalid jwt: kid not been registred\n {2}hint: /)
  t.equal(refused.stdout, '')

  coze.server.closeAllConnections()
  await new Promise((resolve) => coze.server.close(resolve))
  const down = await run(['--kid', KID, '--app-id', 'a', '--exchange', '--url', url], { JWT_PRIVATE_KEY: pkcs8 })
  t.equal(down.code, 1)
  t.match(down.stderr, /exchange failed: UPSTREAM_UNREACHABLE\n/)
})

t.test('usage errors exit 2 with the help; key errors exit 1 and never print the key', async (t) => {
  const help = await run(['--help'])
  t.same([help.code, help.stdout], [0, HELP])
  const usage: Array<[string[], RegExp]> = [
    [['--bogus'], /Unknown option '--bogus'/],
    [['--app-id', 'a'], /--kid is required/],
    [['--kid', KID], /--app-id \(or COZE_APP_ID\) is required/],
    [['--kid', KID, '--app-id', 'a', '--ttl', '0'], /--ttl must be a whole number from 1 to 86400/],
    [['--kid', KID, '--app-id', 'a', '--duration', '86400'], /--duration must be a whole number from 1 to 86399/],
    [['--kid', KID, '--app-id', 'a', '--url', 'ftp://x'], /--url must be an http\(s\) URL/]
  ]
  for (const [argv, message] of usage) {
    const res = await run(argv, { JWT_PRIVATE_KEY: pkcs8 })
    t.equal(res.code, 2, argv.join(' '))
    t.match(res.stderr, message)
    t.match(res.stderr, /Usage: coze-jwt/)
  }
  const missing = await run(['--kid', KID, '--app-id', 'a'])
  t.same([missing.code, missing.stderr], [1, 'coze-jwt: no private key: pass --key FILE or set JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE\n'])
  const broken = pkcs8.split('\n').filter((_line, index) => index !== 3).join('\n')
  const bad = await run(['--kid', KID, '--app-id', 'a'], { JWT_PRIVATE_KEY: broken })
  t.equal(bad.code, 1)
  t.match(bad.stderr, /JWT_PRIVATE_KEY is not a readable PEM private key/)
  t.notOk(bad.stderr.includes(broken.split('\n')[2] ?? '-'), 'the key is not quoted')
  const unreadable = await run(['--kid', KID, '--app-id', 'a', '--key', '/nonexistent.pem'])
  t.match([unreadable.code, unreadable.stderr], [1, /cannot be read \(ENOENT\)/])
})

t.test('runs as a command', async (t) => {
  const entry = fileURLToPath(new URL('../src/cli/coze-jwt.ts', import.meta.url))
  const child = trackChild(spawn(process.execPath, [...process.execArgv, entry, '--kid', KID, '--app-id', 'cmd'], {
    cwd: emptyDir,
    env: { ...process.env, JWT_PRIVATE_KEY: pkcs8, TS_NODE_PROJECT: fileURLToPath(new URL('../tsconfig.json', import.meta.url)) }
  }))
  let stdout = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  const code = await new Promise((resolve) => child.on('exit', resolve))
  t.equal(code, 0)
  t.equal(decodeJwt(stdout.trim()).iss, 'cmd')

  const failing = trackChild(spawn(process.execPath, [...process.execArgv, entry], { cwd: emptyDir, env: { ...process.env, TS_NODE_PROJECT: fileURLToPath(new URL('../tsconfig.json', import.meta.url)) } }))
  let stderr = ''
  failing.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  t.equal(await new Promise((resolve) => failing.on('exit', resolve)), 2)
  t.match(stderr, /--kid is required/)
})

t.test('--app NAME signs as that app of the document: its id, its API host, its token URL and its first key', async (t) => {
  const coze = await startUpstream(t, (_req, res) => { sendJson(res, 200, { access_token: 'czs_cli_app_0123456789', expires_in: 1900000000 }) })
  const document = {
    apps: { 'bills-ent': { app_id: '1150000000002', api_base: coze.url, account_id: '7300000000', keys: [{ kid: 'fp-ent', private_key_env: 'ENT_KEY' }] } },
    callers: { someone: { key_sha256: 'a'.repeat(64), apps: ['bills-ent'] } }
  }
  const env = { COZE_APPS: JSON.stringify(document), ENT_KEY: pkcs8 }
  const signed = await run(['--app', 'bills-ent'], env)
  t.equal(signed.code, 0, signed.stderr)
  const jwt = signed.stdout.trim()
  t.same(decodeProtectedHeader(jwt), { alg: 'RS256', typ: 'JWT', kid: 'fp-ent' })
  t.match((await jwtVerify(jwt, publicKey, { audience: '127.0.0.1', issuer: '1150000000002' })).payload, { iss: '1150000000002' })
  const exchanged = await run(['--app', 'bills-ent', '--exchange'], env)
  t.equal(exchanged.code, 0, exchanged.stderr)
  t.match(JSON.parse(exchanged.stdout), { access_token: 'czs_cli_app_0123456789' })
  t.equal(coze.requests[0]?.url, '/api/permission/oauth2/account/7300000000/token')
  t.match([(await run(['--app', 'nowhere'], env)).code, (await run(['--app', 'nowhere'], env)).stderr], [2, /no app nowhere in the document/])
  t.match((await run(['--app', 'bills-ent'], {})).stderr, /--app needs COZE_APPS_FILE or COZE_APPS/)
})
