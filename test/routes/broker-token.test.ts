import { createHash, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { decodeProtectedHeader, jwtVerify } from 'jose'
import { Redis } from 'ioredis'
import { Agent } from 'undici'
import t, { type Test } from 'tap'
import { stringify as toYaml } from 'yaml'
import { loadConfig } from '../../src/schemas/config.js'
import { build, type RecordedRequest, REDIS_URL, redisKeyPrefix, registerSecret, sendJson, skipWithoutRedis, startRedisServer, startUpstream, tempDir } from '../helper.js'

// Three key pairs: bills-cn signs with fp-1 (which Coze is told to refuse in the failover test) and fp-2.
function pair (): { pem: string, publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  for (const line of pem.split('\n')) if (!line.startsWith('-----')) registerSecret(line)
  return { pem, publicKey }
}
const KEYS = { 'fp-1': pair(), 'fp-2': pair(), 'fp-com': pair() }
const SHORTCUTS_KEY = 'shortcuts-caller-key-0123456789'
const ADMIN_KEY = 'admin-caller-key-0123456789abc'
const BOTS_KEY = 'bots-caller-key-0123456789abcd'
registerSecret(BOTS_KEY)
registerSecret(SHORTCUTS_KEY)
registerSecret(ADMIN_KEY)
const sha256 = (value: string): string => createHash('sha256').update(value).digest('hex')

interface Exchange {
  request: RecordedRequest
  header: Record<string, unknown>
  claims: Record<string, unknown>
  body: Record<string, unknown>
}

/** A Coze on loopback: verifies each JWT with the public key of its kid, refuses the kids it is told to. */
async function startCoze (t: Test, options: { refuse?: string[], delayMs?: number, expiresIn?: () => number } = {}) {
  const exchanges: Exchange[] = []
  let minted = 0
  const upstream = await startUpstream(t, async (request, res) => {
    const jwt = (request.headers.authorization ?? '').replace(/^Bearer /, '')
    const header = decodeProtectedHeader(jwt) as Record<string, unknown>
    const kid = String(header.kid)
    res.setHeader('x-tt-logid', `logid-${exchanges.length + 1}`)
    if (options.refuse?.includes(kid) === true || !(kid in KEYS)) {
      sendJson(res, 401, { error_code: 'invalid_client', error_message: 'invalid jwt: kid not been registred', error: 'invalid_client' })
      return
    }
    const { payload } = await jwtVerify(jwt, KEYS[kid as keyof typeof KEYS].publicKey, { algorithms: ['RS256'] })
    exchanges.push({ request, header, claims: payload as Record<string, unknown>, body: JSON.parse(request.body) as Record<string, unknown> })
    if (options.delayMs !== undefined) await sleep(options.delayMs)
    minted++
    sendJson(res, 200, { access_token: `czs_broker_${minted}_0123456789`, expires_in: options.expiresIn?.() ?? Math.floor(Date.now() / 1000) + 900, token_type: 'Bearer' })
  })
  return { ...upstream, exchanges }
}

function documentFor (cozeUrl: string) {
  return {
    apps: {
      'bills-cn': { app_id: '1150000000001', api_base: cozeUrl, keys: [{ kid: 'fp-1', private_key_env: 'BILLS_CN_KEY' }, { kid: 'fp-2', private_key_env: 'BILLS_CN_KEY_2' }] },
      'bills-ent': { app_id: '1150000000002', api_base: cozeUrl, account_id: '7300000000', keys: [{ kid: 'fp-2', private_key_env: 'BILLS_CN_KEY_2' }], duration_seconds: { default: 600, max: 3600 } },
      'channel-com': { app_id: '1150000000003', api_base: cozeUrl, jwt_audience: 'api.coze.com', enterprise_id: 'ent-1', keys: [{ kid: 'fp-com', private_key_env: 'CHANNEL_KEY' }] }
    },
    callers: {
      shortcuts: { key_sha256: sha256(SHORTCUTS_KEY), apps: ['bills-cn'], session_name: '^user-[0-9a-f]{8}$' },
      admin: {
        key_env: 'ADMIN_CALLER_KEY',
        apps: ['bills-cn', 'bills-ent', 'channel-com'],
        routes: ['token', 'resend'],
        scope: { permissions: ['Connector.botChat'], bot_ids: ['7400000000000000000'] },
        device: true
      },
      bots: { key_sha256: sha256(BOTS_KEY), apps: ['channel-com'], scope: { permissions: ['Connector.botChat'] } }
    }
  }
}

const ENV = { BILLS_CN_KEY: KEYS['fp-1'].pem, BILLS_CN_KEY_2: KEYS['fp-2'].pem, CHANNEL_KEY: KEYS['fp-com'].pem, ADMIN_CALLER_KEY: ADMIN_KEY }
const SCOPE = { account_permission: { permission_list: ['Connector.botChat'] }, attribute_constraint: { connector_bot_chat_attribute: { bot_id_list: ['7400000000000000000'] } } }

const METRICS_TOKEN = 'broker-metrics-token-0123456789'
registerSecret(METRICS_TOKEN)
const METRICS = { url: '/metrics', headers: { authorization: `Bearer ${METRICS_TOKEN}` } }

async function broker (t: Test, coze: { url: string }, config: Record<string, unknown> = {}, options: { cozeDispatcher?: Agent } = {}) {
  const built = await build(t, { COZE_APPS: JSON.stringify(documentFor(coze.url)), ...ENV, METRICS_TOKEN, ...config }, options)
  const token = async (key: string, body: Record<string, unknown>, header: 'x-api-key' | 'authorization' = 'x-api-key') =>
    await built.app.inject({ method: 'POST', url: '/token', headers: { [header]: header === 'authorization' ? `Bearer ${key}` : key }, payload: body })
  return { ...built, token }
}

t.test('a caller mints for its app: the JWT and the exchange as Coze documents them; the answer names the app', async (t) => {
  const coze = await startCoze(t)
  const { token, logs } = await broker(t, coze)
  const before = Math.floor(Date.now() / 1000)
  const res = await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-1a2b3c4d' })
  t.equal(res.statusCode, 200, res.body)
  t.same(res.json(), { success: true, data: { access_token: 'czs_broker_1_0123456789', expires_in: res.json().data.expires_in, token_type: 'Bearer', app: 'bills-cn' }, message: '令牌获取成功' })
  t.equal(res.headers['cache-control'], 'no-store, max-age=0, private')
  const [exchange] = coze.exchanges
  t.equal(exchange?.request.url, '/api/permission/oauth2/token')
  t.same(exchange?.header, { alg: 'RS256', typ: 'JWT', kid: 'fp-1' })
  t.match(exchange?.claims, { iss: '1150000000001', aud: '127.0.0.1', session_name: 'user-1a2b3c4d' })
  t.ok((exchange?.claims.iat as number) >= before)
  t.equal(Buffer.from(String(exchange?.claims.jti), 'base64url').length, 32)
  t.same(exchange?.body, { grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', duration_seconds: 900 }, 'the app\'s default duration, no scope')

  t.match(logs.records().find((record) => record.msg === 'upstream configured' && record.app === 'bills-cn'), { upstream: 'coze', app_id: '1150000000001', token_url: `${coze.url}/api/permission/oauth2/token`, kids: ['fp-1', 'fp-2'], audience: '127.0.0.1' })
  const line = logs.records().find((record) => record.route === '/token' && record.msg === 'request completed')
  t.match(line, { caller: 'shortcuts', app: 'bills-cn', kid: 'fp-1', cache: 'miss', coze_logid: 'logid-1', session_ref: /^[A-Za-z0-9_-]{10}$/ })
  t.notOk(logs.text.includes('user-1a2b3c4d'), 'no session name in the logs')
  t.notOk(logs.text.includes('czs_broker_1'), 'no token in the logs')

  const reused = await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-1a2b3c4d' }, 'authorization')
  t.equal(reused.json().data.access_token, 'czs_broker_1_0123456789', 'Authorization: Bearer works too, and the token is reused')
  t.equal(coze.exchanges.length, 1)
  t.ok(logs.records().some((record) => record.route === '/token' && record.cache === 'hit' && record.kid === 'fp-1'), 'a reuse logs the kid that made the token')
})

t.test('token URL variants, scope, device and custom consumer, duration bounds', async (t) => {
  const coze = await startCoze(t)
  // One dispatcher for every Coze origin, as the bench passes one.
  const agent = new Agent()
  t.teardown(async () => { await agent.close() })
  const { token } = await broker(t, coze, {}, { cozeDispatcher: agent })
  t.equal((await token(ADMIN_KEY, { app: 'bills-ent', scope: SCOPE })).statusCode, 200)
  t.equal(coze.exchanges[0]?.request.url, '/api/permission/oauth2/account/7300000000/token')
  t.same(coze.exchanges[0]?.body, { grant_type: 'urn:ietf:params:oauth:grant-type:jwt-bearer', duration_seconds: 600, scope: SCOPE })
  t.equal((await token(ADMIN_KEY, { app: 'channel-com', scope: SCOPE, device_id: 'device-42' })).statusCode, 200)
  t.equal(coze.exchanges[1]?.request.url, '/api/permission/oauth2/enterprise_id/ent-1/token')
  t.same(coze.exchanges[1]?.claims.session_context, { device_info: { device_id: 'device-42' } })
  t.equal(coze.exchanges[1]?.claims.aud, 'api.coze.com', 'jwt_audience: an app reached through a proxy signs for Coze\'s host')
  t.equal(coze.exchanges[0]?.claims.aud, '127.0.0.1', 'without it, the host of api_base')
  t.equal((await token(ADMIN_KEY, { app: 'channel-com', scope: SCOPE, custom_consumer: 'consumer-7' })).statusCode, 200)
  t.same(coze.exchanges[2]?.claims.session_context, { device_info: { custom_consumer: 'consumer-7' } })

  // A ceiling of permissions only: any bots, within the permissions.
  t.equal((await token(BOTS_KEY, { app: 'channel-com', scope: { account_permission: { permission_list: ['Connector.botChat'] } } })).statusCode, 200)
  t.same(coze.exchanges[3]?.body.scope, { account_permission: { permission_list: ['Connector.botChat'] } })
  const both = await token(ADMIN_KEY, { app: 'channel-com', scope: SCOPE, device_id: 'd', custom_consumer: 'c' })
  t.equal(both.statusCode, 400)
  t.match(both.json().data, { error: 'VALIDATION_FAILED', field: 'device_id' })
  const tooLong = await token(ADMIN_KEY, { app: 'bills-ent', scope: SCOPE, duration_seconds: 3601 })
  t.match([tooLong.statusCode, tooLong.json().data], [400, { error: 'VALIDATION_FAILED', field: 'duration_seconds' }])
  t.equal((await token(ADMIN_KEY, { app: 'bills-cn', scope: SCOPE, extra: 1 })).statusCode, 400, 'unknown fields are 400')
  t.equal(coze.exchanges.length, 4, 'nothing refused was sent')
})

t.test('401 without a known key; 403 with the reason for what the caller may not ask; app names do not leak', async (t) => {
  const coze = await startCoze(t)
  const { token, app } = await broker(t, coze)
  t.equal((await token('not-a-caller', { app: 'bills-cn' })).statusCode, 401)
  t.equal((await app.inject({ method: 'POST', url: '/token', payload: { app: 'bills-cn' } })).statusCode, 401)
  const refusals: Array<[string, Record<string, unknown>, string, string?]> = [
    [SHORTCUTS_KEY, { app: 'bills-ent', session_name: 'user-1a2b3c4d' }, 'app'],
    [SHORTCUTS_KEY, { app: 'no-such-app', session_name: 'user-1a2b3c4d' }, 'app'],
    [SHORTCUTS_KEY, { app: 'bills-cn' }, 'session_name'],
    [SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-1a2b3c4dX' }, 'session_name'],
    [SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'admin' }, 'session_name'],
    [SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-1a2b3c4d', scope: SCOPE }, 'scope'],
    [SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-1a2b3c4d', device_id: 'd' }, 'device'],
    [ADMIN_KEY, { app: 'bills-cn' }, 'scope', 'this caller must send a scope within its ceiling'],
    [ADMIN_KEY, { app: 'bills-cn', scope: { account_permission: { permission_list: ['Bot.publish'] } } }, 'scope'],
    [ADMIN_KEY, { app: 'bills-cn', scope: { account_permission: { permission_list: ['Connector.botChat'] } } }, 'scope', 'this caller may ask only for the bots it names: send scope.attribute_constraint.connector_bot_chat_attribute.bot_id_list'],
    [ADMIN_KEY, { app: 'bills-cn', scope: { ...SCOPE, attribute_constraint: { connector_bot_chat_attribute: { bot_id_list: ['7499999999999999999'] } } } }, 'scope']
  ]
  for (const [key, body, reason, detail] of refusals) {
    const res = await token(key, body, 'x-api-key')
    t.equal(res.statusCode, 403, JSON.stringify(body))
    t.same(res.json(), { success: false, data: { error: 'FORBIDDEN', reason, ...(detail === undefined ? {} : { detail }) }, message: '禁止访问' })
  }
  t.same((await app.inject({ method: 'POST', url: '/token', headers: { 'x-api-key': ADMIN_KEY, 'accept-language': 'en' }, payload: { app: 'x' } })).json().message, 'Forbidden')
  t.equal(coze.exchanges.length, 0)

  // The caller's routes: shortcuts may only mint; admin may relay but not sign in.
  const relay = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': SHORTCUTS_KEY }, payload: { location: 'https://open.feishu.cn/x' } })
  t.same([relay.statusCode, relay.json().data], [403, { error: 'FORBIDDEN', reason: 'route' }])
  t.same((await app.inject({ url: '/api/auth-url', headers: { 'x-api-key': ADMIN_KEY } })).json().data, { error: 'FORBIDDEN', reason: 'route' })
  t.equal((await app.inject('/api/auth-url')).statusCode, 401, 'the sign-in takes a caller key in broker mode')
})

t.test('a session_name pattern that would backtrack runs in linear time: a hostile name is a quick 403', async (t) => {
  const coze = await startCoze(t)
  const document = documentFor(coze.url)
  document.callers.shortcuts.session_name = '([a-z0-9]+-?)+'
  const { app } = await build(t, { COZE_APPS: JSON.stringify(document), ...ENV })
  const ask = async (sessionName: string) => await app.inject({ method: 'POST', url: '/token', headers: { 'x-api-key': SHORTCUTS_KEY }, payload: { app: 'bills-cn', session_name: sessionName } })
  // With a backtracking engine, 28 characters took 3.4 s and each one more doubled it: 128 would never end.
  const started = performance.now()
  const hostile = await ask(`${'a'.repeat(127)}!`)
  const took = performance.now() - started
  t.same([hostile.statusCode, hostile.json().data], [403, { error: 'FORBIDDEN', reason: 'session_name' }])
  t.ok(took < 1000, `answered in ${took.toFixed(1)} ms`)
  t.equal((await ask('user-1-2-abc')).statusCode, 200, 'a name the pattern takes still gets its token')
})

t.test('key failover: a kid Coze does not know is followed, once, by the app\'s next key; a warning and a metric say so', async (t) => {
  const coze = await startCoze(t, { refuse: ['fp-1'] })
  const { token, logs, app } = await broker(t, coze)
  const res = await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-00000001' })
  t.equal(res.statusCode, 200, res.body)
  t.same(coze.exchanges.map((exchange) => exchange.header.kid), ['fp-2'])
  t.ok(logs.records().some((line) => line.level === 40 && line.app === 'bills-cn' && line.kid === 'fp-1' && line.next_kid === 'fp-2'))
  t.ok(logs.records().some((line) => line.route === '/token' && line.kid === 'fp-2'))
  t.match((await app.inject(METRICS)).body, /coze_key_failovers_total\{app="bills-cn"\} 1/)
  await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-00000002' })
  t.match((await app.inject(METRICS)).body, /coze_key_failovers_total\{app="bills-cn"\} 1/, 'the key that worked signs from now on')
  t.match((await app.inject(METRICS)).body, /coze_broker_tokens_total\{app="bills-cn",caller="shortcuts",outcome="miss"\} 2/)

  const refusing = await startCoze(t, { refuse: ['fp-1', 'fp-2'] })
  const stuck = await broker(t, refusing)
  const failed = await stuck.token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-00000001' })
  t.equal(failed.statusCode, 502)
  t.match(failed.json().data, { error: 'COZE_EXCHANGE_FAILED', error_code: 'invalid_client' })
  t.equal(refusing.requests.length, 2, 'the next key once, no more')
  const single = await stuck.token(ADMIN_KEY, { app: 'bills-ent', scope: SCOPE })
  t.match([single.statusCode, single.json().data], [502, { error: 'COZE_EXCHANGE_FAILED' }], 'an app with one key has no next key')
  t.equal(refusing.requests.length, 3)
})

t.test('reuse: same app, session, device, scope and duration only, and only while valid for min_validity_seconds', async (t) => {
  let expiresIn = Math.floor(Date.now() / 1000) + 900
  const coze = await startCoze(t, { expiresIn: () => expiresIn })
  const { token, app } = await broker(t, coze)
  const ask = async (body: Record<string, unknown>) => (await token(ADMIN_KEY, { app: 'bills-cn', scope: SCOPE, ...body })).json().data.access_token as string
  const first = await ask({ session_name: 'a' })
  t.equal(await ask({ session_name: 'a' }), first, 'identical: reused')
  t.not(await ask({ session_name: 'b' }), first, 'another session')
  t.not(await ask({ session_name: 'a', duration_seconds: 600 }), first, 'another duration')
  t.not(await ask({ session_name: 'a', device_id: 'd1' }), first, 'another device')
  t.equal(await ask({ session_name: 'a', min_validity_seconds: 800 }), first, 'valid for 800 s more: reused')
  const tooMuch = await token(ADMIN_KEY, { app: 'bills-cn', scope: SCOPE, session_name: 'a', min_validity_seconds: 841 })
  t.same([tooMuch.statusCode, tooMuch.json().data], [400, { error: 'VALIDATION_FAILED', field: 'min_validity_seconds', reason: 'min_validity_seconds is at most 840 for a duration of 900 s (the duration less a minute)' }], 'nearly the whole duration would force an exchange per request')
  const exchanges = coze.exchanges.length
  expiresIn = Math.floor(Date.now() / 1000) + 30
  const short = await ask({ session_name: 'short' })
  const again = await ask({ session_name: 'short' })
  t.not(again, short, 'a token with 30 s left is not handed out under the default 60')
  t.equal(await ask({ session_name: 'short', min_validity_seconds: 10 }), again, 'asking for 10 s, the 30 s left are enough')
  expiresIn = Math.floor(Date.now() / 1000) + 100
  t.ok(await ask({ session_name: 'brief', duration_seconds: 100 }), 'a 100 s token: the default min validity is 50 s, not a refusal')
  t.equal(coze.exchanges.length, exchanges + 3)
  t.match((await app.inject(METRICS)).body, /coze_broker_forced_exchanges_total\{app="bills-cn",caller="admin"\} 1\n/, 'the exchange the 60 s default forced is counted for its caller')
})

t.test('the document: YAML or JSON, validated at start, naming the source and the field; one way to configure', async (t) => {
  const dir = await tempDir(t, 'aibill-apps-')
  const coze = { url: 'https://api.coze.cn' }
  const yamlPath = join(dir, 'apps.yaml')
  await writeFile(yamlPath, toYaml(documentFor(coze.url)))
  const loaded = loadConfig({ overrides: { COZE_APPS_FILE: yamlPath, ...ENV }, env: false })
  t.same(loaded.broker?.apps.map((app) => app.name).sort(), ['bills-cn', 'bills-ent', 'channel-com'])
  t.same(loaded.broker?.callers.find((caller) => caller.name === 'shortcuts')?.routes, ['token'], 'routes default to token')

  const load = (overrides: Record<string, unknown>) => () => loadConfig({ overrides: { ...ENV, ...overrides }, env: false })
  const broken = (change: (doc: ReturnType<typeof documentFor>) => unknown) => {
    const doc = documentFor(coze.url)
    change(doc)
    return load({ COZE_APPS: JSON.stringify(doc) })
  }
  t.throws(load({ COZE_APPS: '{"apps": ' }), { name: 'ConfigError', message: 'COZE_APPS is not valid JSON: Unexpected end of JSON input' })
  const badYaml = join(dir, 'bad.yaml')
  await writeFile(badYaml, 'apps:\n  bills-cn: [1\n  other: 2\n')
  t.throws(load({ COZE_APPS_FILE: badYaml }), { message: /^COZE_APPS_FILE \(.*bad\.yaml\) is not valid YAML: [A-Z_]+ at line \d+, column \d+$/ })
  t.throws(load({ COZE_APPS_FILE: join(dir, 'missing.json') }), { message: /^COZE_APPS_FILE \(.*missing\.json\) cannot be read \(ENOENT\)$/ })
  t.throws(broken((doc) => { (doc.apps['bills-cn'] as Record<string, unknown>).api_base = 'https://api.coze.cn/v1' }), { message: /^COZE_APPS: apps\.bills-cn\.api_base / })
  t.throws(broken((doc) => { (doc.apps as Record<string, unknown>).Bad_Name = doc.apps['bills-cn'] }), { message: 'COZE_APPS: apps: Bad_Name is not a valid name (lower-case letters, digits and -, at most 64, starting with a letter or a digit)' })
  t.throws(broken((doc) => { doc.apps['bills-cn'].keys = [{ kid: 'fp-1', private_key_fil: 'x' } as never] }), { message: 'COZE_APPS: apps.bills-cn.keys.0: private_key_fil is not a field (kid, and private_key_env or private_key_file)' })
  t.throws(broken((doc) => { doc.apps['bills-cn'].keys = ['BILLS_CN_KEY' as never] }), { message: 'COZE_APPS: apps.bills-cn.keys.0 needs kid and exactly one of private_key_env and private_key_file' }, 'a key that is not an object')
  t.throws(broken((doc) => { (doc as Record<string, unknown>).version = 2 }), { message: 'COZE_APPS: (the document): version is not a field (apps, callers, feishu_apps)' })
  t.throws(broken((doc) => { doc.apps['bills-cn'].keys = [{ kid: 'fp-1' } as never] }), { message: 'COZE_APPS: apps.bills-cn.keys.0 needs kid and exactly one of private_key_env and private_key_file' })
  t.throws(broken((doc) => { (doc.apps['bills-cn'] as Record<string, unknown>).appid = '1' }), { message: /^COZE_APPS: apps\.bills-cn: appid is not a field \(app_id, api_base, keys, / })
  t.throws(broken((doc) => { doc.callers.shortcuts.apps = ['Bills'] }), { message: /^COZE_APPS: callers\.shortcuts\.apps\.0 is not a valid app name/ })
  t.throws(broken((doc) => { doc.callers.bots.key_sha256 = doc.callers.shortcuts.key_sha256 }), { message: 'COZE_APPS: callers.shortcuts and callers.bots have the same key: give each caller its own' })
  t.throws(load({ COZE_APPS: JSON.stringify({ ...documentFor(coze.url), callers: { ...documentFor(coze.url).callers, twin: { key_env: 'TWIN_KEY', apps: ['bills-cn'] } } }), TWIN_KEY: ADMIN_KEY }), { message: 'COZE_APPS: callers.admin and callers.twin have the same key: give each caller its own' }, 'key_env values that are equal')
  t.throws(broken((doc) => { doc.apps['bills-cn'].keys.push({ kid: 'a', private_key_env: 'A' }, { kid: 'b', private_key_env: 'B' }) }), { message: /^COZE_APPS: apps\.bills-cn\.keys / })
  t.throws(broken((doc) => { doc.callers.shortcuts.apps.push('nowhere') }), { message: 'COZE_APPS: callers.shortcuts.apps names nowhere, which is not in apps' })
  t.throws(broken((doc) => { (doc.callers.shortcuts as Record<string, unknown>).key_env = 'X' }), { message: 'COZE_APPS: callers.shortcuts needs exactly one of key_sha256 and key_env' })
  t.throws(broken((doc) => { doc.callers.shortcuts.session_name = '(' }), { message: /^COZE_APPS: callers\.shortcuts\.session_name is not a pattern RE2 takes \(linear-time matching\): missing closing \)/ })
  // Constructs that need backtracking are refused at start, naming the caller and the construct.
  t.throws(broken((doc) => { doc.callers.shortcuts.session_name = '(a)\\1' }), { message: /callers\.shortcuts\.session_name .*invalid escape sequence: `\\1`/ })
  t.throws(broken((doc) => { doc.callers.shortcuts.session_name = 'user-(?=x)' }), { message: /callers\.shortcuts\.session_name .*unsupported Perl syntax: `\(\?=`/ })
  t.throws(broken((doc) => { (doc.apps['bills-ent'] as Record<string, unknown>).enterprise_id = 'e' }), { message: 'COZE_APPS: apps.bills-ent has both account_id and enterprise_id: use one' })
  t.throws(load({ COZE_APPS: JSON.stringify(documentFor(coze.url)), BILLS_CN_KEY: '' }), { message: 'COZE_APPS: apps.bills-cn.keys.0.private_key_env names BILLS_CN_KEY, which is not set' })
  t.throws(load({ COZE_APPS: JSON.stringify(documentFor(coze.url)), EXPECTED_COZE_API_KEY: 'k', COZE_APP_ID: '1' }), { message: 'COZE_APPS configures the apps and callers: remove COZE_APP_ID, EXPECTED_COZE_API_KEY (one way to configure)' })
  t.throws(load({ COZE_APPS: '{}', COZE_APPS_FILE: yamlPath }), { message: 'COZE_APPS_FILE and COZE_APPS are both set: use one' })
  t.throws(load({ TOKEN_CACHE: 'redis' }), { message: /TOKEN_CACHE=redis needs TOKEN_CACHE_SECRET/ })

  // Keys from files; a file that is not there stops the start naming the app, the key and the file.
  const keyFile = join(dir, 'bills-cn.pem')
  await writeFile(keyFile, KEYS['fp-1'].pem, { mode: 0o600 })
  const fromFiles = documentFor(coze.url)
  fromFiles.apps['bills-cn'].keys = [{ kid: 'fp-1', private_key_file: keyFile } as never]
  fromFiles.apps['bills-ent'].duration_seconds = { max: 600 } as never
  const started = await build(t, { COZE_APPS: JSON.stringify(fromFiles), ...ENV })
  t.ok(started.app.broker)
  fromFiles.apps['bills-cn'].keys = [{ kid: 'fp-1', private_key_file: join(dir, 'gone.pem') } as never]
  const missingFile = await build(t, { COZE_APPS: JSON.stringify(fromFiles), ...ENV }).then(() => 'started', (err: Error) => err.message)
  t.match(missingFile, /^apps\.bills-cn\.keys\.0\.private_key_file \(.*gone\.pem\) cannot be read \(ENOENT\)/)
  t.throws(broken((doc) => { doc.apps['bills-ent'].duration_seconds = { default: 3000, max: 600 } }), { message: 'COZE_APPS: apps.bills-ent.duration_seconds.default is above its max' })
  t.throws(load({ COZE_APPS: '[]' }), { message: /^COZE_APPS: \(the document\) / })
  t.throws(load({ COZE_APPS: JSON.stringify(documentFor(coze.url)), COZE_ISS_FROM_CALLER_KEY: true }), { message: /remove COZE_ISS_FROM_CALLER_KEY/ })

  const badKey = await build(t, { COZE_APPS: JSON.stringify(documentFor(coze.url)), ...ENV, CHANNEL_KEY: KEYS['fp-com'].publicKey.export({ type: 'spki', format: 'pem' }).toString() }).then(() => 'started', (err: Error) => err.message)
  t.match(badKey, /^apps\.channel-com\.keys\.0 \(CHANNEL_KEY\) is a public key/)
})

t.test('one cache for every instance: 4 instances, 200 concurrent identical requests, 1 exchange at Coze', { skip: await skipWithoutRedis() }, async (t) => {
  const coze = await startCoze(t, { delayMs: 300 })
  const shared = {
    TOKEN_CACHE: 'redis', TOKEN_CACHE_SECRET: randomBytes(32).toString('base64'), REDIS_URL, REDIS_KEY_PREFIX: redisKeyPrefix(t, 'broker')
  }
  const instances = await Promise.all([1, 2, 3, 4].map(async () => await broker(t, coze, shared)))
  const answers = await Promise.all(Array.from({ length: 200 }, async (_unused, i) =>
    await (instances[i % 4] as Awaited<ReturnType<typeof broker>>).token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-0000beef' })))
  t.same([...new Set(answers.map((res) => res.statusCode))], [200])
  t.same([...new Set(answers.map((res) => res.json().data.access_token))], ['czs_broker_1_0123456789'], 'every caller got the one token')
  t.equal(coze.exchanges.length, 1, 'one exchange at Coze')
  const outcomes = instances.flatMap(({ logs }) => logs.records().filter((line) => line.route === '/token').map((line) => line.cache))
  t.equal(outcomes.filter((outcome) => outcome === 'miss').length, 1)
  t.equal(outcomes.filter((outcome) => outcome === 'shared').length, 199)
  const later = await (instances[3] as Awaited<ReturnType<typeof broker>>).token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-0000beef' })
  t.equal(later.json().data.access_token, 'czs_broker_1_0123456789', 'what one instance minted, another hands out')
  t.ok(instances.every(({ logs }) => !logs.text.includes('czs_broker_1')))
})

t.test('a lock without an expiry in the shared cache is removed, with a warning, and the token made', { skip: await skipWithoutRedis() }, async (t) => {
  const coze = await startCoze(t)
  const prefix = `aibill-broker-lock-${randomBytes(4).toString('hex')}:`
  const raw = new Redis(REDIS_URL)
  t.teardown(async () => {
    const keys = await raw.keys(`${prefix}*`)
    if (keys.length > 0) await raw.del(...keys)
    await raw.quit()
  })
  const { token, logs } = await broker(t, coze, { TOKEN_CACHE: 'redis', TOKEN_CACHE_SECRET: randomBytes(32).toString('base64'), REDIS_URL, REDIS_KEY_PREFIX: prefix })
  t.equal((await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-0000aaaa' })).statusCode, 200)
  const [written] = await raw.keys(`${prefix}token:*`)
  await raw.del(written as string)
  await raw.set((written as string).replace(`${prefix}token:`, `${prefix}token-lock:`), 'written-by-hand')
  const again = await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-0000aaaa' })
  t.equal(again.statusCode, 200)
  t.equal(coze.exchanges.length, 2)
  t.ok(logs.records().some((line) => line.level === 40 && /a lock without an expiry was found and removed/.test(String(line.msg))))
})

t.test('Redis away: each instance caches on its own and says so on /ready, then shares again', async (t) => {
  const redis = await startRedisServer(t)
  const coze = await startCoze(t)
  const { token, app, logs } = await broker(t, coze, { TOKEN_CACHE: 'redis', TOKEN_CACHE_SECRET: randomBytes(32).toString('base64'), REDIS_URL: redis.url })
  t.equal((await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-00000001' })).statusCode, 200)
  t.same((await app.inject('/ready')).json().data.checks.token_cache, 'ok')
  t.match((await app.inject(METRICS)).body, /redis_up 1/)
  await redis.stop()
  for (let i = 0; i < 50 && app.redis.status === 'ready'; i++) await sleep(20)
  const during = await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-00000002' })
  t.equal(during.statusCode, 200, 'tokens are still minted')
  t.equal((await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-00000002' })).json().data.access_token, during.json().data.access_token, 'and reused from memory')
  const ready = await app.inject('/ready')
  t.equal(ready.statusCode, 200, 'still ready')
  t.equal(ready.json().data.checks.token_cache, 'degraded: does not answer')
  t.match((await app.inject(METRICS)).body, /token_cache_degraded 1/)
  t.match((await app.inject(METRICS)).body, /redis_up 0/)
  t.ok(logs.records().some((line) => line.level === 40 && /token cache: Redis does not answer/.test(String(line.msg))))
  await redis.start()
  for (let i = 0; i < 100 && app.redis.status !== 'ready'; i++) await sleep(50)
  t.equal((await token(SHORTCUTS_KEY, { app: 'bills-cn', session_name: 'user-00000003' })).statusCode, 200)
  t.equal((await app.inject('/ready')).json().data.checks.token_cache, 'ok', 'shared again')
})

t.test('/metrics names callers and apps: with an apps document it needs METRICS_TOKEN (or METRICS_PORT)', async (t) => {
  const coze = await startCoze(t)
  const open = await build(t, { COZE_APPS: JSON.stringify(documentFor(coze.url)), ...ENV })
  t.equal((await open.app.inject('/metrics')).statusCode, 404, 'no token: not served on the API port')
  t.ok(open.logs.records().some((line) => /\/metrics is not served on the API port/.test(String(line.msg))))
  const guarded = await broker(t, coze)
  t.equal((await guarded.app.inject('/metrics')).statusCode, 401)
  t.equal((await guarded.app.inject(METRICS)).statusCode, 200)
  for (const empty of [' ', ',', ' , ,']) {
    t.throws(() => loadConfig({ overrides: { METRICS_TOKEN: empty }, env: false }), { message: 'METRICS_TOKEN holds no token: give one or more tokens separated by commas, or leave it unset' })
  }
  t.equal(loadConfig({ overrides: { METRICS_TOKEN: '' }, env: false }).config.METRICS_TOKEN, undefined, 'empty is unset, as every variable')
})

t.test('the example document in deploy/ loads', async (t) => {
  const loaded = loadConfig({
    overrides: { COZE_APPS_FILE: fileURLToPath(new URL('../../deploy/coze-apps.example.yaml', import.meta.url)), BILLS_CN_KEY: 'pem', BILLS_COM_KEY: 'pem', SUPPORT_ORG_KEY: 'pem', WORKFLOWS_CALLER_KEY: 'k1', SUPPORT_CALLER_KEY: 'k2', FEISHU_BILLS_SECRET: 's' },
    env: false
  })
  t.same(loaded.feishuApps.map((app) => [app.name, app.base.origin]), [['bills', 'https://open.feishu.cn']], 'feishu_apps at the top level')
  t.same(loaded.broker?.callers.map((caller) => [caller.name, caller.feishuApps, caller.maxQueuedBytes]), [['shortcuts', [], undefined], ['workflows', ['bills'], 67108864], ['support-bot', [], undefined]])
  t.same(loaded.broker?.apps.map((app) => app.name), ['bills-cn', 'bills-com', 'support-org'])
  t.same(loaded.broker?.callers.map((caller) => [caller.name, caller.routes]), [['shortcuts', ['token']], ['workflows', ['token', 'resend']], ['support-bot', ['token']]])
  t.same(loaded.broker?.callers.map((caller) => caller.console), [false, false, false], 'the console is a line to uncomment: it needs a secret the quick start does not have')
})
