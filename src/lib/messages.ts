import Negotiator from 'negotiator'
import type { ErrorCode, ErrorDetails } from './errors.js'

export const LOCALES = ['zh-CN', 'en'] as const
export type Locale = typeof LOCALES[number]
export const DEFAULT_LOCALE: Locale = 'zh-CN'

type Text = string | ((details: ErrorDetails) => string)

const withReason = (prefix: string) => (details: ErrorDetails): string =>
  typeof details.reason === 'string' ? `${prefix}: ${details.reason}` : prefix

const withStatus = (prefix: string) => (details: ErrorDetails): string =>
  typeof details.upstream_status === 'number' ? `${prefix}: HTTP ${details.upstream_status}` : prefix

// One catalog for every answer the service writes: error codes and the few success texts.
const CATALOG: Record<Locale, Record<ErrorCode | SuccessText, Text>> = {
  'zh-CN': {
    VALIDATION_FAILED: withReason('无效的请求数据'),
    INVALID_JSON: '请求体不是有效的 JSON',
    BAD_REQUEST: '请求无效',
    UNAUTHORIZED: 'API 密钥无效或缺失',
    FORBIDDEN: '禁止访问',
    NOT_FOUND: '请求的资源不存在',
    METHOD_NOT_ALLOWED: '不支持该请求方法',
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
    TOKEN_OK: '令牌获取成功'
  },
  en: {
    VALIDATION_FAILED: withReason('Invalid request data'),
    INVALID_JSON: 'The request body is not valid JSON',
    BAD_REQUEST: 'Bad request',
    UNAUTHORIZED: 'The API key is missing or invalid',
    FORBIDDEN: 'Forbidden',
    NOT_FOUND: 'The requested resource does not exist',
    METHOD_NOT_ALLOWED: 'Method not allowed',
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
    TOKEN_OK: 'Access token issued'
  }
}

export type SuccessText = 'HEALTH_OK' | 'READY_OK' | 'TOKEN_OK'

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
