import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { parseEnv } from 'node:util'
import Fastify, { type FastifyError } from 'fastify'
import fp from 'fastify-plugin'
import t from 'tap'
import app from '../src/app.js'
import { serverOptions } from '../src/options.js'
import { toServiceError } from '../src/lib/http/error-answers.js'
import errors from '../src/plugins/errors.js'
import { ConfigSchema, didYouMean, loadConfig } from '../src/schemas/config.js'
import { TRACING_VARIABLES } from '../src/lib/tracing/index.js'
import { build, LogCapture, tempDir, testKeys } from './helper.js'

t.test('GET /health: cheap, the envelope, zh-CN by default and English on request', async (t) => {
  const { app } = await build(t)
  const res = await app.inject('/health')
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.match(body, { success: true, data: { status: 'ok', service: 'aibill-token-service', version: /^\d+\.\d+\.\d+/ }, message: '服务运行正常' })
  t.ok(!Number.isNaN(Date.parse(body.data.timestamp)))
  t.equal((await app.inject({ url: '/health', headers: { 'accept-language': 'en' } })).json().message, 'Service is healthy')
  t.equal((await app.inject({ url: '/health', headers: { 'accept-language': 'fr, de;q=0.5' } })).json().message, '服务运行正常', 'unknown languages fall back to zh-CN')
})

t.test('GET /ready reports each dependency and each served route; anything not ok makes it 503 NOT_READY', async (t) => {
  const { app } = await build(t, { JWT_PRIVATE_KEY: testKeys().pkcs8, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: 'a-caller-key-0123456789' })
  const ready = await app.inject('/ready')
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { success: true, data: { status: 'ready', checks: { state_store: 'ok', token: 'ok', resend: 'ok', resend_queue: 'off: RESEND_QUEUE=redis, RESEND_QUEUE_SECRET' } }, message: '服务已就绪' })

  // The Quick start's first run: it starts, and /ready says what is missing for each route it serves.
  const bare = await build(t)
  const unready = await bare.app.inject('/ready')
  t.equal(unready.statusCode, 503)
  t.same(unready.json().data.checks, { state_store: 'ok', token: 'not_configured: EXPECTED_COZE_API_KEY, JWT_PRIVATE_KEY, COZE_APP_ID', resend: 'not_configured: EXPECTED_COZE_API_KEY', resend_queue: 'off: RESEND_QUEUE=redis, RESEND_QUEUE_SECRET' })

  // An instance that only runs the sign-in is ready without any Coze setting, and serves nothing else.
  const signIn = await build(t, { ROUTES: 'augment' })
  t.same((await signIn.app.inject('/ready')).json().data, { status: 'ready', checks: { state_store: 'ok' } })
  t.equal((await signIn.app.inject({ method: 'POST', url: '/token', payload: {} })).statusCode, 404, 'an unlisted route is not there')
  t.equal((await signIn.app.inject('/api/auth-url')).statusCode, 200)
  t.equal((await build(t, { ROUTES: 'token,resend' })).app.printRoutes().includes('auth-url'), false)
  t.throws(() => loadConfig({ overrides: { ROUTES: 'token,billing' }, env: false }), { message: 'ROUTES must be a comma-separated list of token, resend and augment' })

  app.readiness.add('broken', async () => { throw new Error('connection refused') })
  const notReady = await app.inject({ url: '/ready', headers: { 'accept-language': 'en' } })
  t.equal(notReady.statusCode, 503)
  t.same(notReady.json(), { success: false, data: { error: 'NOT_READY', status: 'not_ready', checks: { state_store: 'ok', token: 'ok', resend: 'ok', resend_queue: 'off: RESEND_QUEUE=redis, RESEND_QUEUE_SECRET', broken: 'down' } }, message: 'The service is not ready' })
})

t.test('what Fastify itself answers is the envelope too', async (t) => {
  const { app, logs } = await build(t, { BODY_LIMIT_BYTES: 1024 })
  const notFound = await app.inject('/no-such-route')
  t.equal(notFound.statusCode, 404)
  t.same(notFound.json(), { success: false, data: { error: 'NOT_FOUND' }, message: '请求的资源不存在' })
  const wrongMethod = await app.inject({ method: 'DELETE', url: '/health' })
  t.equal(wrongMethod.statusCode, 405)
  t.same(wrongMethod.json(), { success: false, data: { error: 'METHOD_NOT_ALLOWED' }, message: '不支持该请求方法' })
  t.equal(wrongMethod.headers.allow, 'GET, HEAD')
  const getToken = await app.inject({ method: 'GET', url: '/token?x=1' })
  t.equal(getToken.statusCode, 405)
  t.equal(getToken.headers.allow, 'POST')

  const post = (payload: string, contentType = 'application/json') =>
    app.inject({ method: 'POST', url: '/token', headers: { 'content-type': contentType }, payload })
  const cases: Array<[Promise<import('light-my-request').Response>, number, string]> = [
    [post('{"public_key": '), 400, 'INVALID_JSON'],
    [post(''), 400, 'INVALID_JSON'],
    [post('{"__proto__": {"polluted": true}}'), 400, 'INVALID_JSON'],
    [post('{"constructor": {"prototype": {"polluted": true}}}'), 400, 'INVALID_JSON'],
    [post('public_key=x', 'application/x-www-form-urlencoded'), 415, 'UNSUPPORTED_MEDIA_TYPE'],
    [post('hello', 'text/plain'), 415, 'UNSUPPORTED_MEDIA_TYPE'],
    [post(JSON.stringify({ public_key: 'x'.repeat(2048) })), 413, 'PAYLOAD_TOO_LARGE'],
    // The caller's key is checked before the body's shape: here none is configured.
    [post('[1, 2, 3]'), 503, 'NOT_CONFIGURED'],
    [app.inject({ method: 'GET', url: '/%c0' }), 400, 'BAD_REQUEST']
  ]
  for (const [pending, status, code] of cases) {
    const res = await pending
    t.equal(res.statusCode, status, code)
    const body = res.json()
    t.equal(body.success, false)
    t.equal(body.data.error, code)
    t.type(body.message, 'string')
  }
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'no prototype was polluted')
  t.notOk(logs.text.includes('polluted'))
})

t.test('a failure inside a handler is 500 INTERNAL with no internals; other HTTP errors keep their status', async (t) => {
  const logs = new LogCapture()
  const server = Fastify(serverOptions({ logStream: logs }))
  await server.register(fp(errors))
  const sensible = (await import('@fastify/sensible')).default
  await server.register(sensible)
  server.get('/boom', async () => { throw new Error('db password is hunter2') })
  server.get('/status/:code', async (request) => {
    throw server.httpErrors.createError(Number((request.params as { code: string }).code), 'internal detail')
  })
  t.teardown(async () => await server.close())

  const boom = await server.inject('/boom')
  t.equal(boom.statusCode, 500)
  t.same(boom.json(), { success: false, data: { error: 'INTERNAL' }, message: '服务器内部错误' })
  t.notOk(boom.body.includes('hunter2'))
  t.ok(logs.records().some((line) => line.level === 50 && line.msg === 'request failed'), 'logged as an error for the operator')

  const expected: Record<number, string> = { 401: 'UNAUTHORIZED', 403: 'FORBIDDEN', 405: 'METHOD_NOT_ALLOWED', 409: 'BAD_REQUEST', 429: 'RATE_LIMITED', 503: 'SERVICE_UNAVAILABLE', 502: 'INTERNAL' }
  for (const [status, code] of Object.entries(expected)) {
    const res = await server.inject(`/status/${status}`)
    t.equal(res.statusCode, ({ 409: 400, 502: 500 } as Record<string, number>)[status] ?? Number(status), 'unknown statuses fold into 400 and 500')
    t.equal(res.json().data.error, code)
    t.notOk(res.body.includes('internal detail'))
  }
})

t.test('an invalid configuration stops the start, names the variable and says what it may be', async (t) => {
  const load = (overrides: Record<string, unknown>) => () => loadConfig({ overrides, env: false })
  t.throws(load({ PORT: 70000 }), { name: 'ConfigError', message: 'PORT must be <= 65535' })
  t.throws(load({ COZE_API_URL: 'ftp://example' }), { message: 'COZE_API_URL must be an http(s) URL of Coze\'s token endpoint, such as https://api.coze.cn/api/permission/oauth2/token' }, 'the form, not the regex')
  t.throws(load({ COZE_API_URL: 'https://api.coze.com' }), { message: 'COZE_API_URL is an origin; it takes the token endpoint: https://api.coze.com/api/permission/oauth2/token' })
  t.throws(load({ COZE_API_URL: 'https://api.coze.com/' }), { message: /^COZE_API_URL is an origin/ })
  t.throws(load({ STATE_STORE: 'Redis' }), { message: 'STATE_STORE must be one of: memory, redis' })
  t.throws(load({ LOG_LEVEL: 'loud', STATE_STORE: 'disk' }), { message: 'LOG_LEVEL must be one of: fatal, error, warn, info, debug, trace, silent; STATE_STORE must be one of: memory, redis' })
  t.throws(load({ COZE_TIMEOUT_MS: 'soon' }), { message: 'COZE_TIMEOUT_MS must be integer' })
  // The destinations' settings: their forms, and what they need.
  const queue = { RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: 'A'.repeat(43) + '=' }
  t.throws(load({ ...queue, RESEND_HOST_LIMITS: 'open.feishu.cn=fast' }), { name: 'ConfigError', message: /^RESEND_HOST_LIMITS: invalid entry "open.feishu.cn=fast": write ENTRY=N\/s/ })
  t.throws(load({ RESEND_HOST_LIMITS: 'open.feishu.cn=50/s' }), { message: /^RESEND_HOST_LIMITS needs queued delivery \(RESEND_QUEUE=redis and RESEND_QUEUE_SECRET\)/ })
  t.throws(load({ ...queue, RESEND_HOST_LIMITS: 'open.feishu.cn=50/s', RESEND_DESTINATION_CONTROLS: 'off' }), { message: /RESEND_DESTINATION_CONTROLS=off: the limits would not hold/ })
  t.throws(load({ RESEND_ALERT_WEBHOOK: 'https://open.feishu.cn/open-apis/bot/v2/hook/x' }), { message: /^RESEND_ALERT_WEBHOOK needs queued delivery/ })
  t.throws(load({ ...queue, RESEND_ALERT_WEBHOOK: 'open.feishu.cn/hook' }), { message: /^RESEND_ALERT_WEBHOOK must be an http\(s\) URL of a custom bot's webhook/ })
  t.doesNotThrow(load({ ...queue, RESEND_HOST_LIMITS: 'open.feishu.cn=50/s,*=100/s', RESEND_ALERT_WEBHOOK: 'https://open.feishu.cn/open-apis/bot/v2/hook/x' }))
  t.doesNotThrow(load({ ROUTES: 'token', RESEND_HOST_LIMITS: 'open.feishu.cn=50/s' }), 'an instance without /resend does not mind')

  const start = async (config: Record<string, unknown>) => {
    const server = Fastify(serverOptions({ logStream: new LogCapture() }))
    await server.register(fp(app), loadConfig({ overrides: config, env: false }))
    t.teardown(async () => await server.close())
    await server.ready()
  }
  await t.rejects(start({ JWT_PRIVATE_KEY: '-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----' }), /JWT_PRIVATE_KEY is not a readable PEM/)
  await t.rejects(start({ JWT_PRIVATE_KEY_FILE: '/nonexistent/key.pem' }), /JWT_PRIVATE_KEY_FILE \(\/nonexistent\/key\.pem\) cannot be read \(ENOENT\)/)
})

t.test('a variable one edit from a known one is warned about at start', async (t) => {
  t.equal(didYouMean('JWT_PRIVATE_KEY_PATH'), 'JWT_PRIVATE_KEY_FILE')
  t.equal(didYouMean('REDIS_URI'), 'REDIS_URL')
  t.equal(didYouMean('COZE_APPID'), 'COZE_APP_ID')
  for (const unrelated of ['PATH', 'HOME', 'HOSTNAME', 'NODE_ENV', 'npm_config_cache', 'REDIS_URL', 'AWS_REGION', 'ECS_CONTAINER_METADATA_URI_V4']) t.equal(didYouMean(unrelated), undefined, unrelated)
  const { logs } = await build(t, { JWT_PRIVATE_KEY_PATH: '/run/secrets/key.pem' } as Record<string, unknown>)
  t.ok(logs.records().some((line) => line.level === 40 && line.msg === 'JWT_PRIVATE_KEY_PATH is not a variable of this service: did you mean JWT_PRIVATE_KEY_FILE?'))
})

t.test('the environment and .env are read when the server asks for it; the environment wins', async (t) => {
  const dir = await tempDir(t, 'aibill-env-')
  await writeFile(join(dir, '.env'), 'COZE_TIMEOUT_MS=4321\nRESEND_TIMEOUT_MS=1234\n')
  const { config } = loadConfig({ env: { RESEND_TIMEOUT_MS: '2345' }, dotenvPath: join(dir, '.env') })
  t.equal(config.COZE_TIMEOUT_MS, 4321)
  t.equal(config.RESEND_TIMEOUT_MS, 2345)
})

t.test('server options: pretty logs only on a terminal, and never in tests', async (t) => {
  const tty = Object.getOwnPropertyDescriptor(process.stdout, 'isTTY')
  t.teardown(() => { if (tty === undefined) delete (process.stdout as { isTTY?: boolean }).isTTY; else Object.defineProperty(process.stdout, 'isTTY', tty) })
  Object.defineProperty(process.stdout, 'isTTY', { value: true, configurable: true })
  t.match(serverOptions().logger, { transport: { target: /pino-pretty/ } })
  Object.defineProperty(process.stdout, 'isTTY', { value: false, configurable: true })
  t.notOk('transport' in (serverOptions().logger as object))
})

t.test('a route may replace the details of a validation failure', async (t) => {
  const issue = { instancePath: '', keyword: 'required', params: { missingProperty: 'code' }, message: 'x' }
  const err = Object.assign(new Error('invalid'), { validation: [issue], validationContext: 'body', code: 'FST_ERR_VALIDATION' }) as unknown as FastifyError
  t.same(toServiceError(err, { field: 'body', reason: 'code, state are required' }).details, { field: 'body', reason: 'code, state are required' })
  t.match(toServiceError(err), { details: { field: 'code', reason: 'code is required' } })
})

t.test('.env.example lists exactly the variables of the configuration schema, with their defaults commented out', async (t) => {
  const example = await readFile(new URL('../.env.example', import.meta.url), 'utf8')
  const lines = example.split('\n').map((line) => /^(# )?([A-Z][A-Z0-9_]*)=(.*)$/.exec(line)).filter((match) => match !== null)
  const listed = new Map(lines.map((match) => [match[2] as string, match[3] as string]))
  t.same([...listed.keys()].sort(), [...Object.keys(ConfigSchema.properties), ...Object.keys(TRACING_VARIABLES)].sort(), 'the schema\'s, and the OpenTelemetry SDK\'s it documents')
  for (const [name, schema] of Object.entries(ConfigSchema.properties) as Array<[string, { default?: unknown }]>) {
    t.equal(listed.get(name), schema.default === undefined ? '' : String(schema.default), `${name}: the documented default`)
  }
  for (const [name, value] of Object.entries(TRACING_VARIABLES)) t.equal(listed.get(name), value, `${name}: the documented default`)
  const set = lines.filter((match) => match[1] === undefined)
  t.same(set.filter((match) => match[3] !== ''), [], 'only empty secrets are left uncommented: a copy sets no default explicitly')

  // A copy of it works as it is, in both modes: one app, and the apps document (which refuses single-app variables).
  const env = parseEnv(example)
  t.doesNotThrow(() => loadConfig({ env, dotenvPath: '/nonexistent' }))
  const document = {
    apps: { bills: { app_id: '1150000000001', api_base: 'https://api.coze.cn', keys: [{ kid: 'fp-1', private_key_env: 'BILLS_KEY' }] } },
    callers: { shortcuts: { key_env: 'SHORTCUTS_KEY', apps: ['bills'] } }
  }
  const broker = loadConfig({ env: { ...env, COZE_APPS: JSON.stringify(document), BILLS_KEY: testKeys().pkcs8, SHORTCUTS_KEY: 'a-caller-key-0123456789' }, dotenvPath: '/nonexistent' })
  t.equal(broker.broker?.apps[0]?.name, 'bills', 'the broker starts from a copy of .env.example')
})

t.test('the README and docs/configuration.md name every variable of the configuration schema, and of tracing', async (t) => {
  for (const file of ['../README.md', '../docs/configuration.md']) {
    const text = await readFile(new URL(file, import.meta.url), 'utf8')
    const missing = [...Object.keys(ConfigSchema.properties), ...Object.keys(TRACING_VARIABLES)].filter((name) => !new RegExp(`\`${name}\``).test(text))
    t.same(missing, [], `${file} names every variable`)
  }
})

t.test('an empty variable is an unset one, every variable: a .env with all of them present and empty starts on the defaults', async (t) => {
  const dir = await tempDir(t, 'aibill-empty-env-')
  const names = Object.keys(ConfigSchema.properties)
  await writeFile(join(dir, '.env'), names.map((name) => `${name}=`).join('\n'))
  const { config, broker, feishuApps } = loadConfig({ env: {}, dotenvPath: join(dir, '.env') })
  const defaults = loadConfig({ env: false }).config
  t.same(config, defaults, 'every value the default')
  t.same([broker, feishuApps], [null, []])
  // The newcomer's case: COZE_API_URL= left from the quick start, and an empty variable in the environment
  // leaves .env's value in place.
  await writeFile(join(dir, '.env'), 'COZE_API_URL=\nCOZE_APP_ID=1150000000001\nPORT=9100\n')
  const mixed = loadConfig({ env: { PORT: '', COZE_APP_ID: '' }, dotenvPath: join(dir, '.env') }).config
  t.same([mixed.COZE_API_URL, mixed.COZE_APP_ID, mixed.PORT], ['https://api.coze.cn/api/permission/oauth2/token', '1150000000001', 9100])
})
