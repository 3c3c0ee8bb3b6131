import { createHash } from 'node:crypto'
import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors'
import { type BrokerSetup, wholeMatch } from '../lib/coze/index.js'
import { readConfigDocument } from '../lib/ops/index.js'
import { ConfigError } from '../lib/http/index.js'
import { FEISHU_APP_NAME, FeishuApps } from './feishu.js'
import { MAX_DURATION_SECONDS, TokenData } from './token.js'

const NAME = '^[a-z0-9][a-z0-9-]{0,63}$'
const ROUTE_GROUPS = ['token', 'resend', 'augment'] as const

const KeySource = Type.Union([
  Type.Object({ kid: Type.String({ minLength: 1, maxLength: 128 }), private_key_env: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }) }, { additionalProperties: false }),
  Type.Object({ kid: Type.String({ minLength: 1, maxLength: 128 }), private_key_file: Type.String({ minLength: 1 }) }, { additionalProperties: false })
])

export const BrokerApp = Type.Object({
  app_id: Type.String({ minLength: 1, maxLength: 128, description: 'The Coze OAuth app id: the JWT iss.' }),
  api_base: Type.String({ pattern: '^https?://[^/?#\\s]+/?$', description: 'https://api.coze.cn or https://api.coze.com; the JWT aud is its host.' }),
  keys: Type.Array(KeySource, { minItems: 1, maxItems: 3, description: 'Up to three key pairs; the first signs.' }),
  account_id: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' })),
  jwt_audience: Type.Optional(Type.String({ minLength: 1, maxLength: 253, description: 'The JWT aud; default the host of api_base. For apps reached through a proxy.' })),
  enterprise_id: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' })),
  duration_seconds: Type.Optional(Type.Object({
    default: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_DURATION_SECONDS })),
    max: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_DURATION_SECONDS }))
  }, { additionalProperties: false }))
}, { additionalProperties: false })

export const BrokerCaller = Type.Object({
  key_sha256: Type.Optional(Type.String({ pattern: '^[0-9a-fA-F]{64}$' })),
  key_env: Type.Optional(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' })),
  apps: Type.Array(Type.String({ pattern: NAME }), { maxItems: 1000 }),
  routes: Type.Optional(Type.Array(Type.Union(ROUTE_GROUPS.map((route) => Type.Literal(route))), { maxItems: 3 })),
  session_name: Type.Optional(Type.String({ minLength: 1, maxLength: 512, description: 'A pattern the whole session_name must match.' })),
  scope: Type.Optional(Type.Object({
    permissions: Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { maxItems: 100 }),
    bot_ids: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { maxItems: 1000 }))
  }, { additionalProperties: false })),
  device: Type.Optional(Type.Boolean()),
  feishu_apps: Type.Optional(Type.Array(Type.String({ pattern: FEISHU_APP_NAME }), { maxItems: 256, description: 'The Feishu apps whose tokens the caller\'s relayed requests may carry.' })),
  max_queued_bytes: Type.Optional(Type.Integer({ minimum: 1024, maximum: 1099511627776, description: 'The bytes of queued delivery the caller may hold in Redis (default: a quarter of RESEND_MAX_QUEUED_BYTES).' })),
  console: Type.Optional(Type.Union([Type.Boolean(), Type.Literal('admin')], { description: 'Signs in to /console with its key: true sees its own jobs and apps, "admin" everything.' }))
}, { additionalProperties: false })

export const BrokerDocument = Type.Object({
  apps: Type.Record(Type.String({ pattern: NAME }), BrokerApp, { additionalProperties: false, minProperties: 1 }),
  callers: Type.Record(Type.String({ pattern: NAME }), BrokerCaller, { additionalProperties: false, minProperties: 1 }),
  feishu_apps: Type.Optional(FeishuApps)
}, { additionalProperties: false })
export type BrokerDocument = Static<typeof BrokerDocument>

const checkDocument = TypeCompiler.Compile(BrokerDocument)

const NAME_RULE = 'lower-case letters, digits and -, at most 64, starting with a letter or a digit'
const dotted = (path: string): string => path.replace(/^\//, '').replace(/\//g, '.')

function valueAt (document: unknown, path: string): unknown {
  let at = document
  for (const step of path.split('/').slice(1)) at = (at as Record<string, unknown> | undefined)?.[step.replace(/~1/g, '/').replace(/~0/g, '~')]
  return at
}

/** A document error in the words of the document: the field, and what it may be. */
function describeDocumentIssue (issue: ValueError, document: unknown): string {
  const field = dotted(issue.path) || '(the document)'
  if (issue.type === ValueErrorType.ObjectAdditionalProperties) {
    const name = issue.path.split('/').at(-1) as string
    const parent = dotted(issue.path.split('/').slice(0, -1).join('/')) || '(the document)'
    const schema = issue.schema as { properties?: Record<string, unknown> }
    if (schema.properties === undefined) return `${parent}: ${name} is not a valid name (${NAME_RULE})`
    return `${parent}: ${name} is not a field (${Object.keys(schema.properties).join(', ')})`
  }
  if (issue.type === ValueErrorType.Union && /^callers\.[^.]+\.console$/.test(field)) return `${field} takes true, false or "admin"`
  if (issue.type === ValueErrorType.Union) {
    // The key sources: { kid, private_key_env } or { kid, private_key_file }.
    const variants = (issue.schema as unknown as { anyOf: Array<{ properties: Record<string, unknown> }> }).anyOf.map((variant) => Object.keys(variant.properties))
    const value = valueAt(document, issue.path)
    const known = new Set(variants.flat())
    const unknown = typeof value === 'object' && value !== null ? Object.keys(value).find((key) => !known.has(key)) : undefined
    const common = [...known].filter((key) => variants.every((variant) => variant.includes(key)))
    const choices = [...known].filter((key) => !common.includes(key))
    if (unknown !== undefined) return `${field}: ${unknown} is not a field (${[...common, choices.join(' or ')].join(', and ')})`
    return `${field} needs ${[...common, `exactly one of ${choices.join(' and ')}`].join(' and ')}`
  }
  if (issue.type === ValueErrorType.StringPattern && /\.(apps|callers)$|^callers\.[^.]+\.apps\.\d+$/.test(field)) return `${field} is not a valid app name (${NAME_RULE})`
  return `${field} ${issue.message.toLowerCase()}`
}

/** The variables that configure the single app; with COZE_APPS* they are refused (one way to configure). */
export const SINGLE_APP_VARIABLES = ['JWT_PRIVATE_KEY', 'JWT_PRIVATE_KEY_FILE', 'COZE_APP_ID', 'COZE_API_URL', 'COZE_JWT_AUDIENCE', 'EXPECTED_COZE_API_KEY'] as const

/**
 * Reads and validates the apps-and-callers document from COZE_APPS_FILE (JSON, or YAML by extension) or COZE_APPS
 * (inline JSON). Null when neither is set (single-app mode). An error names the source and the field; no value
 * is repeated (the document names where keys are, it holds none).
 */
/** The variables that say where the document is, and the one that clashes with it. */
export interface BrokerVariables { COZE_APPS_FILE?: string | undefined, COZE_APPS?: string | undefined, COZE_ISS_FROM_CALLER_KEY: boolean }

export function loadBrokerDocument (config: BrokerVariables, explicitlySet: ReadonlySet<string>): { document: BrokerDocument, source: string } | null {
  // (An empty variable is unset: loadConfig left it out.)
  const { COZE_APPS_FILE: file, COZE_APPS: inline } = config
  if (file === undefined && inline === undefined) return null
  if (file !== undefined && inline !== undefined) throw new ConfigError('COZE_APPS_FILE and COZE_APPS are both set: use one')
  const source = file !== undefined ? `COZE_APPS_FILE (${file})` : 'COZE_APPS'
  const clashing: string[] = SINGLE_APP_VARIABLES.filter((name) => explicitlySet.has(name))
  if (config.COZE_ISS_FROM_CALLER_KEY) clashing.push('COZE_ISS_FROM_CALLER_KEY')
  if (clashing.length > 0) throw new ConfigError(`${source} configures the apps and callers: remove ${clashing.join(', ')} (one way to configure)`)

  const value = readConfigDocument(source, file, inline)
  const issue = checkDocument.Errors(value).First()
  if (issue !== undefined) throw new ConfigError(`${source}: ${describeDocumentIssue(issue, value)}`)
  const document = value as BrokerDocument
  for (const [name, app] of Object.entries(document.apps)) {
    if (app.account_id !== undefined && app.enterprise_id !== undefined) throw new ConfigError(`${source}: apps.${name} has both account_id and enterprise_id: use one`)
    const duration = app.duration_seconds
    if (duration?.default !== undefined && duration.max !== undefined && duration.default > duration.max) throw new ConfigError(`${source}: apps.${name}.duration_seconds.default is above its max`)
  }
  for (const [name, caller] of Object.entries(document.callers)) {
    if ((caller.key_sha256 === undefined) === (caller.key_env === undefined)) throw new ConfigError(`${source}: callers.${name} needs exactly one of key_sha256 and key_env`)
    const unknown = caller.apps.find((app) => !(app in document.apps))
    if (unknown !== undefined) throw new ConfigError(`${source}: callers.${name}.apps names ${unknown}, which is not in apps`)
    if (caller.session_name !== undefined) {
      try {
        wholeMatch(caller.session_name)
      } catch (err) {
        throw new ConfigError(`${source}: callers.${name}.session_name is not a pattern RE2 takes (linear-time matching): ${(err as Error).message}`)
      }
    }
  }
  return { document, source }
}

/** The document with what it names looked up in the environment: key PEMs and caller keys (as digests). */
export function resolveBroker (loaded: { document: BrokerDocument, source: string }, environment: Readonly<Record<string, unknown>>): BrokerSetup {
  const { document, source } = loaded
  const variable = (name: string, field: string): string => {
    const value = environment[name]
    if (typeof value !== 'string' || value.trim() === '') throw new ConfigError(`${source}: ${field} names ${name}, which is not set`)
    return value
  }
  const setup: BrokerSetup = {
    apps: Object.entries(document.apps).map(([name, app]) => ({
      name,
      appId: app.app_id,
      apiBase: new URL(app.api_base),
      jwtAudience: app.jwt_audience,
      accountId: app.account_id,
      enterpriseId: app.enterprise_id,
      defaultDuration: app.duration_seconds?.default ?? Math.min(900, app.duration_seconds?.max ?? 900),
      maxDuration: app.duration_seconds?.max ?? MAX_DURATION_SECONDS,
      keys: app.keys.map((key, index) => 'private_key_env' in key
        ? { kid: key.kid, pem: variable(key.private_key_env, `apps.${name}.keys.${index}.private_key_env`), origin: key.private_key_env }
        : { kid: key.kid, file: key.private_key_file, origin: key.private_key_file })
    })),
    callers: Object.entries(document.callers).map(([name, caller]) => ({
      name,
      digest: caller.key_sha256 !== undefined
        ? Buffer.from(caller.key_sha256, 'hex')
        : createHash('sha256').update(variable(caller.key_env as string, `callers.${name}.key_env`)).digest(),
      apps: caller.apps,
      routes: caller.routes ?? ['token'],
      sessionName: caller.session_name,
      scope: caller.scope === undefined ? undefined : { permissions: caller.scope.permissions, botIds: caller.scope.bot_ids },
      device: caller.device ?? false,
      feishuApps: caller.feishu_apps ?? [],
      maxQueuedBytes: caller.max_queued_bytes,
      console: caller.console === 'admin' ? 'admin' : caller.console === true ? 'own' : false
    }))
  }
  // One key, one caller: otherwise the later caller would silently take the key, and the other's rights with it.
  const byKey = new Map<string, string>()
  for (const caller of setup.callers) {
    const digest = caller.digest.toString('hex')
    const other = byKey.get(digest)
    if (other !== undefined) throw new ConfigError(`${source}: callers.${other} and callers.${caller.name} have the same key: give each caller its own`)
    byKey.set(digest, caller.name)
  }
  return setup
}

export const ScopeBody = Type.Object({
  account_permission: Type.Object({
    permission_list: Type.Array(Type.String({ minLength: 1, maxLength: 128 }), { minItems: 1, maxItems: 100 })
  }, { additionalProperties: false }),
  attribute_constraint: Type.Optional(Type.Object({
    connector_bot_chat_attribute: Type.Object({
      bot_id_list: Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { minItems: 1, maxItems: 100 })
    }, { additionalProperties: false })
  }, { additionalProperties: false }))
}, { additionalProperties: false, description: 'Coze\'s scope for channel apps; within the caller\'s ceiling.' })
export type ScopeBody = Static<typeof ScopeBody>

export const BrokerTokenBody = Type.Object({
  app: Type.String({ pattern: NAME, description: 'The name of the app in the document.' }),
  session_name: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Coze per-user isolation (the session_name claim).' })),
  duration_seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_DURATION_SECONDS, description: 'At most the app\'s max; default the app\'s default (900).' })),
  scope: Type.Optional(ScopeBody),
  device_id: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  custom_consumer: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })),
  min_validity_seconds: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_DURATION_SECONDS, description: 'A cached token is handed out only while it stays valid this long. Default 60; at most the duration less a minute (half of it under two minutes).' }))
}, {
  additionalProperties: false,
  examples: [{ app: 'bills-cn', session_name: 'user-1a2b3c4d', duration_seconds: 900 }]
})
export type BrokerTokenBody = Static<typeof BrokerTokenBody>

export const BrokerTokenData = Type.Composite([TokenData, Type.Object({ app: Type.String({ description: 'The app the token is for.' }) })], { examples: [{ access_token: 'czs_xxx', expires_in: 1721135859, token_type: 'Bearer', app: 'bills-cn' }] })
