import t from 'tap'
import { MAX_VISITED_NODES, applyCommands } from '../../src/lib/resend-commands.js'

t.test('json_parse replaces matched strings and reports how many each expression replaced', async (t) => {
  const document = { params: { records: [{ fields: '{"a":1}' }, { fields: '{"b":[2]}' }, { fields: { c: 3 } }] } }
  const report = applyCommands(document, { json_parse: ['$.params.records[*].fields', '$.params.records[0]'] }, 64)
  t.same(report, { json_parse: [2, 0] }, 'a match that is not a string is left alone and not counted')
  t.same(document.params.records, [{ fields: { a: 1 } }, { fields: { b: [2] } }, { fields: { c: 3 } }])
})

t.test('json_parse refusals: syntax, nothing matched, outside params, bad JSON, depth, budget', async (t) => {
  const fails = (document: { params: unknown }, expressions: string[], details: Record<string, unknown>, maxDepth = 64) =>
    t.throws(() => applyCommands(document, { json_parse: expressions }, maxDepth), { code: 'COMMAND_FAILED', details: { command: 'json_parse', ...details } }, expressions.join(' '))
  fails({ params: {} }, ['@@'], { expression: '@@', position: 0 })
  fails({ params: { a: '1' } }, ['$.params.nothing_here'], { reason: 'matched nothing' })
  fails({ params: { a: '1' } }, ['$..a'], { reason: 'only paths under $.params can be rewritten' })
  fails({ params: { a: '1' } }, ['$.location'], { reason: 'only paths under $.params can be rewritten' })
  fails({ params: { a: '{"b":' } }, ['$.params.a'], { path: "$['params']['a']", position: Number, reason: 'the matched string is not valid JSON' })
  fails({ params: { a: { b: '[[[1]]]' } } }, ['$.params.a.b'], { path: "$['params']['a']['b']", reason: 'the parsed value would nest deeper than 4 levels' }, 4)
  fails({ params: Array.from({ length: MAX_VISITED_NODES + 1 }, () => 0) }, ['$.params[*]'], { limit: MAX_VISITED_NODES, reason: `the expressions visit more than ${MAX_VISITED_NODES} nodes` })
  // Each expression alone stays within the budget; the request's expressions together do not.
  const wide = { params: Array.from({ length: 30_000 }, (_, i) => (i === 0 ? { x: '1' } : {})) }
  t.same(applyCommands(structuredClone(wide), { json_parse: ['$.params[*].x'] }, 64), { json_parse: [1] })
  fails(wide, Array.from({ length: 32 }, () => '$.params[*].x'), { reason: `the expressions visit more than ${MAX_VISITED_NODES} nodes` })
})

t.test('json_parse cannot touch prototypes', async (t) => {
  const document = { params: { a: '{"b": 1}', n: 5 } }
  for (const expression of ['$.params.constructor', '$.params.__proto__', '$.params..__proto__']) {
    t.throws(() => applyCommands(document, { json_parse: [expression] }, 64), { code: 'COMMAND_FAILED', details: { reason: 'matched nothing' } })
  }
  t.same(applyCommands(document, { json_parse: ['$.params.a'] }, 64), { json_parse: [1] })
  t.same(document, { params: { a: { b: 1 }, n: 5 } })
  t.equal(({} as Record<string, unknown>).b, undefined)
})
