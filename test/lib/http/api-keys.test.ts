import t from 'tap'
import { createApiKeyVerifier } from '../../../src/lib/http/api-keys.js'

t.test('api keys: constant-time match against every configured key, nothing open', async (t) => {
  const none = createApiKeyVerifier(undefined)
  t.equal(none.configured, false)
  t.equal(none.verify('anything'), false)
  const keys = createApiKeyVerifier(' first , second ,, ')
  t.equal(keys.configured, true)
  t.equal(keys.verify('first'), true)
  t.equal(keys.verify('second'), true)
  t.equal(keys.verify('firs'), false)
  t.equal(keys.verify(''), false)
  t.equal(keys.verify(undefined), false)
  t.same([keys.match('first'), keys.match('second'), keys.match('third')], [0, 1, -1], 'match says which key, not what it is')
})
