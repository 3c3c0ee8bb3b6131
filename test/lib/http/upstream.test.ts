import t from 'tap'
import { isTimeout, jsonObject, readBodyLimited, transportError } from '../../../src/lib/http/upstream.js'

t.test('upstream helpers: bounded reads and timeout classification', async (t) => {
  async function * chunks (...parts: string[]) { for (const part of parts) yield Buffer.from(part) }
  t.equal((await readBodyLimited(chunks('ab', 'cd'), 4)).toString(), 'abcd')
  await t.rejects(readBodyLimited(chunks('ab', 'cde'), 4), { name: 'ResponseTooLargeError', limit: 4 })
  t.equal(isTimeout(null), false)
  t.equal(isTimeout('TimeoutError'), false)
  t.equal(isTimeout({ code: 'UND_ERR_HEADERS_TIMEOUT' }), true)
  t.equal(isTimeout(new Error('wrapped', { cause: Object.assign(new Error('x'), { name: 'TimeoutError' }) })), true)
  t.equal(isTimeout(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' })), false)
  t.match(transportError({ code: 'ETIMEDOUT' }, 'https://h'), { code: 'UPSTREAM_TIMEOUT', statusCode: 504, details: { origin: 'https://h', cause: 'ETIMEDOUT' } })
  t.same(transportError(new Error('refused'), 'https://h', { attempts: 1 }).details, { origin: 'https://h', attempts: 1 }, 'no code: no cause')
  t.same(transportError(new TypeError('fetch failed', { cause: { code: 'ECONNRESET' } }), 'https://h').details, { origin: 'https://h', cause: 'ECONNRESET' }, 'the code is looked for in the causes')
  t.same(jsonObject(Buffer.from('{"a":1')), {}, 'not JSON: an empty object')
  t.same(jsonObject(Buffer.from('{"a":1}')), { a: 1 })
  t.same(jsonObject(Buffer.from('[1]')), {}, 'not an object: an empty object')
})
