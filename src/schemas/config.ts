import { Type, type Static } from '@sinclair/typebox'

const url = (description: string, defaultValue: string) =>
  Type.String({ pattern: '^https?://[^\\s/?#]+(/[^\\s]*)?$', default: defaultValue, description })

/** Every variable the service reads. Defaults here are the documented defaults (.env.example, README). */
export const ConfigSchema = Type.Object({
  // Server
  PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 9000 }),
  HOST: Type.String({ minLength: 1, default: '0.0.0.0' }),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((level) => Type.Literal(level)), { default: 'info' }),
  BODY_LIMIT_BYTES: Type.Integer({ minimum: 1024, maximum: 104857600, default: 1048576 }),
  BODY_MAX_DEPTH: Type.Integer({ minimum: 2, maximum: 512, default: 64 }),
  WRITE_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 600000, default: 30000 }),
  MAX_CONNECTIONS: Type.Integer({ minimum: 1, maximum: 1000000, default: 10000 }),
  SHUTDOWN_GRACE_MS: Type.Integer({ minimum: 0, maximum: 300000, default: 10000 }),
  TRUST_PROXY: Type.String({ pattern: '^(true|false|[0-9a-fA-F.:/, ]+)$', default: 'false', description: 'false, CIDRs or addresses of the balancers, a hop count, or true (unsafe)' }),

  // Credentials
  JWT_PRIVATE_KEY: Type.Optional(Type.String()),
  JWT_PRIVATE_KEY_FILE: Type.Optional(Type.String()),
  EXPECTED_COZE_API_KEY: Type.Optional(Type.String()),

  // Coze token exchange
  COZE_API_URL: url('Coze OAuth token endpoint', 'https://api.coze.cn/api/permission/oauth2/token'),
  COZE_APP_ID: Type.Optional(Type.String()),
  COZE_ISS_FROM_CALLER_KEY: Type.Boolean({ default: false }),
  COZE_JWT_AUDIENCE: Type.Optional(Type.String()),
  COZE_JWT_TTL_SECONDS: Type.Integer({ minimum: 30, maximum: 86400, default: 600 }),
  COZE_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 120000, default: 10000 }),
  COZE_TOKEN_REUSE_SECONDS: Type.Integer({ minimum: 0, maximum: 86399, default: 60 }),
  COZE_MAX_PENDING_EXCHANGES: Type.Integer({ minimum: 1, maximum: 100000, default: 1000 }),

  // Resend relay
  RESEND_ALLOWED_HOSTS: Type.String({ default: 'open.feishu.cn,open.larksuite.com' }),
  RESEND_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 120000, default: 15000 }),
  RESEND_MAX_RESPONSE_BYTES: Type.Integer({ minimum: 1024, maximum: 104857600, default: 5242880 }),

  // Augment OAuth (PKCE)
  AUGMENT_AUTH_URL: url('Augment authorize endpoint', 'https://auth.augmentcode.com/authorize'),
  AUGMENT_CLIENT_ID: Type.String({ minLength: 1, maxLength: 128, default: 'v' }),
  AUGMENT_TENANT_HOSTS: Type.String({ default: '*.augmentcode.com' }),
  AUGMENT_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 120000, default: 30000 }),
  OAUTH_STATE_TTL_SECONDS: Type.Integer({ minimum: 10, maximum: 86400, default: 1800 }),
  OAUTH_STATE_MAX_ENTRIES: Type.Integer({ minimum: 1, maximum: 10000000, default: 10000 }),

  // Shared state
  STATE_STORE: Type.Union([Type.Literal('memory'), Type.Literal('redis')], { default: 'memory' }),
  REDIS_URL: Type.String({ pattern: '^rediss?://', default: 'redis://127.0.0.1:6379' }),
  REDIS_KEY_PREFIX: Type.String({ maxLength: 64, default: 'aibill:' }),

  // Operations
  DOCS_ENABLED: Type.Boolean({ default: true }),
  METRICS_ENABLED: Type.Boolean({ default: true }),
  METRICS_TOKEN: Type.Optional(Type.String({ description: 'When set, a scrape must send Authorization: Bearer <token>' })),
  METRICS_PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 0, description: 'When set, /metrics is served on this port only' }),
  RATE_LIMIT_MAX: Type.Integer({ minimum: 1, maximum: 10000000, default: 120 }),
  RATE_LIMIT_WINDOW: Type.String({ pattern: '^\\d+( ?(ms|millisecond|second|minute|hour|day)s?)?$', default: '1 minute' }),
  RATE_LIMIT_AUTH_URL_MAX: Type.Integer({ minimum: 1, maximum: 10000000, default: 20 }),
  CORS_ORIGINS: Type.String({ default: '' }),
  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: Type.Integer({ minimum: 0, maximum: 60000, default: 1000 }),
  PRESSURE_WARMUP_MS: Type.Integer({ minimum: 0, maximum: 600000, default: 10000 }),
  PRESSURE_MAX_HEAP_USED_BYTES: Type.Integer({ minimum: 0, default: 0 }),
  PRESSURE_MAX_RSS_BYTES: Type.Integer({ minimum: 0, default: 0 })
})

export type Config = Static<typeof ConfigSchema>

/** Fastify's trustProxy: whom to believe about the client's address in X-Forwarded-For. */
export type TrustProxy = boolean | string | ((address: string, hop: number) => boolean)

/**
 * TRUST_PROXY: `false`; the balancers' addresses or CIDRs, comma-separated; a hop count (`1`: the one balancer in
 * front, so the client is the address it appended); or `true`, which believes the leftmost entry, one the client
 * writes itself. (Fastify turns a plain number into "trust nothing", so the count is given as a function.)
 */
export function trustProxySetting (value: string): TrustProxy {
  if (value === 'true') return true
  if (value === 'false') return false
  if (/^\s*\d+\s*$/.test(value)) {
    const hops = Number(value)
    return (_address: string, hop: number) => hop < hops
  }
  return value
}
