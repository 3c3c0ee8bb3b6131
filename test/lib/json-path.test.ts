import t from 'tap'
import { JsonPathLimitError, JsonPathSyntaxError, evaluateJsonPath, parseJsonPath } from '../../src/lib/json-path.js'

const LIMITS = { maxVisits: 100_000, maxMatches: 10_000 }
function thrown (fn: () => unknown): unknown {
  try { fn() } catch (err) { return err }
  return undefined
}

const evaluate = (document: unknown, expression: string, limits = LIMITS) =>
  evaluateJsonPath(document, parseJsonPath(expression), { visits: 0, matches: 0 }, limits)

t.test('the supported syntax selects what JSONPath users expect', async (t) => {
  const doc = { params: { records: [{ fields: 'a' }, { fields: 'b', other: 1 }], "it's": { 'x.y': 2 } } }
  const paths = (expression: string) => evaluate(doc, expression).map((match) => match.path())
  t.same(paths('$.params.records[*].fields'), ["$['params']['records'][0]['fields']", "$['params']['records'][1]['fields']"])
  t.same(paths('$.params.records[-1].other'), ["$['params']['records'][1]['other']"])
  t.same(paths('$.params.records[5]'), [], 'out of range: nothing')
  t.same(paths("$['params'][\"it's\"]['x.y']"), ["$['params']['it\\'s']['x.y']"], 'quoted names, quotes escaped in the path')
  t.same(paths("$['params']['it\\'s']"), ["$['params']['it\\'s']"], 'an escaped quote inside a quoted name')
  t.same(paths('$..fields'), ["$['params']['records'][0]['fields']", "$['params']['records'][1]['fields']"])
  t.same(paths('$.params.records..*').length, 5, 'descendants of the records, document order')
  t.same(paths('$..[0]'), ["$['params']['records'][0]"])
  t.same(evaluate(doc, '$.params.records[0].fields')[0]?.depth, 4)
  t.same(paths('$.params.records.fields'), [], 'a name does not select from an array')
  t.match(evaluate(doc, '$'), [{ parent: null, key: '$', depth: 0 }], 'the root itself')
  t.same(paths('$'), ['$'])
  t.same(paths('$.params.toString'), [], 'only own properties')
  t.same(paths('$.params.records[*].fields.x'), [], 'nothing below a string')
})

t.test('anything else is a syntax error with its position', async (t) => {
  const cases: Array<[string, number, RegExp]> = [
    ['@@', 0, /starts with \$/],
    ['$..a..b', 4, /at most one recursive descent/],
    ['$..*..*..*', 4, /at most one recursive descent/],
    ['$.a[?(@.b)]', 4, /filter and script/],
    ['$.a[(@.length-1)]', 4, /filter and script/],
    ['$.a.b()', 5, /filter and script/],
    ['$.a[0:2]', 5, /only \[\*\]/],
    ['$.a[0,1]', 5, /only \[\*\]/],
    ["$['a", 1, /unclosed/],
    ['$.', 2, /a name is expected/],
    ['$ a', 1, /unexpected " "/],
    ['$.a[x]', 4, /only \[\*\]/],
    ['$(1)', 1, /filter and script/]
  ]
  for (const [expression, position, reason] of cases) {
    const err = thrown(() => parseJsonPath(expression))
    t.ok(err instanceof JsonPathSyntaxError, expression)
    t.match(err, { position, reason }, expression)
  }
})

t.test('the budget bounds the work, whatever the document', async (t) => {
  // 100 nested arrays in 200 bytes: the shape that ran for 35 s in a general JSONPath library.
  let deep: unknown = []
  for (let i = 0; i < 100; i++) deep = [deep, []]
  const started = performance.now()
  t.equal(evaluate({ params: deep }, '$.params..*').length, 200, 'one descent visits each node once')
  t.ok(performance.now() - started < 1000)

  const wide = { params: Array.from({ length: 200_000 }, () => 0) }
  const visits = thrown(() => evaluate(wide, '$.params..*'))
  t.ok(visits instanceof JsonPathLimitError)
  t.match(visits, { limit: 100_000, message: 'the expressions visit more than 100000 nodes' })
  const matches = thrown(() => evaluate({ params: Array.from({ length: 20 }, () => 0) }, '$.params[*]', { maxVisits: 100, maxMatches: 10 }))
  t.ok(matches instanceof JsonPathLimitError)
  t.match(matches, { limit: 10, message: 'the expressions match more than 10 values' })

  const budget = { visits: 0, matches: 0 }
  const steps = parseJsonPath('$.params[*]')
  const doc = { params: [1, 2, 3] }
  evaluateJsonPath(doc, steps, budget, { maxVisits: 9, maxMatches: 100 })
  evaluateJsonPath(doc, steps, budget, { maxVisits: 9, maxMatches: 100 })
  t.equal(budget.visits, 8, 'the budget is shared across expressions')
  t.throws(() => evaluateJsonPath(doc, steps, budget, { maxVisits: 9, maxMatches: 100 }), JsonPathLimitError)
})
