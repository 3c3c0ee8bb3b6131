import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { existsSync, readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'
import envSchema from 'env-schema'
import { ConfigError } from '../lib/http/index.js'
import type { BrokerSetup } from '../lib/coze/index.js'
import { parseHostLimits } from '../lib/relay/index.js'
import { loadBrokerDocument, resolveBroker } from './broker.js'
import { type FeishuAppSetup, loadFeishuApps } from './feishu.js'

export { ConfigError }

const DURATION = '\\d{1,9}(ms|s|m|h|d)'

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
  MAX_CONNECTIONS_PER_IP: Type.Integer({ minimum: 1, maximum: 1000000, default: 256, description: 'Connections from one peer address (the socket\'s, never X-Forwarded-For)' }),
  HEADERS_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 600000, default: 10000, description: 'A connection that has not sent a whole request head by then is closed' }),
  SHUTDOWN_GRACE_MS: Type.Integer({ minimum: 0, maximum: 300000, default: 20000, description: 'Above RESEND_TIMEOUT_MS, so that a delivery in flight finishes on SIGTERM; ECS stopTimeout above it' }),
  TRUST_PROXY: Type.String({ pattern: '^(true|false|[0-9a-fA-F.:/, ]+)$', default: 'false', description: 'false, CIDRs or addresses of the balancers, a hop count, or true (unsafe)' }),

  ROUTES: Type.String({ pattern: '^\\s*(token|resend|augment)?(\\s*,\\s*(token|resend|augment))*\\s*$', default: 'token,resend,augment', description: 'What this instance serves: token, resend, augment' }),

  // Credentials
  JWT_PRIVATE_KEY: Type.Optional(Type.String()),
  JWT_PRIVATE_KEY_FILE: Type.Optional(Type.String()),
  EXPECTED_COZE_API_KEY: Type.Optional(Type.String()),

  // Several Coze apps and scoped callers (the broker): a document, as a file or inline
  COZE_APPS_FILE: Type.Optional(Type.String({ description: 'Path of the apps-and-callers document (JSON, or YAML by .yaml/.yml)' })),
  COZE_APPS: Type.Optional(Type.String({ description: 'The same document as inline JSON' })),

  // Coze token exchange
  COZE_API_URL: url('Coze OAuth token endpoint', 'https://api.coze.cn/api/permission/oauth2/token'),
  COZE_APP_ID: Type.Optional(Type.String()),
  COZE_ISS_FROM_CALLER_KEY: Type.Boolean({ default: false }),
  COZE_JWT_AUDIENCE: Type.Optional(Type.String()),
  COZE_JWT_TTL_SECONDS: Type.Integer({ minimum: 30, maximum: 86400, default: 600 }),
  COZE_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 120000, default: 10000 }),
  COZE_TOKEN_REUSE_SECONDS: Type.Integer({ minimum: 0, maximum: 86399, default: 60 }),
  COZE_MAX_PENDING_EXCHANGES: Type.Integer({ minimum: 1, maximum: 100000, default: 1000 }),
  COZE_FAILURE_SHARE_MS: Type.Integer({ minimum: 0, maximum: 60000, default: 2000, description: 'With TOKEN_CACHE=redis: how long a failed exchange is the answer of the instances waiting on the same token' }),

  // Resend relay
  RESEND_ALLOWED_HOSTS: Type.String({ default: 'open.feishu.cn,open.larksuite.com' }),
  RESEND_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 120000, default: 15000 }),
  RESEND_MAX_RESPONSE_BYTES: Type.Integer({ minimum: 1024, maximum: 104857600, default: 5242880 }),
  JSONPATH_WORKERS: Type.Integer({ minimum: 1, maximum: 64, default: 1, description: 'Worker threads evaluating json_parse expressions (and re-serializing bodies with numbers a parse would change)' }),
  JSONPATH_TIMEOUT_MS: Type.Integer({ minimum: 10, maximum: 60000, default: 200, description: 'All json_parse expressions of one request together; past it 400 COMMAND_FAILED and the worker is replaced' }),
  RESEND_QUEUE: Type.Union([Type.Literal('off'), Type.Literal('redis')], { default: 'off', description: 'Queued delivery ("delivery": "queued"): off, or redis (REDIS_URL, REDIS_KEY_PREFIX)' }),
  RESEND_QUEUE_SECRET: Type.Optional(Type.String({ description: 'base64 of 32 bytes: the AES-256-GCM key of queued jobs at rest (required for queued delivery)' })),
  RESEND_WORKERS: Type.Integer({ minimum: 0, maximum: 256, default: 4, description: 'Queued jobs one instance delivers at once; 0 delivers none (it accepts and answers only)' }),
  RESEND_JOB_LOCK_MS: Type.Integer({ minimum: 500, maximum: 600000, default: 30000, description: 'How long a delivering instance holds a job before another may take it over' }),
  RESEND_RETRY_SCHEDULE: Type.String({ pattern: `^\\s*${DURATION}(\\s*,\\s*${DURATION})*\\s*$`, default: '5s,30s,2m,10m,30m,1h,2h,4h', description: 'Waits between a queued job\'s attempts; the last repeats until RESEND_MAX_AGE' }),
  RESEND_MAX_AGE: Type.String({ pattern: `^\\s*${DURATION}\\s*$`, default: '24h', description: 'How long a queued job is tried before it fails' }),
  RESEND_MAX_QUEUED: Type.Integer({ minimum: 1, maximum: 100000000, default: 100000, description: 'Jobs waiting at once (queued or delayed); past it queued delivery is 503' }),
  RESEND_MAX_QUEUED_BYTES: Type.Integer({ minimum: 65536, maximum: 1099511627776, default: 268435456, description: 'Bytes queued delivery keeps in Redis, requests and kept answers of every job; past it queued delivery is 503 queue_full. A broker caller may hold a quarter of it (max_queued_bytes)' }),
  RESEND_HOST_LIMITS: Type.String({ default: '', description: 'Deliveries per second to a destination host, across instances, now and queued: ENTRY=N/s, comma-separated, the entry as in RESEND_ALLOWED_HOSTS (open.feishu.cn=50/s,*=100/s); the most specific entry applies, to each host it matches. Empty: no limit' }),
  RESEND_DESTINATION_CONTROLS: Type.Union([Type.Literal('on'), Type.Literal('off')], { default: 'on', description: 'Fair shares, host limits, pauses and breakers for queued and relayed deliveries; off: first come, first served, with none of them (to compare: npm run bench measures both)' }),
  RESEND_BREAKER_FAILURES: Type.Integer({ minimum: 1, maximum: 1000, default: 5, description: 'Consecutive failures (no connection, timeout, 5xx) after which deliveries to a host pause' }),
  RESEND_BREAKER_COOLDOWN: Type.String({ pattern: `^\\s*${DURATION}\\s*$`, default: '30s', description: 'The first pause of a failing host; each failed probe doubles it, up to 10 minutes' }),
  RESEND_ALERT_WEBHOOK: Type.Optional(Type.String({ pattern: '^https?://[^\\s/?#]+/[^\\s]*$', description: 'A Feishu or Lark custom bot\'s webhook (https://open.feishu.cn/open-apis/bot/v2/hook/...): told when a queued job fails for good and when a destination pauses or recovers, grouped per destination' })),
  RESEND_ALERT_SECRET: Type.Optional(Type.String({ description: 'The bot\'s signing secret, when its signature check is on' })),
  RESEND_ALERT_INTERVAL: Type.String({ pattern: `^\\s*${DURATION}\\s*$`, default: '5m', description: 'At most one alert per destination in this long, with what happened meanwhile counted in it' }),
  RESEND_QUEUE_PARTITIONS: Type.Integer({ minimum: 1, maximum: 256, default: 1, description: 'The queue as this many BullMQ queues, each under a hash tag of its own: on a Redis Cluster it spreads over the shards (a destination host\'s jobs stay in one)' }),
  FEISHU_APPS_FILE: Type.Optional(Type.String({ description: 'Path of the Feishu apps document (JSON, or YAML by .yaml/.yml): the service fetches their tenant tokens' })),
  FEISHU_APPS: Type.Optional(Type.String({ description: 'The same document as inline JSON' })),

  // Augment OAuth (PKCE)
  AUGMENT_AUTH_URL: url('Augment authorize endpoint', 'https://auth.augmentcode.com/authorize'),
  AUGMENT_CLIENT_ID: Type.String({ minLength: 1, maxLength: 128, default: 'v' }),
  AUGMENT_TENANT_HOSTS: Type.String({ default: '*.augmentcode.com' }),
  AUGMENT_TIMEOUT_MS: Type.Integer({ minimum: 100, maximum: 120000, default: 30000 }),
  OAUTH_STATE_TTL_SECONDS: Type.Integer({ minimum: 10, maximum: 86400, default: 1800 }),
  OAUTH_STATE_MAX_ENTRIES: Type.Integer({ minimum: 1, maximum: 10000000, default: 10000 }),

  // Shared state
  STATE_STORE: Type.Union([Type.Literal('memory'), Type.Literal('redis')], { default: 'memory' }),
  TOKEN_CACHE: Type.Union([Type.Literal('memory'), Type.Literal('redis')], { default: 'memory', description: 'Where Coze tokens are cached: memory (each instance) or redis (shared, encrypted)' }),
  TOKEN_CACHE_SECRET: Type.Optional(Type.String({ description: 'base64 of 32 bytes: the AES-256-GCM key of the shared token cache (required with TOKEN_CACHE=redis)' })),
  REDIS_URL: Type.String({ pattern: '^rediss?://[^,\\s]+(\\s*,\\s*rediss?://[^,\\s]+)*$', default: 'redis://127.0.0.1:6379', description: 'redis:// or rediss:// (TLS); with REDIS_CLUSTER=true, one or more seed nodes, comma-separated' }),
  REDIS_CLUSTER: Type.Boolean({ default: false, description: 'REDIS_URL names nodes of a Redis Cluster (ElastiCache cluster mode, ElastiCache Serverless, Valkey cluster)' }),
  REDIS_TLS_CA_FILE: Type.Optional(Type.String({ description: 'A PEM file of the private CA that signs Redis\'s certificates, trusted beside the system\'s (rediss://)' })),
  REDIS_KEY_PREFIX: Type.String({ maxLength: 64, default: 'aibill:' }),

  // Operations
  DOCS_ENABLED: Type.Boolean({ default: true }),
  METRICS_ENABLED: Type.Boolean({ default: true }),
  METRICS_TOKEN: Type.Optional(Type.String({ description: 'When set, a scrape must send Authorization: Bearer <token>; several tokens are separated by commas' })),
  METRICS_PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 0, description: 'When set, /metrics is served on this port only' }),
  RATE_LIMIT_MAX: Type.Integer({ minimum: 1, maximum: 10000000, default: 120 }),
  RATE_LIMIT_WINDOW: Type.String({ pattern: '^\\d+( ?(ms|millisecond|second|minute|hour|day)s?)?$', default: '1 minute' }),
  RATE_LIMIT_AUTH_URL_MAX: Type.Integer({ minimum: 1, maximum: 10000000, default: 20 }),
  CORS_ORIGINS: Type.String({ default: '' }),
  PRESSURE_MAX_EVENT_LOOP_DELAY_MS: Type.Integer({ minimum: 0, maximum: 60000, default: 1000 }),
  PRESSURE_WARMUP_MS: Type.Integer({ minimum: 0, maximum: 600000, default: 10000 }),
  PRESSURE_MAX_HEAP_USED_BYTES: Type.Integer({ minimum: 0, default: 0 }),
  PRESSURE_MAX_RSS_BYTES: Type.Integer({ minimum: 0, default: 0 }),

  // Console
  CONSOLE_TOKEN: Type.Optional(Type.String({ minLength: 32, maxLength: 256, description: 'Turns on GET /console; signs in as its administrator (at least 32 characters: openssl rand -base64 32)' })),
  CONSOLE_SESSION_MINUTES: Type.Integer({ minimum: 1, maximum: 1440, default: 60 }),
  CONSOLE_SESSION_SECRET: Type.Optional(Type.String({ description: 'base64 of 32 bytes: signs console sessions (default: derived from CONSOLE_TOKEN; needed for broker callers with console and no CONSOLE_TOKEN)' }))
})

export type Config = Static<typeof ConfigSchema>

export type RouteGroup = 'token' | 'resend' | 'augment'

/** Whether ROUTES lists a group: an unlisted one is not registered (404) and not checked by /ready. */
export function serves (config: Config, group: RouteGroup): boolean {
  return config.ROUTES.split(',').some((entry) => entry.trim() === group)
}

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

interface AjvIssue { instancePath: string, keyword?: string, message?: string }

// What a variable with a pattern looks like, for the message of a value that does not match (not the regex).
const EXPECTED_FORM: Record<string, string> = {
  COZE_API_URL: 'an http(s) URL of Coze\'s token endpoint, such as https://api.coze.cn/api/permission/oauth2/token',
  AUGMENT_AUTH_URL: 'an http(s) URL of Augment\'s authorize endpoint, such as https://auth.augmentcode.com/authorize',
  REDIS_URL: 'a redis:// or rediss:// URL, such as redis://:password@host:6379/0 (with REDIS_CLUSTER=true, one or more, comma-separated)',
  TRUST_PROXY: 'false, true, a hop count (1), or the balancers\' addresses or CIDRs, comma-separated',
  ROUTES: 'a comma-separated list of token, resend and augment',
  RATE_LIMIT_WINDOW: 'a number of milliseconds, or a duration such as 30 seconds, 1 minute, 1 hour',
  RESEND_ALERT_WEBHOOK: 'an http(s) URL of a custom bot\'s webhook, such as https://open.feishu.cn/open-apis/bot/v2/hook/<token>',
  RESEND_ALERT_INTERVAL: 'a duration such as 5m, 30s, 1h',
  RESEND_BREAKER_COOLDOWN: 'a duration such as 30s, 2m'
}

/** One line per variable that is wrong, saying what it may be: enums list their values. Values are not repeated. */
export function describeConfigIssues (issues: AjvIssue[]): string {
  const byVariable = new Map<string, AjvIssue[]>()
  for (const issue of issues) {
    const name = issue.instancePath.replace(/^\//, '').split('/')[0] as string
    byVariable.set(name, [...(byVariable.get(name) ?? []), issue])
  }
  const properties = ConfigSchema.properties as Record<string, TSchema>
  return [...byVariable].map(([name, found]) => {
    // The enums (LOG_LEVEL, STATE_STORE) are unions of literals: name their values, not Ajv's "anyOf".
    const literals = (properties[name] as TSchema).anyOf as TSchema[] | undefined
    if (literals !== undefined) return `${name} must be one of: ${literals.map((option) => String(option.const)).join(', ')}`
    const first = found[0] as AjvIssue
    if (first.keyword === 'pattern' && name in EXPECTED_FORM) return `${name} must be ${EXPECTED_FORM[name] as string}`
    return `${name} ${String(first.message)}`
  }).join('; ')
}

function editDistance (a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0] as number
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const above = row[j] as number
      row[j] = Math.min(above + 1, (row[j - 1] as number) + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1))
      diagonal = above
    }
  }
  return row[b.length] as number
}

/**
 * The variable a misspelt name was probably meant to be: two edits away at most, or one word of several changed
 * (JWT_PRIVATE_KEY_PATH for JWT_PRIVATE_KEY_FILE). Names of one word (PATH, HOME) are never guessed at.
 */
export function didYouMean (name: string): string | undefined {
  if (!/^[A-Z0-9]+(_[A-Z0-9]+)+$/.test(name) || name in ConfigSchema.properties) return undefined
  const words = name.split('_')
  let best: { known: string, distance: number } | undefined
  for (const known of Object.keys(ConfigSchema.properties)) {
    if (!known.includes('_')) continue
    const knownWords = known.split('_')
    const distance = editDistance(name, known)
    const oneWord = words.length >= 3 && knownWords.length === words.length && knownWords.filter((word, i) => word !== words[i]).length === 1
    if ((distance <= 2 || oneWord) && (best === undefined || distance < best.distance)) best = { known, distance }
  }
  return best?.known
}

/** REDIS_TLS_CA_FILE, checked at start: a file that cannot be read, or holds no certificate, stops it. */
function readCaFile (file: string): void {
  let pem: string
  try {
    pem = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ConfigError(`REDIS_TLS_CA_FILE (${file}) cannot be read (${String((err as NodeJS.ErrnoException).code)})`)
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(`REDIS_TLS_CA_FILE (${file}) holds no PEM certificate`)
}

export interface LoadConfigOptions {
  /** Values that win over everything (tests pass their whole configuration here, and the variables it names). */
  overrides?: Partial<Record<keyof Config, unknown>> & Record<string, unknown>
  /** The environment to read: process.env by default; false reads none (tests). */
  env?: Record<string, string | undefined> | false
  /** The `.env` file read beneath the environment, when it exists (default: `.env` in the working directory). */
  dotenvPath?: string
}

export interface LoadedConfig {
  config: Config
  /** The apps and callers of COZE_APPS_FILE or COZE_APPS, their keys looked up; null in single-app mode. */
  broker: BrokerSetup | null
  /** The Feishu apps whose tenant tokens the relay fetches (FEISHU_APPS_FILE, FEISHU_APPS or feishu_apps). */
  feishuApps: FeishuAppSetup[]
  /** Said once at start by the config plugin (a likely misspelt variable, a setting that is unsafe). */
  warnings: string[]
}

/**
 * The one configuration loader, for the server, the tests and the coze-jwt command: the environment (and `.env`,
 * which the real environment overrides) under the overrides, validated against ConfigSchema once. An invalid
 * value throws ConfigError naming each variable and what it may be.
 */
export function loadConfig ({ overrides = {}, env = process.env, dotenvPath = '.env' }: LoadConfigOptions = {}): LoadedConfig {
  // The real environment wins over .env, and the overrides over both. An empty value is no value, wherever it is
  // written (the quick start leaves the single-app lines of .env empty): the default, or what is beneath it.
  const set = (source: Record<string, unknown>): Record<string, unknown> => Object.fromEntries(Object.entries(source).filter(([, value]) => value !== undefined && value !== ''))
  const fromFile = env !== false && existsSync(dotenvPath) ? parseEnv(readFileSync(dotenvPath, 'utf8')) : {}
  const data = { ...set(fromFile), ...set(env === false ? {} : env), ...set(overrides) }
  let config: Config
  try {
    config = envSchema<Config>({ schema: structuredClone(ConfigSchema), data, env: false, dotenv: false })
  } catch (err) {
    const issues = (err as { errors?: AjvIssue[] }).errors
    /* c8 ignore next - env-schema always attaches Ajv's errors to a validation failure */
    throw new ConfigError(issues === undefined ? (err as Error).message : describeConfigIssues(issues))
  }
  const explicitlySet = new Set(Object.keys(data))
  const document = loadBrokerDocument(config, explicitlySet)
  const broker = document === null ? null : resolveBroker(document, data)
  const feishuApps = loadFeishuApps(config, document === null ? null : { apps: document.document.feishu_apps, source: document.source }, data)
  for (const caller of broker?.callers ?? []) {
    const unknown = caller.feishuApps.find((name) => !feishuApps.some((app) => app.name === name))
    if (unknown !== undefined) throw new ConfigError(`${(document as { source: string }).source}: callers.${caller.name}.feishu_apps names ${unknown}, which is not a Feishu app (feishu_apps, FEISHU_APPS_FILE or FEISHU_APPS)`)
  }
  // An origin is what api_base takes in the apps document; the single app's variable takes the endpoint itself.
  if (broker === null && new URL(config.COZE_API_URL).pathname === '/') {
    throw new ConfigError(`COZE_API_URL is an origin; it takes the token endpoint: ${new URL(config.COZE_API_URL).origin}/api/permission/oauth2/token`)
  }
  // Without a secret queued delivery is off and says so (503 NOT_CONFIGURED, /ready); a wrong one stops the start.
  if (config.RESEND_QUEUE === 'redis' && config.RESEND_QUEUE_SECRET !== undefined && !/^[A-Za-z0-9+/]{43}=$/.test(config.RESEND_QUEUE_SECRET)) {
    throw new ConfigError('RESEND_QUEUE_SECRET is not 32 random bytes in base64 (openssl rand -base64 32)')
  }
  try {
    parseHostLimits(config.RESEND_HOST_LIMITS)
  } catch (err) {
    throw new ConfigError((err as Error).message)
  }
  if (config.RESEND_HOST_LIMITS.trim() !== '' && config.RESEND_DESTINATION_CONTROLS === 'off') {
    throw new ConfigError('RESEND_HOST_LIMITS is set but RESEND_DESTINATION_CONTROLS=off: the limits would not hold; remove one of them')
  }
  if (config.RESEND_HOST_LIMITS.trim() !== '' && (config.RESEND_QUEUE !== 'redis' || config.RESEND_QUEUE_SECRET === undefined) && serves(config, 'resend')) {
    throw new ConfigError('RESEND_HOST_LIMITS needs queued delivery (RESEND_QUEUE=redis and RESEND_QUEUE_SECRET): the limits are kept in its Redis, for every instance')
  }
  if (config.RESEND_ALERT_WEBHOOK !== undefined && (config.RESEND_QUEUE !== 'redis' || config.RESEND_QUEUE_SECRET === undefined) && serves(config, 'resend')) {
    throw new ConfigError('RESEND_ALERT_WEBHOOK needs queued delivery (RESEND_QUEUE=redis and RESEND_QUEUE_SECRET): it tells of queued jobs and paused destinations')
  }
  if (!config.REDIS_CLUSTER && config.REDIS_URL.includes(',')) {
    throw new ConfigError('REDIS_URL names several nodes: set REDIS_CLUSTER=true for a Redis Cluster, or give one URL')
  }
  if (config.REDIS_TLS_CA_FILE !== undefined) readCaFile(config.REDIS_TLS_CA_FILE)
  if (config.TOKEN_CACHE === 'redis' && !/^[A-Za-z0-9+/]{43}=$/.test(config.TOKEN_CACHE_SECRET ?? '')) {
    throw new ConfigError('TOKEN_CACHE=redis needs TOKEN_CACHE_SECRET: 32 random bytes in base64 (openssl rand -base64 32)')
  }
  if (config.CONSOLE_SESSION_SECRET !== undefined && !/^[A-Za-z0-9+/]{43}=$/.test(config.CONSOLE_SESSION_SECRET)) {
    throw new ConfigError('CONSOLE_SESSION_SECRET is not 32 random bytes in base64 (openssl rand -base64 32)')
  }
  // Every instance signs and checks the console's sessions with the same key: one the operator gives.
  const consoleCaller = broker?.callers.find((caller) => caller.console !== false)
  if (consoleCaller !== undefined && config.CONSOLE_TOKEN === undefined && config.CONSOLE_SESSION_SECRET === undefined) {
    throw new ConfigError(`callers.${consoleCaller.name} has console access: set CONSOLE_SESSION_SECRET (openssl rand -base64 32), which signs the console's sessions on every instance`)
  }
  // A token list of spaces or commas would leave /metrics open while looking protected. (Empty is unset.)
  if (config.METRICS_TOKEN !== undefined && config.METRICS_TOKEN.split(',').every((token) => token.trim() === '')) {
    throw new ConfigError('METRICS_TOKEN holds no token: give one or more tokens separated by commas, or leave it unset')
  }
  const warnings: string[] = []
  for (const name of Object.keys(data)) {
    const meant = didYouMean(name)
    if (meant !== undefined) warnings.push(`${name} is not a variable of this service: did you mean ${meant}?`)
  }
  if (config.TRUST_PROXY === 'true') {
    warnings.push('TRUST_PROXY=true believes the leftmost X-Forwarded-For entry, which any client can write: rate limits can be dodged. Use the balancer\'s CIDR or a hop count (TRUST_PROXY=1).')
  }
  if (config.SHUTDOWN_GRACE_MS <= config.RESEND_TIMEOUT_MS && serves(config, 'resend')) {
    warnings.push(`SHUTDOWN_GRACE_MS (${config.SHUTDOWN_GRACE_MS}) is not above RESEND_TIMEOUT_MS (${config.RESEND_TIMEOUT_MS}): on SIGTERM a delivery in flight may be cut, and a queued one tried again by another instance`)
  }
  if (config.COZE_ISS_FROM_CALLER_KEY && config.COZE_APP_ID === undefined) {
    warnings.push('COZE_ISS_FROM_CALLER_KEY=true: the caller\'s key is sent to Coze as the JWT iss in every exchange. Set COZE_APP_ID instead.')
  }
  return { config, broker, feishuApps, warnings }
}
