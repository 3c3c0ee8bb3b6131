import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { judge, parseDuration, scheduledWait } from '../../../src/lib/relay/verdict.js'
import { withClientToken } from '../../../src/lib/relay/feishu.js'
import { ServiceError } from '../../../src/lib/http/errors.js'
import { loadConfig } from '../../../src/schemas/config.js'
import { API_KEY, build, registerSecret, sendJson, startUpstream, testKeys } from '../../helper.js'

const SECRET = 'feishu-unit-secret-0123456789'
registerSecret(SECRET)

/** Feishu's token endpoint and an API that refuses every token but the newest, on loopback. */
async function feishu (t: Test, tokenAnswer?: (count: number) => [number, unknown]) {
  let issued = 0
  const upstream = await startUpstream(t, (request, res) => {
    if (request.url === '/open-apis/auth/v3/tenant_access_token/internal') {
      issued++
      if (tokenAnswer !== undefined) {
        const [status, body] = tokenAnswer(issued)
        sendJson(res, status, body)
        return
      }
      registerSecret(`t-unit-${issued}`)
      sendJson(res, 200, { code: 0, msg: 'ok', tenant_access_token: `t-unit-${issued}`, expire: 7200 })
      return
    }
    if (request.headers.authorization !== `Bearer t-unit-${issued}`) { sendJson(res, 400, { code: 99991663, msg: 'token invalid' }); return }
    sendJson(res, 200, { code: 0, data: { ok: true } })
  })
  const apps = JSON.stringify({ bills: { app_id: 'cli_unit', app_secret_env: 'BILLS_SECRET', base: upstream.url } })
  const { app, logs } = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`, FEISHU_APPS: apps, BILLS_SECRET: SECRET })
  const send = async (payload: object) => await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload })
  return { upstream, send, logs, issued: () => issued }
}

t.test('now: the service attaches its token, and replaces a refused one once', async (t) => {
  const { upstream, send, issued, logs } = await feishu(t)
  const location = `${upstream.url}/open-apis/bitable/v1/apps/A/tables/T/records`
  const first = await send({ location, params: {}, auth: { feishu_app: 'bills' } })
  t.equal(first.statusCode, 200)
  t.equal(upstream.requests[1]?.headers.authorization, 'Bearer t-unit-1')
  t.equal(issued(), 1)
  // Another token issued behind the service's back: the one it holds is refused, a new one fetched, once.
  await fetch(`${upstream.url}/open-apis/auth/v3/tenant_access_token/internal`, { method: 'POST', body: '{}' })
  const again = await send({ location, params: {}, auth: { feishu_app: 'bills' } })
  t.equal(again.statusCode, 200)
  t.equal(issued(), 3)
  t.equal(upstream.requests.at(-1)?.headers.authorization, 'Bearer t-unit-3')
  t.notOk(logs.text.includes(SECRET), 'the app secret is never logged')
  const both = await send({ location, params: {}, auth: { feishu_app: 'bills' }, headers: { Authorization: 'Bearer t-mine' } })
  t.equal(both.statusCode, 400)
  t.equal(both.json().data.field, 'auth')
  const unknown = await send({ location, params: {}, auth: { feishu_app: 'ledger' } })
  t.equal(unknown.statusCode, 400)
  t.match(unknown.json().data.reason, /ledger is not a configured Feishu app/)
})

t.test('a Feishu app\'s token goes to its base only: another allowed host is 403 feishu_app, and nothing is sent', async (t) => {
  const base = await startUpstream(t, (request, res) => {
    registerSecret('t-only-for-the-base')
    if (request.url === '/open-apis/auth/v3/tenant_access_token/internal') sendJson(res, 200, { code: 0, msg: 'ok', tenant_access_token: 't-only-for-the-base', expire: 7200 })
    else sendJson(res, 200, { code: 0 })
  })
  const other = await startUpstream(t, (_request, res) => { sendJson(res, 200, { collected: true }) })
  const apps = JSON.stringify({ bills: { app_id: 'cli_unit', app_secret_env: 'BILLS_SECRET', base: base.url } })
  const { app } = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `${base.url},${other.url}`, FEISHU_APPS: apps, BILLS_SECRET: SECRET })
  const refused = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${other.url}/collect`, params: {}, auth: { feishu_app: 'bills' } } })
  t.equal(refused.statusCode, 403)
  t.same(refused.json().data, { error: 'FORBIDDEN', reason: 'feishu_app', base: base.url, detail: `the token of the Feishu app bills goes only to its base, ${base.url}` })
  t.equal(other.requests.length, 0, 'the other host received nothing')
  t.equal(base.requests.length, 0, 'no token was even fetched')
  const allowed = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${base.url}/open-apis/im/v1/messages`, params: {}, auth: { feishu_app: 'bills' } } })
  t.equal(allowed.statusCode, 200)
  t.equal(base.requests.at(-1)?.headers.authorization, 'Bearer t-only-for-the-base')
})

t.test('a token Feishu will not give is 502 FEISHU_TOKEN_FAILED with its code; a lost one is unreachable', async (t) => {
  const { upstream, send } = await feishu(t, (count) => (count === 1 ? [200, { code: 10014, msg: 'app secret invalid' }] : [200, { code: 0, tenant_access_token: '', expire: 7200 }]))
  const location = `${upstream.url}/x`
  const refused = await send({ location, params: {}, auth: { feishu_app: 'bills' } })
  t.equal(refused.statusCode, 502)
  t.same(refused.json().data, { error: 'FEISHU_TOKEN_FAILED', app: 'bills', status: 200, feishu_code: 10014, feishu_msg: 'app secret invalid' })
  const empty = await send({ location, params: {}, auth: { feishu_app: 'bills' } })
  t.same(empty.json().data, { error: 'FEISHU_TOKEN_FAILED', app: 'bills', status: 200, feishu_code: 0 })

  const unknownApp = await feishu(t, () => [400, { code: 10003 }])
  t.same((await unknownApp.send({ location: `${unknownApp.upstream.url}/x`, params: {}, auth: { feishu_app: 'bills' } })).json().data, { error: 'FEISHU_TOKEN_FAILED', app: 'bills', status: 400, feishu_code: 10003 }, 'a code without words')

  const plain = await feishu(t, () => [500, 'down'])
  t.same((await plain.send({ location: `${plain.upstream.url}/x`, params: {}, auth: { feishu_app: 'bills' } })).json().data, { error: 'FEISHU_TOKEN_FAILED', app: 'bills', status: 500 })

  // A token that stops working, and a Feishu that then gives none: the refresh's refusal is the answer.
  const fading = await feishu(t, (count) => (count === 1 ? [200, { code: 0, tenant_access_token: 't-unit-1', expire: 7200 }] : [200, { code: 99991663, msg: 'no' }]))
  t.equal((await fading.send({ location: `${fading.upstream.url}/x`, params: {}, auth: { feishu_app: 'bills' } })).statusCode, 200)
  await fetch(`${fading.upstream.url}/open-apis/auth/v3/tenant_access_token/internal`, { method: 'POST', body: '{}' })
  const faded = await fading.send({ location: `${fading.upstream.url}/x`, params: {}, auth: { feishu_app: 'bills' } })
  t.equal(faded.statusCode, 502)
  t.equal(faded.json().data.feishu_code, 99991663)

  const huge = await feishu(t, () => [200, { code: 0, pad: 'x'.repeat(70000) }])
  t.equal((await huge.send({ location: `${huge.upstream.url}/x`, params: {}, auth: { feishu_app: 'bills' } })).json().data.reason, 'the answer is too large')
})

t.test('the Feishu apps document: three sources, one at a time; secrets from a variable or a file', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'feishu-apps-'))
  t.teardown(async () => { await rm(dir, { recursive: true, force: true }) })
  const secretFile = join(dir, 'secret')
  await writeFile(secretFile, `${SECRET}\n`)
  const yamlFile = join(dir, 'apps.yaml')
  await writeFile(yamlFile, `bills:\n  app_id: cli_yaml\n  app_secret_file: ${secretFile}\n  base: https://open.larksuite.com\n`)
  const load = (overrides: Record<string, unknown>) => loadConfig({ overrides: { EXPECTED_COZE_API_KEY: API_KEY, ...overrides }, env: false })
  const [fromFile] = load({ FEISHU_APPS_FILE: yamlFile }).feishuApps
  t.same({ ...fromFile, base: fromFile?.base.href }, { name: 'bills', appId: 'cli_yaml', secret: SECRET, base: 'https://open.larksuite.com/' })
  const [inline] = load({ FEISHU_APPS: JSON.stringify({ ledger: { app_id: 'cli_x', app_secret_env: 'LEDGER' } }), LEDGER: ' s3cret ' }).feishuApps
  t.equal(inline?.base.href, 'https://open.feishu.cn/', 'Feishu by default')
  t.equal(inline?.secret, 's3cret')
  t.same(load({}).feishuApps, [])
  t.throws(() => load({ FEISHU_APPS_FILE: yamlFile, FEISHU_APPS: '{}' }), { message: 'FEISHU_APPS_FILE and FEISHU_APPS are both set: use one' })
  t.throws(() => load({ FEISHU_APPS: '{"Bad Name":{}}' }), { message: /^FEISHU_APPS: / })
  t.throws(() => load({ FEISHU_APPS: '[]' }), { message: /^FEISHU_APPS: \(the document\) / })
  const document = (feishuApps: unknown, callerApps: string[]) => JSON.stringify({
    apps: { bills: { app_id: '1', api_base: 'https://api.coze.cn', keys: [{ kid: 'k', private_key_env: 'APP_KEY' }] } },
    callers: { a: { key_sha256: 'a'.repeat(64), apps: ['bills'], feishu_apps: callerApps } },
    ...(feishuApps === undefined ? {} : { feishu_apps: feishuApps })
  })
  const broker = { EXPECTED_COZE_API_KEY: undefined, APP_KEY: testKeys().pkcs8 }
  t.throws(() => load({ ...broker, COZE_APPS: document(undefined, ['ledger']) }), { message: 'COZE_APPS: callers.a.feishu_apps names ledger, which is not a Feishu app (feishu_apps, FEISHU_APPS_FILE or FEISHU_APPS)' })
  t.throws(() => load({ ...broker, COZE_APPS: document({ ledger: { app_id: 'x', app_secret_env: 'LEDGER' } }, []), FEISHU_APPS: '{}' }), { message: 'COZE_APPS has feishu_apps and FEISHU_APPS is set: use one' })
  t.same(load({ ...broker, COZE_APPS: document({ ledger: { app_id: 'x', app_secret_env: 'LEDGER' } }, ['ledger']), LEDGER: 'l' }).feishuApps.map((app) => app.name), ['ledger'])
  t.throws(() => load({ RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: 'short' }), { message: 'RESEND_QUEUE_SECRET is not 32 random bytes in base64 (openssl rand -base64 32)' })
  t.equal(load({ RESEND_QUEUE: 'redis' }).config.RESEND_QUEUE, 'redis', 'without a secret it starts, and queued delivery says what it lacks')
  t.equal(load({ RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: '' }).config.RESEND_QUEUE, 'redis', 'an empty secret is no secret (as .env.example leaves it)')
  t.throws(() => load({ ...broker, COZE_APPS: document({ ledger: { app_id: 'x', app_secret_env: 'LEDGER' } }, []), FEISHU_APPS_FILE: yamlFile }), { message: 'COZE_APPS has feishu_apps and FEISHU_APPS_FILE is set: use one' })
  t.throws(() => load({ FEISHU_APPS: '{"a":{"app_id":"x"}}' }), { message: 'FEISHU_APPS: a needs exactly one of app_secret_env and app_secret_file' })
  t.throws(() => load({ FEISHU_APPS: '{"a":{"app_id":"x","app_secret_env":"NOPE"}}' }), { message: 'FEISHU_APPS: a.app_secret_env names NOPE, which is not set' })
  t.throws(() => load({ FEISHU_APPS: `{"a":{"app_id":"x","app_secret_file":"${join(dir, 'missing')}"}}` }), { message: /a\.app_secret_file \(.*missing\) cannot be read \(ENOENT\)/ })
  const emptyFile = join(dir, 'empty')
  await writeFile(emptyFile, '\n')
  t.throws(() => load({ FEISHU_APPS: `{"a":{"app_id":"x","app_secret_file":"${emptyFile}"}}` }), { message: /is empty$/ })
  t.notOk(JSON.stringify(t.throws(() => load({ FEISHU_APPS: '{"a":{"app_id":"x","app_secret_env":"NOPE"}}' }))).includes(SECRET))
})

t.test('what an attempt decides, the schedule and the client_token', async (t) => {
  const answer = (status: number, body: unknown) => ({ answer: { status, body, attempts: 1 } })
  t.equal(judge(answer(200, { code: 0 }), true).kind, 'delivered')
  t.equal(judge(answer(200, { code: 1254290 }), true).kind, 'retry', 'Feishu: too many requests')
  t.same(judge(answer(200, { code: 1254001 }), true), { kind: 'failed', last: { status: 200, error: 'feishu_1254001' }, answer: answer(200, { code: 1254001 }).answer })
  t.equal(judge(answer(200, { code: 1254001 }), false).kind, 'delivered', 'a body code means nothing from another API')
  t.equal(judge(answer(503, 'busy'), false).kind, 'retry')
  t.equal(judge(answer(429, {}), false).kind, 'retry')
  t.equal(judge(answer(404, {}), false).kind, 'failed')
  t.equal(judge(answer(302, ''), false).kind, 'failed')
  t.same(judge({ failure: new ServiceError('UPSTREAM_TIMEOUT'), connectionFailed: false }, false), { kind: 'retry', last: { error: 'UPSTREAM_TIMEOUT' } })
  t.equal(scheduledWait([1000, 5000], 1, 0), 800)
  t.equal(scheduledWait([1000, 5000], 2, 1), 6000)
  t.equal(scheduledWait([1000, 5000], 7, 0.5), 5000, 'the last repeats')
  t.same(['250ms', '5s', '2m', '1h', '1d'].map(parseDuration), [250, 5000, 120000, 3600000, 86400000])
  const create = new URL('https://open.feishu.cn/open-apis/bitable/v1/apps/A/tables/T/records/batch_create?user_id_type=open_id')
  t.equal(withClientToken(create, 'POST', 'ct').searchParams.get('client_token'), 'ct')
  t.equal(withClientToken(create, 'POST', 'ct').searchParams.get('user_id_type'), 'open_id')
  const given = new URL('https://open.feishu.cn/open-apis/bitable/v1/apps/A/tables/T/records?client_token=mine')
  t.equal(withClientToken(given, 'POST', 'ct').searchParams.get('client_token'), 'mine', 'the caller\'s own is kept')
  t.equal(withClientToken(new URL('https://open.feishu.cn/open-apis/bitable/v1/apps/A/tables/T/records/batch_update'), 'POST', 'ct').search, '', 'updates take none')
  t.equal(withClientToken(create, 'PUT', 'ct').searchParams.has('client_token'), false)
})
