import t from 'tap'
import { createCozeClient } from '../../src/lib/coze-client.js'
import { createReadiness } from '../../src/lib/readiness.js'

t.test('coze client without a signer answers NOT_CONFIGURED; readiness checks time out', async (t) => {
  const client = createCozeClient({ url: 'http://127.0.0.1:9/token', timeoutMs: 1000, signer: null, issuer: { appId: 'i' }, audience: 'a', jwtTtlSeconds: 60, reuseSeconds: 0 })
  await t.rejects(client.getAccessToken({ kid: 'k', callerKey: 'c', callerKeyIndex: 0, durationSeconds: 60 }), { code: 'NOT_CONFIGURED' })
  await client.close()

  const readiness = createReadiness(50)
  readiness.add('hangs', async () => await new Promise(() => {}))
  readiness.add('fine', async () => 'ok')
  t.same(await readiness.check(), { ready: false, checks: { hangs: 'down', fine: 'ok' } })
})
