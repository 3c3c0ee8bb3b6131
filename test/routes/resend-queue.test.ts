import { randomBytes, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { API_KEY, REDIS_URL, build, registerSecret, sendJson, skipWithoutRedis, startUpstream, type Upstream, type UpstreamHandler } from '../helper.js'

const skip = await skipWithoutRedis()
const SECRET = randomBytes(32).toString('base64')
registerSecret(SECRET)

/** A key prefix of the test's own, its keys removed at the end. */
function prefixFor (t: Test): string {
  const prefix = `test-queue-${randomBytes(4).toString('hex')}:`
  t.teardown(async () => {
    const redis = new Redis(REDIS_URL)
    for (const pattern of [`${prefix}*`, `{${prefix}resend}*`]) {
      const keys = await redis.keys(pattern)
      if (keys.length > 0) await redis.del(...keys)
    }
    redis.disconnect()
  })
  return prefix
}

async function queued (t: Test, handler: UpstreamHandler, config: Record<string, unknown> = {}) {
  const upstream = await startUpstream(t, handler)
  const { app, logs } = await build(t, {
    EXPECTED_COZE_API_KEY: API_KEY,
    RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}`,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL,
    REDIS_KEY_PREFIX: prefixFor(t),
    RESEND_RETRY_SCHEDULE: '50ms',
    ...config
  })
  const call = async (method: 'GET' | 'POST' | 'DELETE', url: string, payload?: unknown, headers: Record<string, string> = {}) =>
    await app.inject({ method, url, headers: { 'x-api-key': API_KEY, ...headers }, ...(payload === undefined ? {} : { payload: payload as object }) })
  /** Polls the job until it reaches `status` (or 10 s pass). */
  const until = async (id: string, status: string) => {
    let data: Record<string, unknown> = {}
    for (let i = 0; i < 200; i++) {
      data = (await call('GET', `/resend/jobs/${id}`)).json().data
      if (data.status === status) return data
      await sleep(50)
    }
    return data
  }
  return { app, logs, upstream, call, until }
}

const at = (upstream: Upstream, path: string): string => `${upstream.url}${path}`

t.test('queued delivery: 202 with a job, delivered through 503s and resets, once', { skip }, async (t) => {
  let calls = 0
  const { call, until, upstream, logs } = await queued(t, (request, res) => {
    calls++
    if (calls === 1) { res.destroy(); return }
    if (calls <= 3) { sendJson(res, 503, { busy: true }); return }
    sendJson(res, 200, { code: 0, data: { id: 12345678901234567890n.toString() } })
  })
  const res = await call('POST', '/resend', { location: at(upstream, '/records'), params: { a: 1 }, delivery: 'queued' })
  t.equal(res.statusCode, 202)
  const { id, status, status_url: statusUrl } = res.json().data
  t.equal(status, 'queued')
  t.equal(res.headers.location, statusUrl)
  t.equal(res.headers['preference-applied'], 'respond-async')
  t.match(id, /^[0-9a-f-]{36}$/)
  const done = await until(id, 'delivered')
  t.equal(done.status, 'delivered')
  t.equal(done.attempts, 4)
  t.same((done.answer as { status: number }).status, 200)
  t.equal((done.last_attempt as { status: number }).status, 200)
  t.equal(upstream.requests.length, 4)
  t.ok(upstream.requests.every((request) => request.headers['idempotency-key'] === id), 'every attempt carries the job id as Idempotency-Key')
  t.ok(upstream.requests.every((request) => request.body === '{"a":1}'))
  t.notOk(logs.text.includes(SECRET))
})

t.test('Prefer: respond-async queues; Idempotency-Key gives the same job, or 422 with another body', { skip }, async (t) => {
  const { call, upstream } = await queued(t, (_request, res) => { sendJson(res, 200, { ok: true }) })
  const body = { location: at(upstream, '/x'), params: { n: 1 } }
  const first = await call('POST', '/resend', body, { prefer: 'respond-async, wait=5', 'idempotency-key': 'order-1' })
  t.equal(first.statusCode, 202)
  const again = await call('POST', '/resend', body, { prefer: 'respond-async', 'idempotency-key': 'order-1' })
  t.equal(again.statusCode, 202)
  t.equal(again.json().data.id, first.json().data.id)
  t.equal(again.headers['idempotent-replayed'], 'true')
  const other = await call('POST', '/resend', { ...body, params: { n: 2 } }, { prefer: 'respond-async', 'idempotency-key': 'order-1' })
  t.equal(other.statusCode, 422)
  t.equal(other.json().data.error, 'IDEMPOTENCY_KEY_REUSED')
  const now = await call('POST', '/resend', body, { prefer: 'return=minimal' })
  t.equal(now.statusCode, 200, 'any other preference is delivery now')
})

t.test('a 4xx fails the job at once with the answer kept; retry puts it back; 409 otherwise', { skip }, async (t) => {
  let refuse = true
  const { call, until, upstream } = await queued(t, (_request, res) => {
    if (refuse) sendJson(res, 403, { code: 91403, msg: 'forbidden' })
    else sendJson(res, 200, { code: 0 })
  })
  const { id } = (await call('POST', '/resend', { location: at(upstream, '/y'), params: {}, delivery: 'queued' })).json().data
  const failed = await until(id, 'failed')
  t.equal(failed.attempts, 1)
  t.same(failed.answer, { status: 403, body: { code: 91403, msg: 'forbidden' } })
  t.same((await call('DELETE', `/resend/jobs/${id}`)).json().data.status, 'failed', '409 names the status')
  t.equal((await call('DELETE', `/resend/jobs/${id}`)).statusCode, 409)
  const listed = await call('GET', '/resend/jobs?status=failed&limit=5')
  t.equal(listed.statusCode, 200, listed.body)
  const list = listed.json().data.jobs
  t.same(list.map((job: { id: string }) => job.id), [id])
  refuse = false
  const retried = await call('POST', `/resend/jobs/${id}/retry`)
  t.equal(retried.statusCode, 200)
  t.equal((await until(id, 'delivered')).status, 'delivered')
  const replay = await call('POST', `/resend/jobs/${id}/retry`)
  t.equal(replay.statusCode, 409, 'a delivered job is not replayed')
  t.equal(replay.json().data.status, 'delivered')
  t.equal(upstream.requests.length, 2)
})

t.test('bad input is answered before anything is stored', { skip }, async (t) => {
  const { call, upstream, app } = await queued(t, (_request, res) => { sendJson(res, 200, {}) })
  const refused = await call('POST', '/resend', { location: 'https://elsewhere.example/x', params: {}, delivery: 'queued' })
  t.equal(refused.statusCode, 403)
  const command = await call('POST', '/resend', { location: at(upstream, '/x'), params: { a: 1 }, commands: { json_parse: ['$.params.a'] }, delivery: 'queued' })
  t.equal(command.statusCode, 400)
  t.equal((await call('GET', '/resend/jobs/not-a-job')).statusCode, 400)
  t.equal((await call('GET', `/resend/jobs/${randomUUID()}`)).statusCode, 404)
  t.equal((await call('POST', `/resend/jobs/${randomUUID()}/retry`)).statusCode, 404)
  const unauthorized = await app.inject({ method: 'GET', url: `/resend/jobs/${randomUUID()}` })
  t.equal(unauthorized.statusCode, 401)
  t.equal((await call('GET', '/resend/jobs')).json().data.jobs.length, 0, 'nothing was stored')
  t.equal(upstream.requests.length, 0)
})

t.test('without RESEND_QUEUE_SECRET, queued delivery is 503 naming it and /ready says so', async (t) => {
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, 200, {}) })
  const { app } = await build(t, { ROUTES: 'resend', EXPECTED_COZE_API_KEY: API_KEY, RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${upstream.port}` })
  const res = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${upstream.url}/x`, params: {}, delivery: 'queued' } })
  t.equal(res.statusCode, 503)
  t.equal(res.json().data.error, 'NOT_CONFIGURED')
  t.same(res.json().data.missing, ['RESEND_QUEUE=redis', 'RESEND_QUEUE_SECRET'])
  const ready = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 200, ready.body)
  t.match(ready.json().data.checks.resend_queue, /^off: RESEND_QUEUE=redis, RESEND_QUEUE_SECRET/)
  t.equal(upstream.requests.length, 0)
})
