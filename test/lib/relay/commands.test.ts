import t from 'tap'
import { createJsonPathPool } from '../../../src/lib/relay/json-path-pool.js'
import { TEST_WORKER_HEAP_MB } from '../../fixtures/worker-heap.js'
import { prepareBody } from '../../../src/lib/relay/commands.js'

t.test('prepareBody: params as they came, exact numbers through the pool, commands through the pool', async (t) => {
  const pool = createJsonPathPool({ workers: 1, timeoutMs: 2000, memoryMb: TEST_WORKER_HEAP_MB, maxQueue: 8, maxDepth: 64 })
  t.teardown(async () => { await pool.close() })
  const tasks: string[] = []
  const counting = { rewrite: async (text: string, expressions: string[]) => { tasks.push(expressions.join(',')); return await pool.rewrite(text, expressions) }, close: async () => {} }

  t.same(await prepareBody({ params: { a: 1 }, bodyText: '{"params": {"a": 1}}' }, counting), { body: '{"a":1}' })
  t.same(await prepareBody({}, counting), { body: undefined })
  t.same(tasks, [], 'ordinary bodies never touch the pool')

  const big = '{"location":"x","params":{"id":12345678901234567891,"f":1e400}}'
  t.same(await prepareBody({ params: JSON.parse(big).params, bodyText: big }, counting), { body: '{"id":12345678901234567891,"f":1e400}' })
  t.same(tasks, [''], 'a body whose numbers a parse would change is re-serialized exactly, in the pool')

  const withCommands = await prepareBody({ params: { s: '{"n":[1]}' }, commands: { json_parse: ['$.params.s'] } }, counting)
  t.same(withCommands, { body: '{"s":{"n":[1]}}', report: { json_parse: [{ expression: '$.params.s', parsed: 1, paths: ["$['params']['s']"] }] } })
})
