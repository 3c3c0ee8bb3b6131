import t, { type Test } from 'tap'
import { createJsonPathPool, type JsonPathPoolOptions } from '../../../src/lib/relay/json-path-pool.js'
import { TEST_WORKER_HEAP_MB } from '../../fixtures/worker-heap.js'

// A pattern that backtracks exponentially in a JavaScript RegExp: json-p3's search() on a long "aaa…b" runs for ever.
const SLOW = '$.params[?search(@, "(a|aa)+$")]'
const slowBody = JSON.stringify({ params: [`${'a'.repeat(40)}b`] })

function pool (t: Test, options: Partial<JsonPathPoolOptions> = {}) {
  const created = createJsonPathPool({ workers: 1, timeoutMs: 200, memoryMb: TEST_WORKER_HEAP_MB, maxQueue: 8, maxDepth: 64, plainOnEventLoop: false, ...options })
  t.teardown(async () => { await created.close() })
  return created
}

t.test('rewrites in a worker thread; a refusal there is 400 COMMAND_FAILED here, with its details', async (t) => {
  const jsonPath = pool(t)
  const done = await jsonPath.rewrite('{"params":{"a":"[1,2]"}}', ['$.params.a'])
  t.same(done, { body: '{"a":[1,2]}', report: [{ expression: '$.params.a', parsed: 1, paths: ["$['params']['a']"] }] })
  await t.rejects(jsonPath.rewrite('{"params":{}}', ['$.params[']), { code: 'COMMAND_FAILED', statusCode: 400, details: { command: 'json_parse', expression: '$.params[', position: 9 } })
})

t.test('JSONPATH_TIMEOUT_MS: an expression that runs too long is refused and its worker replaced', async (t) => {
  // (The deadline counts from the moment a worker starts the work: on a busy machine a worker's own start, under
  // the test loader, took 11 s. The refusal's reason says the deadline ended it, whatever the clock shows.)
  const jsonPath = pool(t, { timeoutMs: 150 })
  await t.rejects(jsonPath.rewrite(slowBody, [SLOW]), { code: 'COMMAND_FAILED', details: { reason: 'the expressions took longer than 150 ms (JSONPATH_TIMEOUT_MS)', limit: 150 } })
  t.same((await jsonPath.rewrite('{"params":["1"]}', ['$.params[0]'])).body, '[1]', 'a new worker serves the next request')
})

t.test('the heap of a worker is bounded: past it the request is refused', async (t) => {
  // (A worker loads the TypeScript loader under test, so its heap cannot be as small as in production.)
  const jsonPath = pool(t, { memoryMb: 48, timeoutMs: 20_000 })
  const wide = JSON.stringify({ params: Array.from({ length: 400_000 }, (_, i) => ({ id: i, name: `n${i}` })) })
  await t.rejects(jsonPath.rewrite(wide, ['$..name']), { code: 'COMMAND_FAILED', details: { reason: 'the expressions needed more than 48 MB', limit: 48 } })
  // (Whether a new worker then starts within 48 MB depends on the test loader and the Node version: the next test
  // covers a pool whose workers cannot start.)
})

t.test('a full queue is 503 at once; the deadline counts from the start of the work, not the wait', async (t) => {
  const jsonPath = pool(t, { maxQueue: 1, timeoutMs: 300 })
  await jsonPath.rewrite('{"params":["0"]}', ['$.params[0]'])
  const results = await Promise.allSettled([
    jsonPath.rewrite(slowBody, [SLOW]),
    ...[1, 2, 3, 4, 5].map(async (n) => await jsonPath.rewrite(`{"params":["${n}"]}`, ['$.params[0]']))
  ])
  t.match(results[0], { status: 'rejected', reason: { code: 'COMMAND_FAILED', details: { limit: 300 } } })
  t.match(results[1], { status: 'fulfilled', value: { body: '[1]' } }, 'it waited 300 ms in the queue and still had its own 300 ms')
  const refused = results.filter((result) => result.status === 'rejected').slice(1)
  t.ok(refused.length >= 1, `${refused.length} refused while the queue was full`)
  for (const result of refused) t.match(result, { reason: { code: 'SERVICE_UNAVAILABLE', statusCode: 503, details: { reason: 'jsonpath_queue', limit: 1 } } })
})

t.test('a request that waits for a worker longer than its bound is turned away, never left waiting', async (t) => {
  // A worker takes milliseconds to start: a bound of one turns the first request away.
  const jsonPath = pool(t, { maxWaitMs: 1 })
  await t.rejects(jsonPath.rewrite('{"params":["1"]}', ['$.params[0]']), { code: 'SERVICE_UNAVAILABLE', details: { reason: 'jsonpath_queue', waited_ms: 1 } })
})

t.test('closing: a request in flight gets its answer or 503', async (t) => {
  const jsonPath = createJsonPathPool({ workers: 1, timeoutMs: 5000, memoryMb: TEST_WORKER_HEAP_MB, maxQueue: 8, maxDepth: 64, plainOnEventLoop: false })
  const inFlight = jsonPath.rewrite(slowBody, [SLOW]).then(() => 'answered', (err: { code?: string, details?: unknown }) => [err.code, err.details])
  await new Promise((resolve) => setTimeout(resolve, 100))
  await jsonPath.close()
  t.same(await inFlight, ['SERVICE_UNAVAILABLE', { reason: 'closing' }])
})

t.test('plain paths over a small body are evaluated on the event loop, with the workers\' answers and refusals', async (t) => {
  const onLoop = createJsonPathPool({ workers: 1, timeoutMs: 200, memoryMb: TEST_WORKER_HEAP_MB, maxQueue: 0, maxDepth: 64, maxWaitMs: 1 })
  // (A worker may take seconds to start on a loaded machine: this one waits for it.)
  const inWorker = pool(t, { maxWaitMs: 120_000 })
  t.teardown(async () => { await onLoop.close() })
  const fields = '{"收支类型":"支出","款项金额":14.91,"id":12345678901234567890}'
  const body = JSON.stringify({ params: { records: [{ fields }, { fields }, { fields: 'not json' }] } })
  for (const expressions of [['$.params.records[0:2].fields'], ['$.params.records[*].fields'], ['$.params.records[-1].fields'], ['$.params.nothing']]) {
    const [here, there] = await Promise.all([onLoop.rewrite(body, expressions).catch((err: unknown) => err), inWorker.rewrite(body, expressions).catch((err: unknown) => err)])
    t.same(here, there, `${expressions.join(' ')}: the same answer or refusal`)
  }
  t.match(await onLoop.rewrite(body, ['$.params.records[0:2].fields']), { body: /"id":12345678901234567890/ }, 'numbers stay exact')
  // No worker is free to take anything at once (maxQueue 0, a wait of 1 ms): what needs one is turned away, a plain
  // path is not.
  const busy = onLoop.rewrite(slowBody, [SLOW]).catch((err: unknown) => err)
  t.same((await onLoop.rewrite('{"params":{"a":"[1]"}}', ['$.params.a'])).body, '{"a":[1]}', 'a plain path while the worker is busy')
  await t.rejects(onLoop.rewrite('{"params":{"a":"[1]"}}', ['$..a']), { code: 'SERVICE_UNAVAILABLE' }, 'a descent waits for a worker')
  await busy
  await t.rejects(onLoop.rewrite('{"params":', ['$.params.a']), SyntaxError, 'text that is not JSON (the route never hands it over) is thrown as it is')
  const big = JSON.stringify({ params: { a: '[1]', pad: 'x'.repeat(70_000) } })
  await t.rejects(onLoop.rewrite(big, ['$.params.a']), { code: 'SERVICE_UNAVAILABLE' }, 'a body over 64 KiB goes to a worker, plain or not')
  await t.rejects(onLoop.rewrite('{"params":{"n":12345678901234567890}}', []), { code: 'SERVICE_UNAVAILABLE' }, 'as does re-serializing exact numbers')
})
