import t from 'tap'
import { createCozeClient, isUnknownKid } from '../../../src/lib/coze/client.js'
import { ServiceError } from '../../../src/lib/http/errors.js'
import { createReadiness } from '../../../src/lib/ops/readiness.js'

t.test('coze client without a signer answers NOT_CONFIGURED; readiness checks time out', async (t) => {
  const client = createCozeClient({ url: 'http://127.0.0.1:9/token', timeoutMs: 1000, signer: null, issuer: { appId: 'i' }, audience: 'a', jwtTtlSeconds: 60, reuseSeconds: 0 })
  await t.rejects(client.getAccessToken({ kid: 'k', callerKey: 'c', callerKeyIndex: 0, durationSeconds: 60 }), { code: 'NOT_CONFIGURED' })
  await client.close()

  const readiness = createReadiness(50)
  readiness.add('hangs', async () => await new Promise(() => {}))
  readiness.add('fine', async () => 'ok')
  t.same(await readiness.check(), { ready: false, checks: { hangs: 'down', fine: 'ok' } })
})

t.test('which Coze refusals mean "this kid is not the app\'s"', async (t) => {
  t.ok(isUnknownKid(new ServiceError('COZE_EXCHANGE_FAILED', { error_code: 'invalid_client', error_message: 'invalid jwt' })))
  t.ok(isUnknownKid(new ServiceError('COZE_EXCHANGE_FAILED', { error_code: 'invalid_request', error_message: 'the kid is unknown' })))
  t.notOk(isUnknownKid(new ServiceError('COZE_EXCHANGE_FAILED', { error_code: 'access_deny', error_message: 'app deactivated' })))
  t.notOk(isUnknownKid(new ServiceError('COZE_EXCHANGE_FAILED', { upstream_status: 500 })))
  t.notOk(isUnknownKid(new ServiceError('UPSTREAM_TIMEOUT')))
  t.notOk(isUnknownKid(new Error('invalid_client')))
})
