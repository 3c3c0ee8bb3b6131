import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { privateResolver, SSRF_TRICKS } from '../fixtures/ssrf.js'
import { API_KEY, build, sendJson, startUpstream, type UpstreamHandler } from '../helper.js'

const FEISHU_PATH = '/open-apis/bitable/v1/apps/DC1sb1XABavEDfszxSpcyEtankg/tables/tbl5kDOiahgZrtCO/records/batch_create'
const FIELDS = '{"收支类型":"支出","款项金额":14.91,"消费类型":"交通","流水说明":"财付通-滴滴出行","日期时间":1745809165,"收入方":"滴滴出行","支出方":"用户","备注":""}'

const ok: UpstreamHandler = (_req, res) => { sendJson(res, 200, { code: 0, msg: 'success', data: { records: [] } }) }

async function setup (t: Test, handler: UpstreamHandler = ok, config: Record<string, unknown> = {}) {
  const upstream = await startUpstream(t, handler)
  const built = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `open.feishu.cn,http://127.0.0.1:${upstream.port}`, ...config }, { resolver: privateResolver })
  const resend = async (body: Record<string, unknown>, headers: Record<string, string> = { 'x-api-key': API_KEY }) =>
    await built.app.inject({ method: 'POST', url: '/resend', headers, payload: body })
  return { ...built, upstream, resend, location: `${upstream.url}${FEISHU_PATH}` }
}

t.test('the seed example: parsed fields arrive as objects, body headers go, incoming headers do not', async (t) => {
  const { upstream, resend, location, logs } = await setup(t)
  const res = await resend({
    location,
    headers: { Authorization: 'Bearer t-secret-feishu-token', 'X-Trace': 'abc', Host: 'evil.example', Connection: 'close', 'Content-Length': '3', 'Transfer-Encoding': 'chunked' },
    params: { records: [{ fields: FIELDS }, { fields: FIELDS }] },
    commands: { json_parse: ['$.params.records[*].fields', '$.params.records[0].fields'] },
    coze_api_key: 'not-forwarded'
  }, { 'x-api-key': API_KEY, cookie: 'session=incoming', 'x-forwarded-for': '203.0.113.9', 'content-type': 'application/json' })

  t.equal(res.statusCode, 200)
  const paths = ["$['params']['records'][0]['fields']", "$['params']['records'][1]['fields']"]
  t.same(res.json(), {
    success: true,
    data: {
      status: 200,
      body: { code: 0, msg: 'success', data: { records: [] } },
      attempts: 1,
      commands: { json_parse: [{ expression: '$.params.records[*].fields', parsed: 2, paths }, { expression: '$.params.records[0].fields', parsed: 0, paths: [] }] }
    },
    message: '重发成功'
  }, 'a location the first expression parsed is not parsed again')
  t.equal(upstream.requests.length, 1)
  const sent = upstream.requests[0]
  t.equal(sent?.method, 'POST')
  t.equal(sent?.url, FEISHU_PATH)
  const body = JSON.parse(sent?.body ?? '')
  t.same(body, { records: [{ fields: JSON.parse(FIELDS) }, { fields: JSON.parse(FIELDS) }] }, 'the fields are objects now')
  t.equal(sent?.headers.authorization, 'Bearer t-secret-feishu-token')
  t.equal(sent?.headers['x-trace'], 'abc')
  t.equal(sent?.headers.host, `127.0.0.1:${upstream.port}`, 'Host from the body is dropped')
  t.match(sent?.headers['content-type'], /^application\/json/)
  t.equal(sent?.headers['content-length'], String(Buffer.byteLength(sent?.body ?? '')))
  for (const incoming of ['cookie', 'x-forwarded-for', 'x-api-key', 'transfer-encoding']) t.notOk(incoming in (sent?.headers ?? {}), `${incoming} is not forwarded`)
  t.notOk((sent?.body ?? '').includes('not-forwarded'), 'coze_api_key is not forwarded')

  const line = logs.records().find((record) => record.msg === 'request completed' && record.route === '/resend')
  t.match(line, { destination: `127.0.0.1${FEISHU_PATH}`, upstream_method: 'POST', upstream_status: 200, attempts: 1, upstream_ms: Number, statusCode: 200 })
  for (const secret of ['t-secret-feishu-token', '滴滴出行', API_KEY, 'session=incoming']) t.notOk(logs.text.includes(secret), 'no header values or params in the logs')
})

t.test('methods, non-JSON answers, and a name allowed by an explicit origin', async (t) => {
  const { upstream, resend, location } = await setup(t, (req, res) => {
    if (req.method === 'DELETE') { res.writeHead(204); res.end(); return }
    res.writeHead(200, { 'content-type': req.method === 'GET' ? 'text/plain' : 'application/json' })
    res.end(req.method === 'GET' ? 'plain text' : '{"broken json')
  })
  const get = await resend({ location: `${location}?page=2`, method: 'GET', params: { ignored: true }, coze_api_key: API_KEY }, {})
  t.same(get.json().data, { status: 200, body: 'plain text', attempts: 1 }, 'the key may come in the body')
  t.equal(upstream.requests[0]?.body, '', 'GET sends no body')
  t.equal(upstream.requests[0]?.url, `${FEISHU_PATH}?page=2`)
  t.same((await resend({ location, method: 'PUT', params: [1, 2] })).json().data, { status: 200, body: '{"broken json', attempts: 1 })
  t.equal(upstream.requests[1]?.body, '[1,2]')
  t.same((await resend({ location, method: 'DELETE' })).json().data, { status: 204, body: '', attempts: 1 })

  const named = await startUpstream(t, ok)
  const viaName = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://feishu.test:${named.port}` }, { resolver: privateResolver })
  const res = await viaName.app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `http://feishu.test:${named.port}/x`, params: {} } })
  t.equal(res.statusCode, 200, 'an entry naming its exact host may reach a private address')
  t.equal(named.requests[0]?.headers.host, `feishu.test:${named.port}`)
})

t.test('upstream errors are 502 UPSTREAM_ERROR with the same fields; redirects are not followed', async (t) => {
  const target = await startUpstream(t, ok)
  const { upstream, resend, location } = await setup(t, (req, res) => {
    if (req.url.endsWith('/redirect')) { res.writeHead(302, { location: `${target.url}/internal` }); res.end(); return }
    sendJson(res, 400, { code: 1254001, msg: 'WrongRequestBody' })
  })
  const bad = await resend({ location, params: {} }, { 'x-api-key': API_KEY, 'accept-language': 'en' })
  t.equal(bad.statusCode, 502)
  t.same(bad.json(), { success: false, data: { error: 'UPSTREAM_ERROR', status: 400, body: { code: 1254001, msg: 'WrongRequestBody' }, attempts: 1 }, message: 'The upstream service answered with an error: HTTP 400' })
  const redirect = await resend({ location: `${upstream.url}/redirect`, params: {} })
  t.equal(redirect.statusCode, 502)
  t.match(redirect.json().data, { error: 'UPSTREAM_ERROR', status: 302 })
  t.equal(target.requests.length, 0, 'the redirect target was never contacted')
})

t.test('who may use it: a key in X-API-Key or coze_api_key, else 401; none configured, 503', async (t) => {
  const { upstream, resend, location } = await setup(t)
  t.equal((await resend({ location }, {})).statusCode, 401)
  t.equal((await resend({ location }, { 'x-api-key': 'wrong' })).statusCode, 401)
  t.equal((await resend({ location, coze_api_key: 'wrong' }, {})).statusCode, 401)
  t.same((await resend({ location }, {})).json(), { success: false, data: { error: 'UNAUTHORIZED' }, message: 'API 密钥无效或缺失' })
  const open = await build(t, { RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}` })
  const res = await open.app.inject({ method: 'POST', url: '/resend', payload: { location } })
  t.equal(res.statusCode, 503)
  t.same(res.json().data, { error: 'NOT_CONFIGURED', missing: 'EXPECTED_COZE_API_KEY' })
  t.equal(upstream.requests.length, 0)
})

t.test('commands speak RFC 9535: filters, slices, unions and functions over { params }', async (t) => {
  const { upstream, resend, location } = await setup(t)
  const params = { records: [{ type: 'income', fields: FIELDS }, { type: 'spend', fields: '{"a":1}' }, { type: 'spend', fields: '{"b":2}' }] }
  const expressions = [
    '$.params.records[?length(@.fields) > 5 && match(@.type, "sp.*")].fields',
    "$.params.records[?@.type=='income'].fields",
    '$.params.records[1:2].fields',
    '$..records[2,0].fields'
  ]
  const res = await resend({ location, params, commands: { json_parse: expressions } })
  t.equal(res.statusCode, 200, res.body)
  t.same(res.json().data.commands.json_parse.map((entry: { parsed: number }) => entry.parsed), [2, 1, 0, 0], 'what an earlier expression parsed is not parsed again')
  t.same(JSON.parse(upstream.requests[0]?.body ?? ''), { records: [{ type: 'income', fields: JSON.parse(FIELDS) }, { type: 'spend', fields: { a: 1 } }, { type: 'spend', fields: { b: 2 } }] })
  const onlyObjects = await resend({ location, params: { records: [{ a: 1 }] }, commands: { json_parse: ['$.params.records[*]'] } })
  t.same([onlyObjects.statusCode, onlyObjects.json().data.reason], [400, 'matched 1 value(s), none of them a string: json_parse parses strings that hold JSON (point the expression at those strings)'], 'a match of no string is a 400 that says so')
  t.equal(upstream.requests.length, 1)
})

t.test('an answer of a few hundred KB comes back whole', async (t) => {
  const records = Array.from({ length: 2000 }, (_, i) => ({ record_id: `rec${i}`, fields: { 说明: '一二三四五六七八九十'.repeat(2) } }))
  const { resend, location } = await setup(t, (_req, res) => { sendJson(res, 200, { code: 0, data: { records } }) })
  const res = await resend({ location, params: {} })
  t.equal(res.statusCode, 200)
  t.ok(res.body.length > 80_000 && Buffer.byteLength(res.body) < 256 * 1024, `${Buffer.byteLength(res.body)} bytes`)
  t.same(res.json().data.body.data.records.length, 2000)
})

t.test('numbers pass through exactly, both ways: ids beyond 2^53 and exponents a double cannot hold', async (t) => {
  const answer = '{"code":0,"data":{"record_id":98765432109876543210,"big":1e400}}'
  const { upstream, app, location } = await setup(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(answer)
  })
  const send = async (payload: string) => await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' }, payload })
  const plain = await send(`{"location":"${location}","params":{"id":12345678901234567891,"f":1e400,"x":0.5}}`)
  t.equal(plain.statusCode, 200, plain.body)
  t.equal(upstream.requests[0]?.body, '{"id":12345678901234567891,"f":1e400,"x":0.5}', 'the params as the caller wrote them')
  t.equal(plain.body, `{"success":true,"data":{"status":200,"body":${answer},"attempts":1},"message":"重发成功"}`, 'the answer as the destination wrote it')
  t.equal(plain.headers['content-type'], 'application/json; charset=utf-8', 'an answer spliced as raw JSON still says it is JSON')
  const parsed = await send(`{"location":"${location}","params":{"id":12345678901234567891,"fields":"{\\"n\\":12345678901234567892}"},"commands":{"json_parse":["$..fields"]}}`)
  t.equal(parsed.statusCode, 200, parsed.body)
  t.equal(upstream.requests[1]?.body, '{"id":12345678901234567891,"fields":{"n":12345678901234567892}}', 'a rewrite keeps them too')
})

t.test('commands: bad JSON, filters, scripts and unknown commands are 400 and nothing is sent', async (t) => {
  const { upstream, resend, location } = await setup(t)
  const notJson = await resend({ location, params: { records: [{ fields: FIELDS }, { fields: '{"a": 1,}' }] }, commands: { json_parse: ['$.params.records[*].fields'] } })
  t.equal(notJson.statusCode, 400)
  t.match(notJson.json(), {
    success: false,
    data: { error: 'COMMAND_FAILED', command: 'json_parse', expression: '$.params.records[*].fields', path: "$['params']['records'][1]['fields']", position: 8 },
    message: '命令执行失败: $.params.records[*].fields'
  })
  const cases: Array<[unknown, string, number?]> = [
    [['$..[?(@.fields'], 'COMMAND_FAILED', 5],
    [['$.params.records[(@.length-1)].fields'], 'COMMAND_FAILED', 17],
    [['$.params[?(@.constructor.constructor("return process")())]'], 'COMMAND_FAILED', 36],
    [Array.from({ length: 33 }, () => '$.params'), 'VALIDATION_FAILED'],
    [[''], 'VALIDATION_FAILED'],
    ['$.params', 'VALIDATION_FAILED']
  ]
  for (const [expressions, code, position] of cases) {
    const res = await resend({ location, params: { records: [] }, commands: { json_parse: expressions } })
    t.equal(res.statusCode, 400, JSON.stringify(expressions).slice(0, 60))
    t.equal(res.json().data.error, code)
    if (position !== undefined) t.equal(res.json().data.position, position)
  }
  const unparsable = await resend({ location: 'http://[', params: {} })
  t.same(unparsable.json().data, { error: 'VALIDATION_FAILED', field: 'location', reason: 'location must be an absolute http(s) URL' })
  const unknown = await resend({ location, commands: { eval_js: ['1+1'] } })
  t.equal(unknown.statusCode, 400)
  t.same(unknown.json().data, { error: 'VALIDATION_FAILED', field: 'commands.eval_js', reason: 'commands.eval_js is not an allowed field' })
  t.equal(upstream.requests.length, 0, 'nothing was sent')
})

t.test('DESTINATION_NOT_ALLOWED says which rule refused, and names RESEND_ALLOWED_HOSTS', async (t) => {
  const { app } = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: 'open.feishu.cn,*.internal.test,10.1.2.3' }, { resolver: privateResolver })
  const refusal = async (location: string) => (await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location, params: {} } })).json().data
  const variable = 'RESEND_ALLOWED_HOSTS'
  t.same(await refusal('https://example.com/x'), { error: 'DESTINATION_NOT_ALLOWED', reason: 'host', detail: 'the host is not in RESEND_ALLOWED_HOSTS', variable })
  t.match(await refusal('http://open.feishu.cn/x'), { reason: 'scheme', detail: /^only https/, variable })
  t.match(await refusal('https://open.feishu.cn:8443/x'), { reason: 'port', detail: /port is not allowed/, variable })
  t.match(await refusal('https://user:pw@open.feishu.cn/x'), { reason: 'userinfo', variable })
  t.match(await refusal('https://private.internal.test/x'), { reason: 'address', detail: /resolves to an address that is not public/, variable })
})

t.test('the SSRF corpus is refused under three allow-lists, and nothing reaches the recording server', async (t) => {
  const recorder = await startUpstream(t, ok)
  const lists = ['open.feishu.cn,open.larksuite.com', '*', '*.larksuite.com,*.feishu.cn']
  let refused = 0
  for (const list of lists) {
    const { app } = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: list }, { resolver: privateResolver })
    for (const trick of SSRF_TRICKS) {
      const location = trick.replaceAll('PORT', String(recorder.port))
      const res = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location, params: { a: 1 }, max_attempts: 3 } })
      const code = res.json().data.error
      const wasRefused = res.statusCode === 403 ? code === 'DESTINATION_NOT_ALLOWED' : res.statusCode === 400 && code === 'VALIDATION_FAILED'
      t.ok(wasRefused, `${list} ${location}: ${res.statusCode} ${code}`)
      if (wasRefused) refused += 1
    }
  }
  t.equal(refused, lists.length * SSRF_TRICKS.length, 'every trick under every list was refused')
  t.equal(recorder.requests.length, 0, 'no trick reached the recording server')
})

t.test('retries: only after refused/reset connections, 429 and 503, honouring Retry-After', async (t) => {
  let calls = 0
  const { resend, upstream } = await setup(t, (req, res) => {
    calls += 1
    if (req.url.startsWith('/flaky') && calls <= 2) { res.writeHead(calls === 1 ? 503 : 429, { 'retry-after': '0' }); res.end('busy'); return }
    if (req.url.startsWith('/reset') && calls === 1) { res.socket?.destroy(); return }
    if (req.url.startsWith('/busy') && calls === 1) { res.writeHead(503); res.end(); return }
    if (req.url.startsWith('/error')) { sendJson(res, 500, { msg: 'no' }); return }
    sendJson(res, 200, { code: 0 })
  })
  const flaky = await resend({ location: `${upstream.url}/flaky`, params: {}, max_attempts: 3 })
  t.same(flaky.json().data, { status: 200, body: { code: 0 }, attempts: 3 })
  calls = 0
  const once = await resend({ location: `${upstream.url}/flaky`, params: {} })
  t.equal(once.statusCode, 502)
  t.same(once.json().data, { error: 'UPSTREAM_ERROR', status: 503, body: 'busy', attempts: 1 }, 'no retry unless asked')
  calls = 0
  const reset = await resend({ location: `${upstream.url}/reset`, params: {}, max_attempts: 2 })
  t.same(reset.json().data, { status: 200, body: { code: 0 }, attempts: 2 })
  calls = 0
  const busy = await resend({ location: `${upstream.url}/busy`, params: {}, max_attempts: 2 })
  t.same(busy.json().data, { status: 200, body: { code: 0 }, attempts: 2 }, 'without Retry-After it backs off and tries again')
  calls = 0
  const error = await resend({ location: `${upstream.url}/error`, params: {}, max_attempts: 5 })
  t.same(error.json().data, { error: 'UPSTREAM_ERROR', status: 500, body: { msg: 'no' }, attempts: 1 }, 'a 500 is not retried')
  t.equal(calls, 1)
})

t.test('Feishu rate limits: 429 or 400 with code 99991400, waited out as x-ogw-ratelimit-reset says; other 4xx never retried', async (t) => {
  const seen: Array<{ path: string, at: number }> = []
  const { resend, upstream } = await setup(t, (req, res) => {
    const path = req.url.split('?')[0] as string
    const earlier = seen.filter((entry) => entry.path === path).length
    seen.push({ path, at: Date.now() })
    const limited = { 'x-ogw-ratelimit-limit': '50', 'x-ogw-ratelimit-reset': '1', 'content-type': 'application/json' }
    if (path === '/qps' && earlier === 0) { res.writeHead(429, limited); res.end('{"code":99991400,"msg":"request trigger frequency limit"}'); return }
    if (path === '/old-api' && earlier === 0) { res.writeHead(400, { ...limited, 'x-ogw-ratelimit-reset': '0' }); res.end('{"code":99991400,"msg":"request trigger frequency limit"}'); return }
    if (path === '/expired') { sendJson(res, 400, { code: 99991663, msg: 'Invalid access token for authorization' }); return }
    if (path === '/bad') { sendJson(res, 400, { code: 1254001, msg: 'WrongRequestBody' }); return }
    sendJson(res, 200, { code: 0, msg: 'success' })
  })
  const qps = await resend({ location: `${upstream.url}/qps`, params: {}, max_attempts: 3 })
  t.same(qps.json().data, { status: 200, body: { code: 0, msg: 'success' }, attempts: 2 })
  const [first, second] = seen.filter((entry) => entry.path === '/qps')
  t.ok((second?.at ?? 0) - (first?.at ?? 0) >= 900, 'waited the second x-ogw-ratelimit-reset asked for')

  const oldApi = await resend({ location: `${upstream.url}/old-api`, params: {}, max_attempts: 2 })
  t.same(oldApi.json().data, { status: 200, body: { code: 0, msg: 'success' }, attempts: 2 }, 'a 400 with code 99991400 is a rate limit')

  for (const path of ['/expired', '/bad']) {
    const res = await resend({ location: `${upstream.url}${path}`, params: {}, max_attempts: 5 })
    t.equal(res.statusCode, 502)
    t.match(res.json().data, { error: 'UPSTREAM_ERROR', status: 400, attempts: 1 }, `${path}: not retried`)
  }
  t.equal(seen.filter((entry) => entry.path === '/expired' || entry.path === '/bad').length, 2)
})

t.test('unreachable 502, slow 504, too large 502 — each promptly', async (t) => {
  const closed = await startUpstream(t, ok)
  closed.server.close()
  const refused = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${closed.port}` })
  const unreachable = await refused.app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${closed.url}/x`, max_attempts: 2 } })
  t.equal(unreachable.statusCode, 502)
  t.same(unreachable.json(), { success: false, data: { error: 'UPSTREAM_UNREACHABLE', origin: closed.url, cause: 'ECONNREFUSED', attempts: 2 }, message: '无法连接上游服务' })

  const { resend, upstream } = await setup(t, async (req, res) => {
    if (req.url === '/silent') return
    if (req.url === '/stall') { res.writeHead(200, { 'content-type': 'application/json' }); res.write('{"a":'); return }
    res.writeHead(200, { 'content-type': 'application/json' })
    res.write('[')
    for (let i = 0; i < 64 && !res.destroyed; i++) { res.write(`"${'x'.repeat(1024)}",`); await sleep(1) }
    res.end('0]')
  }, { RESEND_TIMEOUT_MS: 300, RESEND_MAX_RESPONSE_BYTES: 4096 })
  for (const path of ['/silent', '/stall']) {
    const started = Date.now()
    // A timeout is not retried, whatever max_attempts says: the destination may have applied the request.
    const slow = await resend({ location: `${upstream.url}${path}`, params: {}, max_attempts: 3 })
    t.equal(slow.statusCode, 504, path)
    t.same(slow.json().data, { error: 'UPSTREAM_TIMEOUT', origin: upstream.url, cause: 'timeout', attempts: 1 })
    t.ok(Date.now() - started < 1300)
  }
  const huge = await resend({ location: `${upstream.url}/huge`, params: {} })
  t.equal(huge.statusCode, 502)
  t.same(huge.json().data, { error: 'UPSTREAM_RESPONSE_TOO_LARGE', status: 200, limit: 4096, attempts: 1 })
})

t.test('an invalid allow-list entry stops the start naming RESEND_ALLOWED_HOSTS', async (t) => {
  await t.rejects(build(t, { RESEND_ALLOWED_HOSTS: 'open.feishu.cn,https://user@x.example' }), /RESEND_ALLOWED_HOSTS: invalid entry "https:\/\/user@x\.example"/)
})
