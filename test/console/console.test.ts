import { createHash, hkdfSync, randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { sign } from '@fastify/cookie'
import t, { type Test } from 'tap'
import { loadConfig } from '../../src/schemas/config.js'
import { API_KEY, build, REDIS_URL, redisKeyPrefix, registerSecret, sendJson, skipWithoutRedis, startUpstream, testKeys } from '../helper.js'
import { ConsoleClient } from './client.js'

const skip = await skipWithoutRedis()
const SECRET = randomBytes(32).toString('base64')
const CONSOLE_TOKEN = 'console-token-0123456789-0123456789-xyz'
registerSecret(SECRET)
registerSecret(CONSOLE_TOKEN)
const sha256 = (value: string): string => createHash('sha256').update(value).digest('hex')

/** A destination on loopback whose answer the test sets: 400 until fixed. */
async function destination (t: Test) {
  const state = { status: 400 }
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, state.status, state.status === 200 ? { code: 0, data: { ok: true } } : { code: 1254000, msg: 'WrongRequestBody' }) })
  return { ...upstream, state }
}

async function consoleApp (t: Test, config: Record<string, unknown> = {}) {
  const upstream = await destination(t)
  const built = await build(t, {
    EXPECTED_COZE_API_KEY: API_KEY,
    RESEND_ALLOWED_HOSTS: upstream.url,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL,
    REDIS_KEY_PREFIX: redisKeyPrefix(t, 'console'),
    RESEND_RETRY_SCHEDULE: '50ms',
    CONSOLE_TOKEN,
    ...config
  })
  const queue = async (path: string, params: unknown = { a: 1 }, key = API_KEY, headers: Record<string, string> = {}) => {
    const res = await built.app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': key, ...headers }, payload: { location: `${upstream.url}${path}`, params, delivery: 'queued' } })
    t.equal(res.statusCode, 202, res.body)
    return res.json().data.id as string
  }
  /** Waits for a job's status through the JSON route (a loaded machine: up to 60 s). */
  const until = async (id: string, status: string, key = API_KEY) => {
    for (let i = 0; i < 1200; i++) {
      const res = await built.app.inject({ url: `/resend/jobs/${id}`, headers: { 'x-api-key': key } })
      if (res.json().data?.status === status) return
      await sleep(50)
    }
    t.fail(`job ${id} did not become ${status}`)
  }
  return { ...built, upstream, queue, until }
}

t.test('off unless configured: /console is 404 in the envelope', async (t) => {
  const { app } = await build(t, {})
  const res = await app.inject({ url: '/console' })
  t.equal(res.statusCode, 404)
  t.match(res.json(), { success: false, data: { error: 'NOT_FOUND' } })
  t.equal((await app.inject({ url: '/console/assets/console.js' })).statusCode, 404)
})

t.test('configuration: a short token, a wrong secret, a console caller without a key to sign with', async (t) => {
  const load = (overrides: Record<string, unknown>) => () => loadConfig({ overrides, env: false })
  t.throws(load({ CONSOLE_TOKEN: 'short' }), { message: /CONSOLE_TOKEN/ })
  t.throws(load({ CONSOLE_TOKEN: CONSOLE_TOKEN, CONSOLE_SESSION_SECRET: 'not-base64' }), { message: /CONSOLE_SESSION_SECRET is not 32 random bytes/ })
  const doc = { apps: { a: { app_id: '1', api_base: 'https://api.coze.cn', keys: [{ kid: 'k', private_key_env: 'K' }] } }, callers: { ops: { key_sha256: sha256('x'), apps: ['a'], console: true } } }
  t.throws(load({ COZE_APPS: JSON.stringify(doc), K: testKeys().pkcs8 }), { message: 'callers.ops has console access: set CONSOLE_SESSION_SECRET (openssl rand -base64 32), which signs the console\'s sessions on every instance' })
  t.doesNotThrow(load({ COZE_APPS: JSON.stringify(doc), K: testKeys().pkcs8, CONSOLE_SESSION_SECRET: SECRET }))
  t.throws(load({ COZE_APPS: JSON.stringify({ ...doc, callers: { ops: { ...doc.callers.ops, console: 'root' } } }), K: testKeys().pkcs8 }), { message: 'COZE_APPS: callers.ops.console takes true, false or "admin"' })
})

t.test('sign-in: a wrong token gets the sign-in page only; the right one a signed, HttpOnly, SameSite=Strict session', { skip }, async (t) => {
  const { app } = await consoleApp(t)
  const stranger = new ConsoleClient(app)
  const first = await stranger.get('/console')
  t.equal(first.statusCode, 200)
  t.match(first.body, /<form method="post" action="\/console\/sign-in">/)
  t.equal((await stranger.post('/console/sign-in')).statusCode, 401, 'no token at all')
  const wrong = await stranger.post('/console/sign-in', { token: 'not-the-token-0123456789-0123456789' })
  t.equal(wrong.statusCode, 401)
  t.match(wrong.body, /That token does not open the console/)
  t.notOk(stranger.cookies.has('aibill_console'), 'no session')
  for (const path of ['/console/jobs', '/console/destinations', '/console/apps', '/console/replay', '/console/jobs/00000000-0000-0000-0000-000000000000']) {
    const res = await stranger.get(path)
    t.equal(res.statusCode, 401, path)
    t.match(res.body, /action="\/console\/sign-in"/, `${path}: the sign-in page`)
    t.notMatch(res.body, /<nav/, `${path}: nothing else`)
  }
  const refusedAction = await stranger.post('/console/jobs/00000000-0000-0000-0000-000000000000/retry')
  t.equal(refusedAction.statusCode, 401)

  const operator = new ConsoleClient(app)
  const signedIn = await operator.signIn(CONSOLE_TOKEN)
  t.equal(signedIn.statusCode, 303)
  t.equal(signedIn.headers.location, '/console')
  const cookie = String([signedIn.headers['set-cookie']].flat().find((line) => String(line).startsWith('aibill_console=')))
  t.match(cookie, /; Max-Age=3600; Path=\/console; HttpOnly; SameSite=Strict$/)
  t.notMatch(cookie, /Secure/, 'not Secure over plain HTTP')
  t.notOk(cookie.includes(CONSOLE_TOKEN), 'the session does not carry the token')
  const now = await operator.get('/console')
  t.equal(now.statusCode, 200)
  t.match(now.body, /<h1>Now<\/h1>/)
  t.match(now.body, /administrator/)

  const signedOut = await operator.post('/console/sign-out')
  t.equal(signedOut.statusCode, 303)
  t.notOk(operator.cookies.has('aibill_console'), 'the session cookie is cleared')
  t.equal((await operator.get('/console/jobs')).statusCode, 401)
})

t.test('a session behind TLS is Secure; one that expired, was forged or altered opens nothing', { skip }, async (t) => {
  const { app } = await consoleApp(t, { TRUST_PROXY: '1', CONSOLE_SESSION_MINUTES: 1 })
  const operator = new ConsoleClient(app, { 'x-forwarded-proto': 'https' })
  const signedIn = await operator.signIn(CONSOLE_TOKEN)
  t.match(String([signedIn.headers['set-cookie']].flat().find((line) => String(line).startsWith('aibill_console='))), /; Max-Age=60; .*Secure/)
  const key = Buffer.from(hkdfSync('sha256', Buffer.from(CONSOLE_TOKEN), Buffer.alloc(0), 'aibill console session', 32)).toString('base64')
  const opens = async (value: string) => (await app.inject({ url: '/console/jobs', headers: { cookie: `aibill_console=${encodeURIComponent(value)}` } })).statusCode
  t.equal(await opens(sign(`.${Date.now() + 30_000}`, key)), 200, 'a session signed with the key opens')
  t.equal(await opens(sign(`.${Date.now() - 1}`, key)), 401, 'expired')
  t.equal(await opens(sign(`.${Date.now() + 3_600_000}`, key)), 401, 'further ahead than a session lasts')
  t.equal(await opens(sign('nobody.' + String(Date.now() + 30_000), key)), 401, 'no such caller')
  t.equal(await opens(sign('garbage', key)), 401, 'not a session')
  t.equal(await opens(sign(`.${Date.now() + 30_000}`, randomBytes(32).toString('base64'))), 401, 'signed with another key')
  t.equal(await opens(`.${Date.now() + 30_000}`), 401, 'unsigned')
})

t.test('pages: CSP with no inline script and no foreign origin, no-store, the assets from the service', { skip }, async (t) => {
  const { app } = await consoleApp(t)
  const operator = new ConsoleClient(app)
  await operator.signIn(CONSOLE_TOKEN)
  for (const path of ['/console', '/console/destinations', '/console/apps', '/console/jobs', '/console/replay']) {
    const res = await operator.get(path)
    t.equal(res.statusCode, 200, path)
    t.equal(res.headers['content-security-policy'], "default-src 'none';script-src 'self';style-src 'self';img-src 'self';connect-src 'self';form-action 'self';frame-ancestors 'none';base-uri 'none'", path)
    t.equal(res.headers['cache-control'], 'no-store', path)
    t.equal(res.headers['x-content-type-options'], 'nosniff')
    t.equal(res.headers['referrer-policy'], 'no-referrer')
    t.notOk(res.headers['strict-transport-security'], 'HSTS is left to the TLS terminator')
    t.notMatch(res.body, /<script>|<script(?![^>]*\bsrc=)|\bstyle=|\bon[a-z]+=|https?:\/\//, `${path}: no inline script or style, no absolute URL`)
  }
  const script = await app.inject({ url: '/console/assets/console.js' })
  t.equal(script.statusCode, 200)
  t.equal(script.headers['content-type'], 'text/javascript; charset=utf-8')
  t.match(script.body, /data-refresh|dataset\.refresh/)
  const style = await app.inject({ url: '/console/assets/console.css' })
  t.equal(style.headers['content-type'], 'text/css; charset=utf-8')
  t.equal(style.headers['cache-control'], 'no-cache')
  t.equal((await app.inject({ url: '/api/auth-url' })).headers['content-security-policy'], undefined, 'the API keeps its own headers')
  const paths = Object.keys((await app.inject({ url: '/docs/json' })).json().paths as object)
  t.ok(paths.includes('/resend') && !paths.some((path) => path.startsWith('/console')), 'the pages are not in the OpenAPI document')
})

t.test('a failed job: seen with its attempts, replayed after the destination is fixed, delivered', { skip }, async (t) => {
  const { app, upstream, queue, until } = await consoleApp(t)
  const id = await queue('/records')
  await until(id, 'failed')
  const operator = new ConsoleClient(app)
  await operator.signIn(CONSOLE_TOKEN)
  // The counts are read every few seconds, for every page at once.
  let now = await operator.get('/console')
  for (let i = 0; i < 600 && !/<span class="count">1<\/span> failed/.test(now.body); i++) {
    await sleep(50)
    now = await operator.get('/console')
  }
  t.match(now.body, /<span class="count">1<\/span> failed/)
  t.match(now.body, /1 failed in the last hour/)
  t.match(now.body, /<rect class="failed"/)
  const failed = await operator.get('/console/jobs?status=failed')
  t.match(failed.body, new RegExp(`href="/console/jobs/${id}"`))
  const host = new URL(upstream.url).host
  for (const prefix of [host, `${host}/`, `${host}/records`]) t.match((await operator.get(`/console/jobs?destination=${encodeURIComponent(prefix)}`)).body, new RegExp(id), `the destination filter ${prefix}`)
  t.match((await operator.get(`/console/jobs?destination=${encodeURIComponent(`${host}/rec`)}`)).body, /No job matches/, 'a prefix is whole path segments')
  t.match(failed.body, /127\.0\.0\.1:\d+\/records/)
  const page = await operator.get(`/console/jobs/${id}`)
  t.match(page.body, /HTTP 400 UPSTREAM_ERROR/, 'the attempt in the timeline')
  t.match(page.body, /<span class="muted">on [^<]+<\/span>/, 'with the instance')
  t.match(page.body, /1254000/, 'the destination\'s answer')
  t.match(page.body, /action="\/console\/jobs\/[^"]+\/retry"/)
  const destinations = await operator.get('/console/destinations')
  t.match(destinations.body, /127\.0\.0\.1:\d+/)
  t.match(destinations.body, /<td>1<\/td><td>0 %<\/td>/, 'one attempt, answered (a 400 is the destination\'s verdict, not a failure of it)')

  upstream.state.status = 200
  const retried = await operator.post(`/console/jobs/${id}/retry`)
  t.equal(retried.statusCode, 303)
  t.equal(retried.headers.location, `/console/jobs/${id}?done=retried`)
  t.match((await operator.get(String(retried.headers.location))).body, /Put back in the queue\./)
  await until(id, 'delivered')
  const delivered = await operator.get(`/console/jobs/${id}`)
  t.match(delivered.body, /<span class="state delivered">delivered<\/span>/)
  t.match(delivered.body, /HTTP 200 delivered/)
  t.match(delivered.body, /HTTP 400 UPSTREAM_ERROR[\s\S]*HTTP 200 delivered/, 'both attempts, oldest first')
  const again = await operator.post(`/console/jobs/${id}/retry`)
  t.equal(again.headers.location, `/console/jobs/${id}?refused=retry`, 'a delivered job is not retried')
  t.match((await operator.get(String(again.headers.location))).body, /Not retried: only a failed job can be\./)
  const absent = await operator.get('/console/jobs/not-a-job')
  t.equal(absent.statusCode, 404)
  t.match(absent.body, /<h1>404 NOT_FOUND<\/h1>[\s\S]*The service answered NOT_FOUND\./, 'in the console\'s layout')
  t.equal((await operator.get('/console/jobs/00000000-0000-0000-0000-000000000000')).statusCode, 404)
})

t.test('replay the failed jobs of a filter: a confirmation that says how many, then each put back once', { skip }, async (t) => {
  const { app, upstream, queue, until } = await consoleApp(t)
  const ids = [await queue('/a/1'), await queue('/a/2'), await queue('/b/1')]
  for (const id of ids) await until(id, 'failed')
  const operator = new ConsoleClient(app)
  await operator.signIn(CONSOLE_TOKEN)
  const host = new URL(upstream.url).host
  const confirm = await operator.get(`/console/replay?destination=${encodeURIComponent(`${host}/a`)}`)
  t.match(confirm.body, /2 failed jobs to 127\.0\.0\.1:\d+\/a will be put back/)
  t.match(confirm.body, /Replay 2 jobs/)
  t.notMatch(confirm.body, /data-refresh/, 'a confirmation does not refresh under the operator')
  const none = await operator.get('/console/replay?destination=nowhere.example')
  t.match(none.body, /No failed job to nowhere\.example to replay/)

  upstream.state.status = 200
  const replayed = await operator.post('/console/replay', { destination: `${host}/a`, expected: '2' })
  t.equal(replayed.statusCode, 303)
  t.match(String(replayed.headers.location), /^\/console\/jobs\?replayed=2&destination=/)
  t.match((await operator.get(String(replayed.headers.location))).body, /2 failed jobs put back in the queue\./)
  await until(ids[0] as string, 'delivered')
  await until(ids[1] as string, 'delivered')
  const other = await app.inject({ url: `/resend/jobs/${ids[2] as string}`, headers: { 'x-api-key': API_KEY } })
  t.equal(other.json().data.status, 'failed', 'the job outside the filter stays failed')
  t.equal(upstream.requests.filter((request) => request.url.startsWith('/a/')).length, 4, 'each once more')
})

t.test('cancel a queued job; a job that is not queued is not cancelled', { skip }, async (t) => {
  const { app, upstream, queue, until } = await consoleApp(t, { RESEND_RETRY_SCHEDULE: '1h' })
  upstream.state.status = 503
  const id = await queue('/later')
  for (let i = 0; i < 1200 && upstream.requests.length === 0; i++) await sleep(50)
  const operator = new ConsoleClient(app)
  await operator.signIn(CONSOLE_TOKEN)
  await until(id, 'queued')
  const page = await operator.get(`/console/jobs/${id}`)
  t.match(page.body, /HTTP 503 UPSTREAM_ERROR · next at/)
  const cancelled = await operator.post(`/console/jobs/${id}/cancel`)
  t.equal(cancelled.headers.location, '/console/jobs?done=cancelled')
  t.match((await operator.get('/console/jobs?done=cancelled')).body, /Cancelled: the job is removed\./)
  t.equal((await app.inject({ url: `/resend/jobs/${id}`, headers: { 'x-api-key': API_KEY } })).statusCode, 404)

  upstream.state.status = 400
  const failed = await queue('/now')
  await until(failed, 'failed')
  const refused = await operator.post(`/console/jobs/${failed}/cancel`)
  t.equal(refused.headers.location, `/console/jobs/${failed}?refused=cancel`)
  t.match((await operator.get(String(refused.headers.location))).body, /Not cancelled: only a queued job can be/)
})

t.test('cross-site and token-less POSTs change nothing', { skip }, async (t) => {
  const { app, upstream, queue, until } = await consoleApp(t)
  const id = await queue('/x')
  await until(id, 'failed')
  upstream.state.status = 200
  const operator = new ConsoleClient(app)
  await operator.signIn(CONSOLE_TOKEN)
  await operator.get('/console/jobs')
  const noToken = await operator.post(`/console/jobs/${id}/retry`, { _csrf: '' })
  t.equal(noToken.statusCode, 403)
  t.match(noToken.body, /403 FORBIDDEN/)
  const huge = await operator.post(`/console/jobs/${id}/retry`, { pad: 'p'.repeat(5000) })
  t.equal(huge.statusCode, 413, 'a form over 4 KiB')
  t.match(huge.body, /413 PAYLOAD_TOO_LARGE/)
  const wrongToken = await operator.post(`/console/jobs/${id}/retry`, { _csrf: 'x'.repeat(40) })
  t.equal(wrongToken.statusCode, 403)
  const crossSite = await operator.post(`/console/jobs/${id}/retry`, {}, { 'sec-fetch-site': 'cross-site' })
  t.equal(crossSite.statusCode, 403)
  // Another site's form: no cookies (SameSite=Strict), no token.
  const foreign = await app.inject({ method: 'POST', url: `/console/jobs/${id}/retry`, payload: 'a=1', headers: { 'content-type': 'application/x-www-form-urlencoded', origin: 'https://evil.example' } })
  t.equal(foreign.statusCode, 401)
  // A token from a signed-out page does not serve a signed-in session.
  const visitor = new ConsoleClient(app)
  await visitor.get('/console')
  const borrowed = await operator.post(`/console/jobs/${id}/retry`, { _csrf: visitor.csrf })
  t.equal(borrowed.statusCode, 403, 'a token is bound to who is signed in')
  const json = await app.inject({ method: 'POST', url: '/console/replay', payload: { destination: 'x' }, headers: { cookie: [...operator.cookies].map(([name, value]) => `${name}=${value}`).join('; ') } })
  t.equal(json.statusCode, 403, 'a JSON body has no token either')
  t.equal((await app.inject({ url: `/resend/jobs/${id}`, headers: { 'x-api-key': API_KEY } })).json().data.status, 'failed', 'still failed')
  t.equal(upstream.requests.length, 1, 'never sent again')
  const tooLong = await operator.post('/console/replay', { destination: 'd'.repeat(600) })
  t.equal(tooLong.statusCode, 400)
  t.match(tooLong.body, /400 VALIDATION_FAILED/)
})

t.test('bad sign-ins are rate-limited', { skip }, async (t) => {
  const { app } = await consoleApp(t, { RATE_LIMIT_AUTH_URL_MAX: 3 })
  const guesser = new ConsoleClient(app)
  await guesser.get('/console')
  const statuses: number[] = []
  for (let i = 0; i < 5; i++) statuses.push((await guesser.post('/console/sign-in', { token: `guess-${i}-0123456789-0123456789-0123` })).statusCode)
  t.same(statuses, [401, 401, 401, 429, 429])
  const limited = await guesser.post('/console/sign-in', { token: CONSOLE_TOKEN })
  t.equal(limited.statusCode, 429, 'the right token waits too')
  t.ok(Number(limited.headers['retry-after']) > 0)
  t.match(limited.body, /429 RATE_LIMITED/)
})

t.test('broker mode: a caller with console sees its own jobs and apps; "admin" sees all; no secret reaches a page', { skip }, async (t) => {
  const KEY_A = 'console-caller-a-0123456789abcdef'
  const KEY_B = 'console-caller-b-0123456789abcdef'
  const KEY_CHIEF = 'console-chief-key-0123456789abcd'
  const KEY_NONE = 'caller-without-console-0123456789'
  const FEISHU_SECRET = 'feishu-secret-MARKER-0123456789'
  const TENANT_TOKEN = 't-TENANT-MARKER-0123456789'
  for (const secret of [KEY_A, KEY_B, KEY_CHIEF, KEY_NONE, FEISHU_SECRET, TENANT_TOKEN]) registerSecret(secret)
  const markers = ['HEADER-MARKER-71', 'PARAM-MARKER-72', 'QUERY-MARKER-73', KEY_A, KEY_B, KEY_CHIEF, FEISHU_SECRET, TENANT_TOKEN]
  // Coze refuses every key, with its logid; Feishu hands out a token and refuses the records.
  const coze = await startUpstream(t, (_request, res) => {
    res.setHeader('x-tt-logid', '20261206LOGIDMARK')
    sendJson(res, 401, { error_code: 'invalid_client', error_message: 'invalid jwt' })
  })
  const feishu = await startUpstream(t, (request, res) => {
    if (request.url === '/open-apis/auth/v3/tenant_access_token/internal') { sendJson(res, 200, { code: 0, msg: 'ok', tenant_access_token: TENANT_TOKEN, expire: 7200 }); return }
    if (request.url.startsWith('/open-apis/later')) { sendJson(res, 503, {}); return }
    sendJson(res, 400, { code: 1254001, msg: 'WrongRequestBody' })
  })
  const document = {
    apps: {
      bills: { app_id: '1150000000001', api_base: coze.url, keys: [{ kid: 'kid-bills', private_key_env: 'APP_KEY' }] },
      other: { app_id: '1150000000002', api_base: coze.url, keys: [{ kid: 'kid-other', private_key_env: 'APP_KEY' }] }
    },
    callers: {
      a: { key_sha256: sha256(KEY_A), apps: ['bills'], routes: ['token', 'resend'], feishu_apps: ['ledger'], console: true },
      b: { key_sha256: sha256(KEY_B), apps: ['other'], routes: ['resend'], console: true },
      chief: { key_sha256: sha256(KEY_CHIEF), apps: ['bills'], console: 'admin' },
      none: { key_sha256: sha256(KEY_NONE), apps: ['bills'], routes: ['resend'] }
    },
    feishu_apps: {
      ledger: { app_id: 'cli_ledger', app_secret_env: 'LEDGER_SECRET', base: feishu.url },
      payroll: { app_id: 'cli_payroll', app_secret_env: 'LEDGER_SECRET', base: feishu.url }
    }
  }
  const { app, logs } = await build(t, {
    COZE_APPS: JSON.stringify(document),
    APP_KEY: testKeys().pkcs8,
    LEDGER_SECRET: FEISHU_SECRET,
    RESEND_ALLOWED_HOSTS: feishu.url,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL,
    REDIS_KEY_PREFIX: redisKeyPrefix(t, 'console-broker'),
    CONSOLE_SESSION_SECRET: SECRET
  })
  const queue = async (key: string, body: Record<string, unknown>) => {
    const res = await app.inject({ method: 'POST', url: `/resend?marker=${markers[2] as string}`, headers: { 'x-api-key': key }, payload: { location: `${feishu.url}/open-apis/bitable/v1/records?user_id_type=${markers[2] as string}`, method: 'POST', headers: { 'x-note': markers[0] }, params: { note: markers[1] }, delivery: 'queued', ...body } })
    t.equal(res.statusCode, 202, res.body)
    return res.json().data.id as string
  }
  const jobA = await queue(KEY_A, { auth: { feishu_app: 'ledger' } })
  const jobB = await queue(KEY_B, {})
  for (const [id, key] of [[jobA, KEY_A], [jobB, KEY_B]] as const) {
    for (let i = 0; i < 1200 && (await app.inject({ url: `/resend/jobs/${id}`, headers: { 'x-api-key': key } })).json().data.status !== 'failed'; i++) await sleep(50)
  }
  const token = await app.inject({ method: 'POST', url: '/token', headers: { 'x-api-key': KEY_A }, payload: { app: 'bills' } })
  t.equal(token.statusCode, 502, 'Coze refused the exchange')

  const pages: string[] = []
  const keep = <R extends { body: string, headers: unknown }>(res: R): R => { pages.push(res.body, JSON.stringify(res.headers)); return res }
  const none = new ConsoleClient(app)
  t.equal(keep(await none.signIn(KEY_NONE)).statusCode, 401, 'a caller without console is refused')

  const a = new ConsoleClient(app)
  t.equal(keep(await a.signIn(KEY_A)).statusCode, 303)
  const listA = keep(await a.get('/console/jobs'))
  t.match(listA.body, new RegExp(jobA))
  t.notMatch(listA.body, new RegExp(jobB), 'not another caller\'s job')
  t.notMatch(listA.body, /<select id="caller"/, 'no caller filter')
  t.equal(keep(await a.get(`/console/jobs/${jobB}`)).statusCode, 404, 'another caller\'s job is absent')
  t.equal(keep(await a.get('/console/jobs?caller=b')).body.includes(jobB), false, 'a caller filter does not widen a caller\'s view')
  const retryB = keep(await a.post(`/console/jobs/${jobB}/retry`))
  t.equal(retryB.statusCode, 404, 'nor can it be retried')
  const jobPage = keep(await a.get(`/console/jobs/${jobA}`))
  t.match(jobPage.body, /HTTP 400 feishu_1254001/, 'Feishu\'s code as the attempt\'s error')
  t.match(jobPage.body, /open-apis\/bitable\/v1\/records/)
  t.notMatch(jobPage.body, /user_id_type/, 'the destination without its query')
  const appsA = keep(await a.get('/console/apps'))
  t.match(appsA.body, /<td>bills<\/td><td><code>1150000000001<\/code><\/td><td><code>kid-bills<\/code>/)
  t.notMatch(appsA.body, /<td>other<\/td>/, 'not another caller\'s Coze app')
  t.match(appsA.body, /coze_exchange_failed [^<]* ago<br><span class="muted">logid<\/span> <code>20261206LOGIDMARK<\/code>/, 'the last failure with Coze\'s logid')
  t.match(appsA.body, /<td>ledger<\/td><td><code>cli_ledger<\/code><\/td><td>http:\/\/127\.0\.0\.1:\d+<\/td>\n<td>\d+ s ago<\/td>/, 'the token this instance fetched, and when')
  t.notMatch(appsA.body, /payroll/, 'not a Feishu app the caller may not use')
  keep(await a.get('/console/destinations'))
  const nowA = keep(await a.get('/console'))
  t.match(nowA.body, /<span class="count">1<\/span> failed/, 'its own failed job, not the queue\'s two')
  t.match(nowA.body, /<span class="count">—<\/span> oldest waiting/)
  t.notMatch(nowA.body, /<svg/, 'not the chart of every caller')
  const replayA = keep(await a.get('/console/replay'))
  t.match(replayA.body, /1 failed job {2}will be put back/, 'its own failed job only')

  const b = new ConsoleClient(app)
  await b.signIn(KEY_B)
  // b's job that waits for its next attempt: b's Now counts it, and how long it has waited.
  const later = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': KEY_B }, payload: { location: `${feishu.url}/open-apis/later`, params: {}, delivery: 'queued' } })
  const laterId = later.json().data.id as string
  for (let i = 0; i < 1200 && (await app.inject({ url: `/resend/jobs/${laterId}`, headers: { 'x-api-key': KEY_B } })).json().data.last_attempt === null; i++) await sleep(50)
  const nowB = keep(await b.get('/console'))
  t.match(nowB.body, /<span class="count">1<\/span> (queued|delivering)/)
  t.match(nowB.body, /<span class="count">\d+ s<\/span> oldest waiting/)
  t.notMatch(keep(await a.get('/console/jobs')).body, new RegExp(laterId), 'b\'s, not a\'s')
  const listB = keep(await b.get('/console/jobs'))
  t.match(listB.body, new RegExp(jobB))
  t.notMatch(listB.body, new RegExp(jobA))
  t.match(keep(await b.get('/console/apps')).body, /No Feishu app is configured/, 'b may use no Feishu app')

  const chief = new ConsoleClient(app)
  await chief.signIn(KEY_CHIEF)
  const all = keep(await chief.get('/console/jobs'))
  t.match(all.body, new RegExp(jobA))
  t.match(all.body, new RegExp(jobB))
  t.match(all.body, /<select id="caller" name="caller"><option value="">all<\/option><option>a<\/option><option>b<\/option><option>chief<\/option><option>none<\/option><\/select>/)
  const onlyB = keep(await chief.get('/console/jobs?caller=b'))
  t.match(onlyB.body, new RegExp(jobB))
  t.notMatch(onlyB.body, new RegExp(jobA), 'the caller filter')
  t.match(keep(await chief.get('/console/apps')).body, /<td>other<\/td>[\s\S]*payroll/, 'every app')
  t.match(keep(await chief.get('/console/replay?caller=b')).body, /1 failed job of b will be put back/)
  const replayedB = keep(await chief.post('/console/replay', { caller: 'b' }))
  t.equal(replayedB.headers.location, '/console/jobs?replayed=1&caller=b', 'an administrator replays one caller\'s failed jobs')
  keep(await chief.get(`/console/jobs/${jobA}`))

  for (const marker of markers) {
    t.notOk(pages.some((text) => text.includes(marker)), `${marker.slice(0, 14)}… appears on no page`)
    t.notOk(logs.text.includes(marker) && marker !== markers[2], `${marker.slice(0, 14)}… is in no log line`)
  }
})

t.test('the console reads what it lacks: without queued delivery the pages say so', async (t) => {
  const { app } = await build(t, { CONSOLE_TOKEN, EXPECTED_COZE_API_KEY: API_KEY, COZE_APP_ID: '1150000000009' })
  const operator = new ConsoleClient(app)
  await operator.signIn(CONSOLE_TOKEN)
  t.match((await operator.get('/console')).body, /Queued delivery is off: it needs RESEND_QUEUE=redis and RESEND_QUEUE_SECRET\./)
  const jobs = await operator.get('/console/jobs')
  t.equal(jobs.statusCode, 503)
  t.match(jobs.body, /<h1>503 NOT_CONFIGURED<\/h1>/)
  t.match(jobs.body, /<nav/, 'inside the console')
  t.match(jobs.body, /Queued delivery is off: it needs RESEND_QUEUE=redis and RESEND_QUEUE_SECRET\./)
  const apps = await operator.get('/console/apps')
  t.match(apps.body, /<td>default<\/td><td><code>1150000000009<\/code><\/td><td><span class="muted">the caller's<\/span>/)
  t.match(apps.body, /No Feishu app is configured/)
})
