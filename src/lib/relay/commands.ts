import { Type, type Static } from '@sinclair/typebox'
import { mayLoseNumbers } from '../http/index.js'
import type { JsonPathPool } from './json-path-pool.js'
import type { JsonParseReport } from './json-path.js'

export const MAX_JSON_PARSE_EXPRESSIONS = 32

export const CommandsSchema = Type.Object({
  json_parse: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 512 }), {
    maxItems: MAX_JSON_PARSE_EXPRESSIONS,
    description: 'RFC 9535 JSONPath expressions over { "params": ... }; each string they match is replaced by the JSON it holds. An expression that matches nothing, or no string, fails the request.'
  }))
}, { additionalProperties: false, description: 'Commands applied to the request before it is sent; an unknown name is a 400.' })

export type Commands = Static<typeof CommandsSchema>

/** What the commands did, by name. */
export interface CommandReport {
  json_parse?: JsonParseReport[]
}

export interface BodySource {
  params?: unknown
  /** The request body as it arrived, when there is one: params are sent from it with their numbers exact. */
  bodyText?: string | undefined
  commands?: Commands | undefined
}

/** The JSON text to send, and what the commands did. */
export interface PreparedBody {
  body: string | undefined
  report?: CommandReport
}

/**
 * The body the destination gets: the params as they came, unless a command rewrites them. Numbers are never
 * changed: a body whose numbers JSON.parse would change is re-serialized from its text in a worker, like the
 * JSONPath commands; every other body is serialized here, without touching the pool.
 */
export async function prepareBody (source: BodySource, pool: JsonPathPool): Promise<PreparedBody> {
  const expressions = source.commands?.json_parse
  const bodyText = source.bodyText ?? JSON.stringify({ params: source.params })
  if (expressions !== undefined) {
    const { body, report } = await pool.rewrite(bodyText, expressions)
    return { body, report: { json_parse: report } }
  }
  if (source.params !== undefined && source.bodyText !== undefined && mayLoseNumbers(source.bodyText)) {
    return { body: (await pool.rewrite(bodyText, [])).body }
  }
  return { body: source.params === undefined ? undefined : JSON.stringify(source.params) }
}
