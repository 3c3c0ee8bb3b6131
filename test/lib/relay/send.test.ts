import t from 'tap'
import { createJsonPathPool } from '../../../src/lib/relay/json-path-pool.js'
import { outgoingHeaders } from '../../../src/lib/relay/request.js'
import { backoffMillis, createRelay, isRetryableTransportError, retryAfterMillis } from '../../../src/lib/relay/send.js'
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
