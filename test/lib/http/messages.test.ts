import t from 'tap'
import { ERROR_STATUS, outcomeOf, ServiceError, type ErrorCode } from '../../../src/lib/http/errors.js'
import { messageFor, pickLocale } from '../../../src/lib/http/messages.js'
import { trustProxySetting } from '../../../src/schemas/config.js'

t.test('messages: one catalog, two languages', async (t) => {
  t.equal(pickLocale(undefined), 'zh-CN')
  t.equal(pickLocale(''), 'zh-CN')
  t.equal(pickLocale('en-GB'), 'en')
  t.equal(pickLocale('zh'), 'zh-CN')
  t.equal(pickLocale('en;q=0.5, zh-CN'), 'zh-CN')
  t.equal(messageFor('zh-CN', 'VALIDATION_FAILED'), '无效的请求数据')
  t.equal(messageFor('en', 'VALIDATION_FAILED', { reason: 'x is required' }), 'Invalid request data: x is required')
  t.equal(messageFor('en', 'VALIDATION_FAILED'), 'Invalid request data')
  t.equal(messageFor('en', 'COZE_EXCHANGE_FAILED'), 'Coze token exchange failed')
  t.equal(new ServiceError('UNAUTHORIZED').statusCode, 401)
  t.notMatch(String(new ServiceError('UNAUTHORIZED').stack), /\n\s+at /, 'expected outcomes carry no stack trace')
  t.match(String(new Error('defect').stack), /\n\s+at /, 'other errors still do')
  t.equal(outcomeOf(new ServiceError('UPSTREAM_TIMEOUT')), 'upstream_timeout')
  t.equal(outcomeOf(new TypeError('boom')), 'internal')
  t.equal(trustProxySetting('true'), true)
  t.equal(trustProxySetting('false'), false)
  t.equal(trustProxySetting('10.0.0.0/8, 172.16.0.0/12'), '10.0.0.0/8, 172.16.0.0/12')
  const oneHop = trustProxySetting('1') as (address: string, hop: number) => boolean
  t.same([oneHop('10.0.0.1', 0), oneHop('203.0.113.1', 1)], [true, false], 'a hop count trusts that many hops')
})

t.test('every message is whole in one language: an English reason never reaches a Chinese message, nor Chinese an English one', async (t) => {
  const details = { reason: 'the reason in English', field: 'body.params', expression: '$.params', status: 'delivered', required: ['code', 'state'], feishu_code: 10014, feishu_msg: 'app secret invalid', upstream_status: 502 }
  for (const code of Object.keys(ERROR_STATUS) as ErrorCode[]) {
    const zh = messageFor('zh-CN', code, details)
    const en = messageFor('en', code, details)
    t.notOk(zh.includes('the reason in English'), `${code} in Chinese: ${zh}`)
    t.notMatch(en, /[\u4e00-\u9fff]/, `${code} in English: ${en}`)
  }
  t.equal(messageFor('zh-CN', 'VALIDATION_FAILED', { field: 'body', required: ['code', 'state', 'tenant_url'] }), '无效的请求数据: code, state, tenant_url 都是必需的', 'the original service\'s words')
  t.equal(messageFor('zh-CN', 'CONFLICT', { status: 'delivered' }), '任务当前为 delivered 状态，不允许此操作')
  t.equal(messageFor('zh-CN', 'FEISHU_TOKEN_FAILED', { feishu_code: 10003 }), '飞书 tenant_access_token 获取失败: 飞书错误码 10003', 'a code without Feishu\'s words')
})
