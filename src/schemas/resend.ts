import { Type, type Static } from '@sinclair/typebox'
import { DEFAULT_METHOD, RESEND_METHODS } from '../lib/relay.js'
import { MAX_REPORTED_PATHS } from '../lib/json-path.js'
import { CommandsSchema } from '../lib/resend-commands.js'

/**
 * Header names are RFC 9110 tokens; values are visible Latin-1 with spaces and tabs (no control characters).
 * TypeBox's Record turns the key schema into `patternProperties` only: without `additionalProperties: false`
 * a name outside the pattern would not be checked at all, nor would its value.
 */
export function ResendHeaders () {
  return Type.Record(
    Type.String({ pattern: '^[!#$%&\'*+.^_`|~0-9A-Za-z-]{1,256}$' }),
    Type.String({ maxLength: 16384, pattern: '^[\\t\\x20-\\x7e\\x80-\\xff]*$' }),
    { maxProperties: 64, additionalProperties: false, description: 'Headers sent upstream (hop-by-hop headers and Host are dropped). Names are HTTP tokens; values printable Latin-1.' }
  )
}

export const ResendBody = Type.Object({
  location: Type.String({
    minLength: 1,
    maxLength: 4096,
    pattern: '^[Hh][Tt][Tt][Pp][Ss]?://',
    description: 'Absolute http(s) URL to send to; it must pass RESEND_ALLOWED_HOSTS.'
  }),
  method: Type.Optional(Type.Union(RESEND_METHODS.map((method) => Type.Literal(method)), { default: DEFAULT_METHOD })),
  headers: Type.Optional(ResendHeaders()),
  params: Type.Optional(Type.Unknown({ description: 'Any JSON value, sent as the JSON body (not for GET).' })),
  commands: Type.Optional(CommandsSchema),
  max_attempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 5, default: 1, description: 'Retries only after a refused or reset connection, 429 or 503.' })),
  coze_api_key: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, description: 'The service key, when not sent as X-API-Key; never forwarded.' }))
}, {
  additionalProperties: false,
  examples: [{
    location: 'https://open.feishu.cn/open-apis/bitable/v1/apps/APP/tables/TABLE/records/batch_create',
    headers: { Authorization: 'Bearer t-xxx' },
    params: { records: [{ fields: '{"收支类型":"支出","款项金额":14.91}' }] },
    commands: { json_parse: ['$.params.records[*].fields'] }
  }]
})
export type ResendBody = Static<typeof ResendBody>

export const ResendData = Type.Object({
  status: Type.Integer({ description: 'The upstream HTTP status.' }),
  body: Type.Unknown({ description: 'The upstream body: parsed JSON when it says JSON, else text.' }),
  attempts: Type.Integer(),
  commands: Type.Optional(Type.Object({
    json_parse: Type.Optional(Type.Array(Type.Object({
      expression: Type.String(),
      parsed: Type.Integer({ description: 'Strings parsed at the locations it matched; a location is parsed once.' }),
      paths: Type.Array(Type.String(), { description: `Their normalized paths (RFC 9535), the first ${MAX_REPORTED_PATHS}.` })
    }), { description: 'Per expression, in order.' }))
  }, { description: 'What the commands did; present when commands were given.' }))
}, {
  examples: [{
    status: 200,
    body: { code: 0, msg: 'success' },
    attempts: 1,
    commands: { json_parse: [{ expression: '$.params.records[*].fields', parsed: 1, paths: ["$['params']['records'][0]['fields']"] }] }
  }]
})
export type ResendData = Static<typeof ResendData>

export const ApiKeyHeaders = Type.Object({
  'x-api-key': Type.Optional(Type.String({ maxLength: 1024 }))
})
