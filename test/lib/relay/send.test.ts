import t from 'tap'
import { createJsonPathPool } from '../../../src/lib/relay/json-path-pool.js'
import { outgoingHeaders } from '../../../src/lib/relay/request.js'
import { attemptOutcome, backoffMillis, createRelay, isRetryableTransportError, type RelayAnswer, retryAfterMillis } from '../../../src/lib/relay/send.js'
import { ServiceError } from '../../../src/lib/http/errors.js'
import { parseAllowList } from '../../../src/lib/http/upstream-policy.js'
import { sendJson, startUpstream } from '../../helper.js'
import { TEST_WORKER_HEAP_MB } from '../../fixtures/worker-heap.js'

t.test('relay helpers: headers, Retry-After, back-off, retryable errors', async (t) => {
  t.same(outgoingHeaders({ Authorization: 'Bearer x', Host: 'h', 'Keep-Alive': '1', 'Content-Type': 'text/plain' }, true), { authorization: 'Bearer x', 'content-type': 'text/plain', 'user-agent': 'aibill-token-service/1.0.0' })
  t.same(outgoingHeaders(undefined, true), { 'content-type': 'application/json; charset=utf-8', 'user-agent': 'aibill-token-service/1.0.0' })
  t.same(outgoingHeaders(undefined, false), { 'user-agent': 'aibill-token-service/1.0.0' })
  const now = Date.parse('2026-01-01T00:00:00Z')
  t.equal(retryAfterMillis('3', now), 3000)
  t.equal(retryAfterMillis(['120'], now), 10_000, 'capped at 10 s')
  t.equal(retryAfterMillis('Thu, 01 Jan 2026 00:00:02 GMT', now), 2000)
  t.equal(retryAfterMillis('Wed, 31 Dec 2025 00:00:00 GMT', now), 0)
  t.equal(retryAfterMillis('soon', now), undefined)
  t.equal(retryAfterMillis('', now), undefined)
  t.equal(retryAfterMillis(undefined, now), undefined)
  for (let attempt = 1; attempt <= 8; attempt++) {
    const delay = backoffMillis(attempt)
    t.ok(delay >= 125 * 2 ** (attempt - 1) || delay === 10_000 || delay >= 5000, `attempt ${attempt}: ${delay}`)
    t.ok(delay <= 10_000)
  }
  t.ok(isRetryableTransportError({ code: 'ECONNREFUSED' }))
  t.ok(isRetryableTransportError({ cause: { code: 'ECONNRESET' } }))
  t.notOk(isRetryableTransportError({ code: 'UND_ERR_HEADERS_TIMEOUT' }))
})

t.test('the relay alone: POST and one attempt by default, the trace beside the answer, the trace on the error', async (t) => {
  const upstream = await startUpstream(t, (req, res) => { sendJson(res, req.url === '/fail' ? 500 : 200, { method: req.method, body: req.body }) })
  const outcomes: Array<[string, number]> = []
  const jsonPath = createJsonPathPool({ workers: 1, timeoutMs: 2000, memoryMb: TEST_WORKER_HEAP_MB, maxQueue: 8, maxDepth: 64 })
  t.teardown(async () => { await jsonPath.close() })
  const relay = createRelay({
    jsonPath,
    allowList: parseAllowList('TEST', `http://127.0.0.1:${upstream.port}`),
    timeoutMs: 2000,
    maxResponseBytes: 1024,
    maxDepth: 64,
    onOutcome: (outcome, attempts) => { outcomes.push([outcome, attempts]) }
  })
  t.teardown(async () => { await relay.close() })
  const { answer, trace } = await relay.send(await relay.prepare({ location: `${upstream.url}/ok`, params: { a: 1 } }))
  t.same(answer, { status: 200, body: { method: 'POST', body: '{"a":1}' }, attempts: 1 })
  t.match(trace, { destination: '127.0.0.1/ok', upstream_method: 'POST', upstream_status: 200, attempts: 1, upstream_ms: Number })
  const failed = await relay.send(await relay.prepare({ location: `${upstream.url}/fail` })).then(() => undefined, (err: unknown) => err)
  t.match(failed, { code: 'UPSTREAM_ERROR', details: { status: 500, attempts: 1 }, logFields: { destination: '127.0.0.1/fail', upstream_status: 500 } })
  t.same(outcomes, [['success', 1], ['upstream_error', 1]])
})

t.test('attemptOutcome: how an attempt counts for its host, and the pauses it asks for', async (t) => {
  const answer = (status: number, body: unknown = {}): RelayAnswer => ({ status, body, attempts: 1 })
  const now = 1_000_000
  t.same(attemptOutcome({ answer: answer(200) }, false, now), { kind: 'ok', pauseUntil: undefined })
  t.same(attemptOutcome({ answer: answer(404) }, false, now), { kind: 'ok', pauseUntil: undefined }, 'a 4xx is an answer: the host is up')
  t.same(attemptOutcome({ answer: answer(502) }, false, now), { kind: 'failed', error: 'status_502', pauseUntil: undefined })
  t.same(attemptOutcome({ answer: answer(429), askedRetryInMs: 5000 }, false, now), { kind: 'ok', pauseUntil: now + 5000 }, 'a 429 that says when pauses the host')
  t.same(attemptOutcome({ answer: answer(429) }, false, now), { kind: 'ok', pauseUntil: undefined }, 'one that does not, does not')
  t.same(attemptOutcome({ answer: answer(400, { code: 99991400 }) }, true, now), { kind: 'ok', pauseUntil: now + 1000 }, 'Feishu\'s limit without a reset: a second')
  t.same(attemptOutcome({ answer: answer(400, { code: 99991400 }), askedRetryInMs: 3000 }, true, now), { kind: 'ok', pauseUntil: now + 3000 })
  t.same(attemptOutcome({ answer: answer(400, { code: 99991400 }) }, false, now), { kind: 'ok', pauseUntil: undefined }, 'not from Feishu: just a body')
  t.same(attemptOutcome({ failure: new ServiceError('UPSTREAM_TIMEOUT'), connectionFailed: false }, false, now), { kind: 'failed', error: 'UPSTREAM_TIMEOUT' })
  t.same(attemptOutcome({ failure: new ServiceError('FEISHU_TOKEN_FAILED'), connectionFailed: false }, true, now), { kind: 'none' }, 'nothing reached the host')
})
