import t from 'tap'
import { mayLoseNumbers, parseExact, RawJson, stringifyExact, stringifyWithRaw } from '../../../src/lib/http/exact-json.js'

t.test('mayLoseNumbers: 16 significant digits or a three-digit exponent; ordinary JSON is not', async (t) => {
  for (const text of ['{"id":12345678901234567891}', '[1234567890.123456]', '{"f":1e400}', '[1E-308]', '{"s":"0000000000000000"}']) t.ok(mayLoseNumbers(text), text)
  for (const text of ['{"a":1,"b":14.91,"c":-0.5,"d":9007199254740}', '{"e":1e21}', '[]']) t.notOk(mayLoseNumbers(text), text)
})

t.test('parseExact and stringifyExact keep every number\'s value', async (t) => {
  const text = '{"id":12345678901234567891,"f":1e400,"small":0.1,"n":-7,"s":"☺","a":[true,null]}'
  t.equal(stringifyExact(parseExact(text)), text)
  t.equal((parseExact('{"n":42}') as { n: number }).n, 42, 'a number a double holds is a number')
  t.throws(() => parseExact('{"a":'), SyntaxError)
  t.equal(stringifyExact(undefined), undefined)
})

t.test('stringifyWithRaw writes RawJson as its own text, wherever it is', async (t) => {
  const raw = new RawJson('{"id":12345678901234567891}')
  t.equal(stringifyWithRaw({ success: true, data: { status: 200, body: raw, attempts: 1 } }), '{"success":true,"data":{"status":200,"body":{"id":12345678901234567891},"attempts":1}}')
  t.equal(stringifyWithRaw({ a: 1 }), '{"a":1}')
  t.equal(stringifyWithRaw([new RawJson('1e400'), new RawJson('[]')]), '[1e400,[]]')
})
