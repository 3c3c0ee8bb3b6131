import Negotiator from 'negotiator'
import type { ErrorCode, ErrorDetails } from './errors.js'

export const LOCALES = ['zh-CN', 'en'] as const
export type Locale = typeof LOCALES[number]
export const DEFAULT_LOCALE: Locale = 'zh-CN'

type Text = string | ((details: ErrorDetails) => string)

const withReason = (prefix: string) => (details: ErrorDetails): string =>
  typeof details.reason === 'string' ? `${prefix}: ${details.reason}` : prefix

const withStatus = (prefix: string) => (details: ErrorDetails): string => {
  const status = details.upstream_status ?? details.status
  return typeof status === 'number' ? `${prefix}: HTTP ${status}` : prefix
}

// The reasons in details are English (data for programs): a Chinese message names the field, the expression or
// the state instead, so that every message is whole in one language.
const withField = (prefix: string) => (details: ErrorDetails): string => {
  if (Array.isArray(details.required)) return `${prefix}: ${details.required.join(', ')} 都是必需的`
  return typeof details.field === 'string' ? `${prefix}: ${details.field}` : prefix
}
const withExpression = (prefix: string) => (details: ErrorDetails): string =>
  typeof details.expression === 'string' ? `${prefix}: ${details.expression}` : prefix

/** Feishu's own code and words, which say what is wrong (a wrong secret, an app disabled); else the HTTP status. */
const withFeishuCode = (prefix: string, code: string) => (details: ErrorDetails): string => {
  if (typeof details.feishu_code !== 'number') return withStatus(prefix)(details)
  return `${prefix}: ${code} ${details.feishu_code}${typeof details.feishu_msg === 'string' ? ` (${details.feishu_msg})` : ''}`
}

// One catalog for every answer the service writes: error codes and the few success texts.
const CATALOG: Record<Locale, Record<ErrorCode | SuccessText, Text>> = {
  'zh-CN': {
    VALIDATION_FAILED: withField('无效的请求数据'),
    INVALID_JSON: '请求体不是有效的 JSON',
    COMMAND_FAILED: withExpression('命令执行失败'),
    TENANT_URL_NOT_ALLOWED: '不允许的 tenant_url',
    OAUTH_STATE_NOT_FOUND: '未找到OAuth状态，请重新获取授权链接',
    OAUTH_STATE_EXPIRED: 'OAuth状态已过期，请重新获取授权链接',
    DESTINATION_NOT_ALLOWED: '目标地址不在允许范围内',
    UPSTREAM_ERROR: withStatus('上游服务返回错误'),
    UPSTREAM_RESPONSE_TOO_LARGE: '上游服务响应过大',
    TOKEN_EXCHANGE_FAILED: withStatus('Token交换失败'),
    FEISHU_TOKEN_FAILED: withFeishuCode('飞书 tenant_access_token 获取失败', '飞书错误码'),
    STATE_STORE_UNAVAILABLE: '状态存储暂不可用，请稍后再试',
    BAD_REQUEST: '请求无效',
    UNAUTHORIZED: 'API 密钥无效或缺失',
    FORBIDDEN: '禁止访问',
    NOT_FOUND: '请求的资源不存在',
    CONFLICT: (details) => `任务当前为 ${String(details.status)} 状态，不允许此操作`,
    IDEMPOTENCY_KEY_REUSED: 'Idempotency-Key 已用于另一个请求',
    METHOD_NOT_ALLOWED: '不支持该请求方法',
    REQUEST_TIMEOUT: '请求发送超时',
    HEADERS_TOO_LARGE: '请求头过大',
    PAYLOAD_TOO_LARGE: '请求体过大',
    UNSUPPORTED_MEDIA_TYPE: '不支持的 Content-Type，请使用 application/json',
    RATE_LIMITED: '请求过于频繁，请稍后再试',
    INTERNAL: '服务器内部错误',
    COZE_EXCHANGE_FAILED: withStatus('Coze 令牌交换失败'),
    UPSTREAM_UNREACHABLE: '无法连接上游服务',
    UPSTREAM_TIMEOUT: '上游服务响应超时',
    NOT_CONFIGURED: '服务未配置此功能',
    NOT_READY: '服务尚未就绪',
    SERVICE_UNAVAILABLE: '服务繁忙，请稍后再试',
    HEALTH_OK: '服务运行正常',
    READY_OK: '服务已就绪',
    TOKEN_OK: '令牌获取成功',
    RESEND_OK: '重发成功',
    RESEND_QUEUED: '已加入重发队列',
    RESEND_REPLAYED: '此 Idempotency-Key 的任务已存在',
    RESEND_JOB: '重发任务',
    RESEND_JOBS: '重发任务列表',
    RESEND_DESTINATIONS: '投递目标状态',
    RESEND_JOBS_RETRIED: '失败任务已重新排队',
    RESEND_JOBS_CANCELLED: '排队任务已取消',
    AUTH_URL_OK: '授权链接生成成功',
    COMPLETE_AUTH_OK: 'OAuth授权完成成功'
  },
  en: {
    VALIDATION_FAILED: withReason('Invalid request data'),
    INVALID_JSON: 'The request body is not valid JSON',
    COMMAND_FAILED: withReason('A command failed'),
    TENANT_URL_NOT_ALLOWED: withReason('This tenant_url is not allowed'),
    OAUTH_STATE_NOT_FOUND: 'OAuth state not found; request a new authorization link',
    OAUTH_STATE_EXPIRED: 'OAuth state expired; request a new authorization link',
    DESTINATION_NOT_ALLOWED: 'The destination is not allowed',
    UPSTREAM_ERROR: withStatus('The upstream service answered with an error'),
    UPSTREAM_RESPONSE_TOO_LARGE: 'The upstream response is too large',
    TOKEN_EXCHANGE_FAILED: withStatus('Token exchange failed'),
    FEISHU_TOKEN_FAILED: withFeishuCode('Fetching the Feishu tenant_access_token failed', 'Feishu code'),
    STATE_STORE_UNAVAILABLE: 'The state store is unavailable; try again later',
    BAD_REQUEST: 'Bad request',
    UNAUTHORIZED: 'The API key is missing or invalid',
    FORBIDDEN: 'Forbidden',
    NOT_FOUND: 'The requested resource does not exist',
    CONFLICT: withReason('Not possible in the current state'),
    IDEMPOTENCY_KEY_REUSED: 'This Idempotency-Key was used for another request',
    METHOD_NOT_ALLOWED: 'Method not allowed',
    REQUEST_TIMEOUT: 'The request was not received in time',
    HEADERS_TOO_LARGE: 'The request headers are too large',
    PAYLOAD_TOO_LARGE: 'The request body is too large',
    UNSUPPORTED_MEDIA_TYPE: 'Unsupported Content-Type; send application/json',
    RATE_LIMITED: 'Too many requests; try again later',
    INTERNAL: 'Internal server error',
    COZE_EXCHANGE_FAILED: withStatus('Coze token exchange failed'),
    UPSTREAM_UNREACHABLE: 'The upstream service cannot be reached',
    UPSTREAM_TIMEOUT: 'The upstream service did not answer in time',
    NOT_CONFIGURED: 'This feature is not configured on the service',
    NOT_READY: 'The service is not ready',
    SERVICE_UNAVAILABLE: 'The service is busy; try again later',
    HEALTH_OK: 'Service is healthy',
    READY_OK: 'Service is ready',
    TOKEN_OK: 'Access token issued',
    RESEND_OK: 'Request resent',
    RESEND_QUEUED: 'Queued for delivery',
    RESEND_REPLAYED: 'The job of this Idempotency-Key',
    RESEND_JOB: 'Delivery job',
    RESEND_JOBS: 'Delivery jobs',
    RESEND_DESTINATIONS: 'Delivery destinations',
    RESEND_JOBS_RETRIED: 'Failed jobs put back in the queue',
    RESEND_JOBS_CANCELLED: 'Queued jobs cancelled',
    AUTH_URL_OK: 'Authorization link created',
    COMPLETE_AUTH_OK: 'OAuth authorization completed'
  }
}

export type SuccessText = 'HEALTH_OK' | 'READY_OK' | 'TOKEN_OK' | 'RESEND_OK' | 'RESEND_QUEUED' | 'RESEND_REPLAYED' | 'RESEND_JOB' | 'RESEND_JOBS' | 'RESEND_DESTINATIONS' | 'RESEND_JOBS_RETRIED' | 'RESEND_JOBS_CANCELLED' | 'AUTH_URL_OK' | 'COMPLETE_AUTH_OK'

export function messageFor (locale: Locale, key: ErrorCode | SuccessText, details: ErrorDetails = {}): string {
  const text = CATALOG[locale][key]
  return typeof text === 'function' ? text(details) : text
}

/** Chooses the answer's language from Accept-Language; zh-CN when nothing matches. */
export function pickLocale (acceptLanguage: string | string[] | undefined): Locale {
  if (acceptLanguage === undefined || acceptLanguage === '') return DEFAULT_LOCALE
  const preferred = new Negotiator({ headers: { 'accept-language': acceptLanguage } }).language([...LOCALES])
  return (preferred as Locale | undefined) ?? DEFAULT_LOCALE
}
