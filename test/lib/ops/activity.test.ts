import t from 'tap'
import { createActivity } from '../../../src/lib/ops/index.js'

t.test('per app: counts by outcome, the last success, the last failure with its logid', async (t) => {
  let clock = 1000
  const activity = createActivity(() => clock)
  activity.record('coze', 'bills', 'miss')
  activity.record('coze', 'bills', 'hit')
  activity.record('coze', 'bills', 'hit')
  clock = 2000
  activity.record('coze', 'bills', 'coze_exchange_failed', 'logid-1')
  activity.record('feishu', 'ledger', 'feishu_99991663')
  t.same(activity.read('coze').get('bills'), { counts: { miss: 1, hit: 2, coze_exchange_failed: 1 }, last_ok_at: 1000, last_failure: { at: 2000, code: 'coze_exchange_failed', logid: 'logid-1' } })
  t.same(activity.read('feishu').get('ledger'), { counts: { feishu_99991663: 1 }, last_ok_at: null, last_failure: { at: 2000, code: 'feishu_99991663' } })
  t.equal(activity.read('coze').get('ledger'), undefined, 'the kinds are apart')
})

t.test('bounded: apps and outcomes past their limits are not recorded', async (t) => {
  const activity = createActivity()
  for (let i = 0; i < 1100; i++) activity.record('coze', `app-${i}`, 'hit')
  t.equal(activity.read('coze').size, 1000)
  for (let i = 0; i < 40; i++) activity.record('feishu', 'one', `error_${i}`)
  const counts = activity.read('feishu').get('one')?.counts ?? {}
  t.equal(Object.keys(counts).length, 32)
  activity.record('feishu', 'one', 'error_0')
  t.equal(activity.read('feishu').get('one')?.counts.error_0, 2, 'a known outcome still counts')
  t.same(activity.read('feishu').get('one')?.last_failure?.code, 'error_0', 'and the last failure is still told')
})
