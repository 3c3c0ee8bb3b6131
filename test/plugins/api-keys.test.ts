import { createHash } from 'node:crypto'
import t from 'tap'
import { API_KEY, build, registerSecret, testKeys } from '../helper.js'

// The caller's key is checked before the body is validated, on every route that takes one, in both modes: a caller
// without a valid key learns nothing of the API's shape.

t.test('single-app mode: a wrong or missing key is 401 whatever the body; a key in the body still opens', async (t) => {
  const { app } = await build(t, { EXPECTED_COZE_API_KEY: API_KEY, JWT_PRIVATE_KEY: testKeys().pkcs8, COZE_APP_ID: '1150000000001' })
  const routes = [['POST', '/token'], ['POST', '/resend'], ['GET', '/resend/jobs?limit=0'], ['GET', '/resend/jobs/not-a-uuid']] as const
  for (const [method, url] of routes) {
    const payload = method === 'POST' ? { nonsense: true } : undefined
    const wrong = await app.inject({ method, url, headers: { 'x-api-key': 'wrong-key' }, ...(payload === undefined ? {} : { payload }) })
    t.same([wrong.statusCode, wrong.json().data], [401, { error: 'UNAUTHORIZED' }], `${method} ${url}, a wrong key in a header`)
    const none = await app.inject({ method, url, ...(payload === undefined ? {} : { payload }) })
    t.same([none.statusCode, none.json().data], [401, { error: 'UNAUTHORIZED' }], `${method} ${url}, no key`)
  }
  const inBody = await app.inject({ method: 'POST', url: '/token', payload: { coze_api_key: API_KEY, nonsense: true } })
  t.same([inBody.statusCode, inBody.json().data.field], [400, 'public_key'], 'a key in the body opens, and then the body is validated')
  const wrongInBody = await app.inject({ method: 'POST', url: '/token', payload: { coze_api_key: 'wrong', public_key: 42 } })
  t.equal(wrongInBody.statusCode, 401)
  const twice = await app.inject({ method: 'POST', url: '/token', headers: { 'x-api-key': ['a', 'b'] }, payload: {} })
  t.equal(twice.statusCode, 401, 'a key sent twice is no key')
})

t.test('broker mode: an unknown key with a single-app body is 401, not 400; a caller is refused a route before its body is read', async (t) => {
  const shortcuts = 'shortcuts-gate-key-0123456789'
  registerSecret(shortcuts)
  const sha = (value: string): string => createHash('sha256').update(value).digest('hex')
  const { app } = await build(t, {
    COZE_APPS: JSON.stringify({
      apps: { bills: { app_id: '1150000000001', api_base: 'https://api.coze.cn', keys: [{ kid: 'k1', private_key_env: 'APP_KEY' }] } },
      callers: { shortcuts: { key_sha256: sha(shortcuts), apps: ['bills'], routes: ['token'] } }
    }),
    APP_KEY: testKeys().pkcs8
  })
  const unknown = await app.inject({ method: 'POST', url: '/token', headers: { 'x-api-key': 'not-a-caller-key' }, payload: { public_key: '_v0VjcMlLdQc3tRTD3jC5Xz29TUnKQOhtuD5k-gpyf4' } })
  t.same([unknown.statusCode, unknown.json().data], [401, { error: 'UNAUTHORIZED' }])
  const route = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': shortcuts }, payload: { not: 'a relay request' } })
  t.same([route.statusCode, route.json().data.reason], [403, 'route'], 'a route the caller may not use, before its body')
  t.equal((await app.inject('/ready')).json().data.checks.token_cache, 'ok', 'a cache in memory is ready')
  const known = await app.inject({ method: 'POST', url: '/token', headers: { 'x-api-key': shortcuts }, payload: { public_key: 'x' } })
  t.equal(known.statusCode, 400, 'a caller\'s own route: the body is validated')
  const signIn = await app.inject({ method: 'GET', url: '/api/auth-url?user_id=alice', headers: { 'x-api-key': 'not-a-caller-key' } })
  t.equal(signIn.statusCode, 401, 'the sign-in routes take a caller key in broker mode')
})
