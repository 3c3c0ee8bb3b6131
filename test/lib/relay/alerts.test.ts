import { createHmac } from 'node:crypto'
import t from 'tap'
import { alertText, feishuBotSign } from '../../../src/lib/relay/alerts.js'

t.test('the bot\'s signature: base64 of HMAC-SHA256 keyed with timestamp and secret, over nothing', async (t) => {
  t.equal(feishuBotSign(1599360473, 'demo'), createHmac('sha256', '1599360473\ndemo').digest('base64'))
  t.not(feishuBotSign(1599360473, 'demo'), feishuBotSign(1599360474, 'demo'), 'the timestamp is in the key')
})

t.test('one message per destination: what happened in the interval, counted', async (t) => {
  const text = alertText('open.feishu.cn', { failed: '3', last_error: 'feishu_1254045', last_attempts: '5', last_destination: 'open.feishu.cn/open-apis/bitable/v1/apps/x/tables/y/records', last_status: '/resend/jobs/abc', opened: '1', opened_failures: '5', opened_error: 'UPSTREAM_TIMEOUT', opened_cooldown: '30000', closed: '1' }, 300_000)
  t.match(text, /^【重发投递告警】open\.feishu\.cn\n/)
  t.match(text, /目标已暂停：连续 5 次失败（UPSTREAM_TIMEOUT），30 秒后试探/)
  t.match(text, /5 分钟内 3 个任务最终失败/)
  t.match(text, /最近一个：feishu_1254045，尝试 5 次，目标 open\.feishu\.cn\/open-apis\/bitable/)
  t.match(text, /状态：GET \/resend\/jobs\/abc/)
  t.match(text, /目标已恢复/)
  t.equal(alertText('h', { closed: '1' }, 30_000), '【重发投递告警】h\n目标已恢复：试探成功，投递继续', 'a recovery alone, in an interval under a minute')
  t.ok(alertText('h', { failed: '1', last_error: 'x'.repeat(5000) }, 60_000).length <= 2000, 'bounded')
})
