import { readFile } from 'node:fs/promises'
import t from 'tap'
import { COMPILED_MAX, COMPILED_MAX_LENGTH, compileJsonPath, isPlainPath, MAX_REPORTED_PATHS, rewriteParams } from '../../../src/lib/relay/json-path.js'

interface ComplianceCase {
  name: string
  selector: string
  document?: unknown
  result?: unknown[]
  results?: unknown[][]
  result_paths?: string[]
  results_paths?: string[][]
  invalid_selector?: boolean
}

// The JSONPath Compliance Test Suite (RFC 9535), vendored with its licence in test/fixtures/jsonpath-cts.
const { tests } = JSON.parse(await readFile(new URL('../../fixtures/jsonpath-cts/cts.json', import.meta.url), 'utf8')) as { tests: ComplianceCase[] }

t.test('RFC 9535: every valid case of the compliance suite answered right, every invalid one refused', async (t) => {
  const equal = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b)
  let valid = 0
  let invalid = 0
  const wrong: string[] = []
  for (const test of tests) {
    if (test.invalid_selector === true) {
      invalid++
      try {
        compileJsonPath(test.selector)
        wrong.push(`accepted: ${test.name}`)
      } catch (err) {
        if ((err as Error).name !== 'JsonParseRefusal') wrong.push(`threw ${(err as Error).name}: ${test.name}`)
      }
      continue
    }
    valid++
    const nodes = compileJsonPath(test.selector).query(test.document as never)
    const values = nodes.values()
    const paths = nodes.paths({ form: 'canonical' })
    const expected = test.result !== undefined ? [[test.result, test.result_paths]] : (test.results ?? []).map((result, i) => [result, test.results_paths?.[i]])
    if (!expected.some(([result, resultPaths]) => equal(values, result) && (resultPaths === undefined || equal(paths, resultPaths)))) wrong.push(`wrong: ${test.name}`)
  }
  t.same([valid, invalid], [456, 247], 'the suite as vendored: 703 cases')
  t.same(wrong, [], 'no case answered wrong')
})

t.test('plain paths (run on the event loop): child segments of one name, index, wildcard or slice, and nothing else', async (t) => {
  for (const plain of ['$', '$.params.records[*].fields', "$['params'][0][-1][1:3][::2].a", '$.params.*']) t.ok(isPlainPath(plain), plain)
  for (const other of ['$..fields', '$.params[?@.a]', '$.params[*,*]', "$['a','b']", '$.params[0,1]', '$.params[', '$.params[?length(@) > 1]']) t.notOk(isPlainPath(other), other)
  // Every valid case of the compliance suite answers the same through rewriteParams, on whichever side it runs: the
  // classification only decides where. Both sides are counted, so that neither is empty.
  const sides = { plain: 0, other: 0 }
  for (const test of tests) if (test.invalid_selector !== true) sides[isPlainPath(test.selector) ? 'plain' : 'other']++
  t.ok(sides.plain > 100 && sides.other > 100, `the suite has cases of both kinds (${sides.plain} plain, ${sides.other} other)`)
})

t.test('compiled expressions are kept, bounded in count and length', async (t) => {
  const first = compileJsonPath('$.params.kept[*].fields')
  t.equal(compileJsonPath('$.params.kept[*].fields'), first, 'the same expression is compiled once')
  t.not(compileJsonPath('$.params.kept[*].fields', 8), first, 'per depth')
  const long = `$.params.${'a'.repeat(COMPILED_MAX_LENGTH)}`
  t.not(compileJsonPath(long), compileJsonPath(long), 'a long one is compiled every time')
  for (let i = 0; i < COMPILED_MAX; i++) compileJsonPath(`$.params.many${i}`)
  t.not(compileJsonPath('$.params.kept[*].fields'), first, 'full, the cache starts over')
  const again = compileJsonPath('$.params.kept[*].fields')
  t.same(rewriteParams(JSON.stringify({ params: { kept: [{ fields: '{"a":1}' }] } }), ['$.params.kept[*].fields'], { maxDepth: 64 }).body, '{"kept":[{"fields":{"a":1}}]}', 'a kept query answers as a new one')
  t.equal(compileJsonPath('$.params.kept[*].fields'), again)
})

t.test('a syntax error names the expression, the position and why', async (t) => {
  t.throws(() => compileJsonPath('$.params.records[?@.type ==]'), { name: 'JsonParseRefusal', details: { expression: '$.params.records[?@.type ==]', position: 27, reason: 'unexpected end of expression' } })
  t.throws(() => compileJsonPath(' $'), { name: 'JsonParseRefusal', details: { position: 0 } })
})

const FIELDS = '{"收支类型":"支出","款项金额":14.91}'

t.test('json_parse: strings become the JSON they hold, over { params }, with a report per expression', async (t) => {
  const body = JSON.stringify({ location: 'https://open.feishu.cn/x', headers: { authorization: 'Bearer t-1' }, params: { records: [{ type: 'income', fields: FIELDS }, { type: 'spend', fields: '{"a":[1,2]}' }, { type: 'spend', fields: { done: true } }] } })
  const run = (expressions: string[]) => rewriteParams(body, expressions, { maxDepth: 64 })
  const all = run(['$..fields'])
  t.same(JSON.parse(all.body as string), { records: [{ type: 'income', fields: { 收支类型: '支出', 款项金额: 14.91 } }, { type: 'spend', fields: { a: [1, 2] } }, { type: 'spend', fields: { done: true } }] })
  t.same(all.report, [{ expression: '$..fields', parsed: 2, paths: ["$['params']['records'][0]['fields']", "$['params']['records'][1]['fields']"] }], 'a match that is not a string is left alone')
  t.same(run(['$.params..fields']).report[0]?.parsed, 2, '$..fields and $.params..fields alike')
  t.same(run(["$.params.records[?@.type=='income'].fields"]).report[0]?.paths, ["$['params']['records'][0]['fields']"], 'a filter')
  t.same(run(['$.params.records[0:2].fields']).report[0]?.parsed, 2, 'a slice')
  t.same(run(['$.params.records[-2].fields']).report[0]?.paths, ["$['params']['records'][1]['fields']"], 'a negative index')
  t.same(run(['$.params.records[0,1,0].fields']).report, [{ expression: '$.params.records[0,1,0].fields', parsed: 2, paths: ["$['params']['records'][0]['fields']", "$['params']['records'][1]['fields']"] }], 'a location reached twice is parsed once')
  t.same(run(['$.params.records[0].fields', '$..fields']).report.map((entry) => entry.parsed), [1, 1], 'nor parsed again by a later expression')
  t.same(run(['$.params.records[?length(@.fields) > 20].fields', '$.params.records[?match(@.type, "sp.*")].fields']).report.map((entry) => entry.parsed), [1, 1], 'functions')
})

t.test('json_parse refusals: nothing matched, no string matched, bad JSON, depth, the match bound', async (t) => {
  const refuses = (params: unknown, expressions: string[], details: Record<string, unknown>, maxDepth = 64, maxMatches?: number) =>
    t.throws(() => rewriteParams(JSON.stringify({ params }), expressions, { maxDepth, maxMatches }), { name: 'JsonParseRefusal', details }, expressions.join(' '))
  refuses({ a: '1' }, ['$.location'], { expression: '$.location', reason: 'matched nothing' })
  refuses({ a: '1' }, ['$.headers'], { reason: 'matched nothing' })
  refuses({ records: [{ n: 1 }, { n: 2 }] }, ['$.params.records[*]'], { reason: /^matched 2 value\(s\), none of them a string/ })
  refuses({ a: '{"b":' }, ['$.params.a'], { path: "$['params']['a']", position: 5, reason: 'the matched string is not valid JSON' })
  refuses({ a: { b: '[[[1]]]' } }, ['$.params.a.b'], { path: "$['params']['a']['b']", reason: 'the parsed value would nest deeper than 4 levels' }, 4)
  refuses(Array.from({ length: 11 }, () => 'x'), ['$.params[*]'], { reason: 'the expressions match more than 10 values', limit: 10 }, 64, 10)
  refuses(Array.from({ length: 6 }, () => '1'), ['$.params[0:3]', '$.params[3:]'], { expression: '$.params[3:]', limit: 5 }, 64, 5)
  refuses([[[[[['1']]]]]], ['$..*..*..*..*..*..*'], { reason: 'recursion limit reached', position: Number }, 4)
})

t.test('numbers keep their exact text; prototypes cannot be reached; the report lists 20 paths at most', async (t) => {
  const body = '{"params":{"id":12345678901234567891,"f":1e400,"x":0.1,"s":"{\\"n\\":98765432109876543210}"}}'
  t.equal(rewriteParams(body, ['$.params.s'], { maxDepth: 64 }).body, '{"id":12345678901234567891,"f":1e400,"x":0.1,"s":{"n":98765432109876543210}}')
  t.equal(rewriteParams(body, [], { maxDepth: 64 }).body, '{"id":12345678901234567891,"f":1e400,"x":0.1,"s":"{\\"n\\":98765432109876543210}"}', 'no expression: re-serialized exactly')
  for (const expression of ['$.params.constructor', '$.params.__proto__', '$.params..__proto__']) {
    t.throws(() => rewriteParams('{"params":{"a":"{\\"b\\":1}"}}', [expression], { maxDepth: 64 }), { name: 'JsonParseRefusal', details: { reason: 'matched nothing' } })
  }
  t.equal(({} as Record<string, unknown>).b, undefined)
  const many = rewriteParams(JSON.stringify({ params: Array.from({ length: 30 }, () => '1') }), ['$.params[*]'], { maxDepth: 64 })
  t.same([many.report[0]?.parsed, many.report[0]?.paths.length], [30, MAX_REPORTED_PATHS])
  t.equal(rewriteParams('{}', [], { maxDepth: 64 }).body, undefined, 'no params: no body')
})
