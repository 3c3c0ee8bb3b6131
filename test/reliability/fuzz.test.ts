import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import type { Response } from 'light-my-request'
import t, { type Test } from 'tap'
import { build, startUpstream } from '../helper.js'

const RUNS = Number(process.env.FUZZ_RUNS ?? 1000)
// A key no generator will produce: every well-formed request is still refused (401), never served.
const UNGUESSABLE_KEY = `fuzz-${'k'.repeat(40)}-${process.pid}`
const BODY_LIMIT = 64 * 1024

interface FuzzRequest {
  method: string
  headers: Record<string, string>
  payload?: string | Buffer
}

const ROUTE_FIELDS: Record<string, string[]> = {
  '/token': ['public_key', 'coze_api_key', 'duration_seconds', 'session_name'],
  '/resend': ['location', 'method', 'headers', 'params', 'commands', 'max_attempts', 'coze_api_key'],
  '/api/complete-auth': ['code', 'state', 'tenant_url']
}

const contentTypes = fc.constantFrom(
  'application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=x', 'application/xml', 'application/json; charset=latin1', ''
)

/** Bodies of every bad kind: wrong types, missing and extra fields, prototype keys, depth, size, bytes. */
function bodies (fields: string[]) {
  const field = fc.constantFrom(...fields, '__proto__', 'constructor', 'prototype', 'extra', '')
  const value = fc.oneof(
    fc.anything({ maxDepth: 3 }),
    fc.string({ maxLength: 64 }),
    fc.integer(),
    fc.constantFrom(null, true, [], {}, -1, 86400, 1e308, 'https://127.0.0.1/', 'http://[::1]/', '$..[?(@)]')
  )
  const objectText = fc.dictionary(field, value, { maxKeys: 8 }).map((object) => JSON.stringify(object))
  const prototypeText = fc.tuple(fc.constantFrom('__proto__', 'constructor'), fc.jsonValue({ maxDepth: 2 }))
    .map(([key, inner]) => `{"${key}": {"polluted": ${JSON.stringify(inner)}, "prototype": {"polluted": true}}}`)
  const deep = fc.integer({ min: 1_000, max: 30_000 }).map((depth) => `${'['.repeat(depth)}${']'.repeat(depth)}`)
  const deepObject = fc.integer({ min: 1_000, max: 20_000 }).map((depth) => `${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}`)
  const huge = fc.constantFrom(...fields).map((name) => JSON.stringify({ [name]: 'x'.repeat(BODY_LIMIT + 10) }))
  const longField = fc.tuple(fc.constantFrom(...fields), fc.integer({ min: 200, max: 20_000 })).map(([name, size]) => JSON.stringify({ [name]: 'y'.repeat(size) }))
  const broken = fc.string({ maxLength: 200 }).map((text) => `{"${text}`)
  const invalidUtf8 = fc.uint8Array({ minLength: 1, maxLength: 64 }).map((bytes) => Buffer.concat([Buffer.from('{"code": "'), Buffer.from([0xff, 0xfe, ...bytes]), Buffer.from('"}')]))
  return fc.oneof(
    { weight: 6, arbitrary: objectText },
    { weight: 2, arbitrary: fc.jsonValue().map((json) => JSON.stringify(json)) },
    { weight: 2, arbitrary: prototypeText },
    { weight: 2, arbitrary: broken },
    { weight: 2, arbitrary: invalidUtf8 },
    { weight: 1, arbitrary: deep },
    { weight: 1, arbitrary: deepObject },
    { weight: 1, arbitrary: huge },
    { weight: 1, arbitrary: longField }
  )
}

function requests (route: string): fc.Arbitrary<FuzzRequest> {
  const method = fc.oneof({ weight: 8, arbitrary: fc.constant(route === '/api/auth-url' ? 'GET' : 'POST') }, { weight: 2, arbitrary: fc.constantFrom('GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'POST') })
  if (route === '/api/auth-url') {
    return fc.record({
      method,
      headers: fc.constant({}),
      payload: fc.constant(undefined)
    }) as fc.Arbitrary<FuzzRequest>
  }
  return fc.record({
    method,
    headers: fc.record({ 'content-type': contentTypes, 'x-api-key': fc.oneof(fc.constant(''), fc.string({ maxLength: 40 })) }, { requiredKeys: ['content-type'] })
      .map((headers) => Object.fromEntries(Object.entries(headers).filter(([, value]) => value !== ''))),
    payload: bodies(ROUTE_FIELDS[route] as string[])
  })
}

const queries = fc.oneof(
  fc.constant(''),
  fc.string({ maxLength: 300 }).map((id) => `?user_id=${encodeURIComponent(id)}`),
  fc.constantFrom('?user_id=a&user_id=b', '?__proto__[x]=1', '?user_id=%ff%fe', '?constructor=1', `?user_id=${'z'.repeat(5000)}`)
)

function assertEnvelope (t: Test, res: Response, label: string): void {
  if (res.statusCode >= 500) t.fail(`${label}: ${res.statusCode} ${res.body.slice(0, 200)}`)
  if (res.statusCode === 204 || res.body === '') return
  const body = res.json() as { success?: unknown, data?: { error?: unknown }, message?: unknown }
  if (typeof body.success !== 'boolean' || typeof body.message !== 'string' || typeof body.data !== 'object') {
    t.fail(`${label}: not the envelope: ${res.body.slice(0, 200)}`)
  }
}


t.test(`${RUNS} generated bad requests per route: every answer a 4xx in the envelope, no 5xx, no pollution`, async (t) => {
  const recorder = await startUpstream(t, (_req, res) => { res.end('{}') })
  const { app } = await build(t, {
    EXPECTED_COZE_API_KEY: UNGUESSABLE_KEY,
    BODY_LIMIT_BYTES: BODY_LIMIT,
    RESEND_ALLOWED_HOSTS: `open.feishu.cn,http://127.0.0.1:${recorder.port}`
  })
  const prototypeKeys = Object.getOwnPropertyNames(Object.prototype).sort()
  const statuses = new Map<number, number>()
  const count = (status: number): void => { statuses.set(status, (statuses.get(status) ?? 0) + 1) }

  for (const route of ['/token', '/resend', '/api/complete-auth']) {
    let sent = 0
    await fc.assert(fc.asyncProperty(requests(route), async (request) => {
      const res = await (app as FastifyInstance).inject({ url: route, method: request.method as 'POST', headers: request.headers, payload: request.payload })
      sent++
      count(res.statusCode)
      assertEnvelope(t, res, `${request.method} ${route}`)
      // With an unguessable key and no known state, nothing can succeed: every answer is a 4xx.
      return res.statusCode >= 400 && res.statusCode < 500
    }), { numRuns: RUNS })
    t.equal(sent, RUNS, `${route}: ${sent} requests, each a 4xx`)
  }

  let sent = 0
  await fc.assert(fc.asyncProperty(fc.tuple(requests('/api/auth-url'), queries), async ([request, query]) => {
    const res = await (app as FastifyInstance).inject({ url: `/api/auth-url${query}`, method: request.method as 'GET' })
    sent++
    count(res.statusCode)
    assertEnvelope(t, res, `${request.method} /api/auth-url${query.slice(0, 40)}`)
    // A valid query is served; anything else is a 4xx. Never a 5xx.
    return res.statusCode < 500
  }), { numRuns: RUNS })
  t.equal(sent, RUNS, `/api/auth-url: ${sent} requests, none a 5xx`)

  t.equal(recorder.requests.length, 0, 'no generated request reached an upstream')
  t.same(Object.getOwnPropertyNames(Object.prototype).sort(), prototypeKeys, 'Object.prototype has no new property')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'and no polluted value')
  t.equal((await app.inject('/health')).statusCode, 200, 'the service answers /health after the run')
  t.notOk([...statuses.keys()].some((status) => status >= 500), `statuses seen: ${JSON.stringify(Object.fromEntries(statuses))}`)
})
