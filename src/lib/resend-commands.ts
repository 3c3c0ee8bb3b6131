import { Type, type Static, type TProperties, type TSchema } from '@sinclair/typebox'
import { JSONPath } from 'jsonpath-plus'
import { ServiceError } from './errors.js'

export const MAX_JSON_PARSE_EXPRESSIONS = 32

/** A command rewrites the request document in place before it is sent; it throws COMMAND_FAILED to stop the send. */
export interface CommandHandler<S extends TSchema = TSchema> {
  /** Schema of the command's argument in `commands.<name>`. */
  schema: S
  apply (document: Record<string, unknown>, argument: Static<S>): void
}

function commandFailed (command: string, details: Record<string, unknown>): ServiceError {
  return new ServiceError('COMMAND_FAILED', { command, ...details })
}

// Filters and script expressions would evaluate caller-supplied code; only plain paths are accepted.
const SCRIPT_EXPRESSION = /\?\s*\(|\(/

/** `json_parse`: each string a JSONPath matches is replaced by the JSON it contains. */
export const jsonParse: CommandHandler<ReturnType<typeof jsonParseSchema>> = {
  schema: jsonParseSchema(),
  apply (document, expressions) {
    for (const expression of expressions) {
      const script = SCRIPT_EXPRESSION.exec(expression)
      if (script !== null) {
        throw commandFailed('json_parse', { expression, position: script.index, reason: 'filter and script expressions are not allowed' })
      }
      let matches: Array<{ value: unknown, parent: Record<string, unknown> | null, parentProperty: string | number | null, path: string }>
      try {
        matches = JSONPath({ path: expression, json: document, resultType: 'all', eval: false, wrap: true })
      } catch (err) {
        throw commandFailed('json_parse', { expression, position: 0, reason: (err as Error).message.slice(0, 200) })
      }
      for (const match of matches) {
        if (typeof match.value !== 'string') continue
        // The root itself is never a string here: the document is the request object.
        const parent = match.parent as Record<string | number, unknown>
        try {
          parent[match.parentProperty as string | number] = JSON.parse(match.value)
        } catch (err) {
          const at = /position (\d+)/.exec((err as Error).message)
          throw commandFailed('json_parse', {
            expression,
            path: match.path,
            position: at === null ? 0 : Number(at[1]),
            reason: 'the matched string is not valid JSON'
          })
        }
      }
    }
  }
}

function jsonParseSchema () {
  return Type.Array(Type.String({ minLength: 1, maxLength: 512 }), {
    maxItems: MAX_JSON_PARSE_EXPRESSIONS,
    description: 'JSONPath expressions over the whole request body; each matched string is replaced by its parsed JSON.'
  })
}

/** Every command the relay knows. A new command is one entry here; the request schema follows from it. */
export const COMMANDS = {
  json_parse: jsonParse
} satisfies Record<string, CommandHandler<TSchema>>

export type CommandName = keyof typeof COMMANDS

export const CommandsSchema = Type.Object(
  Object.fromEntries(Object.entries(COMMANDS).map(([name, handler]) => [name, Type.Optional(handler.schema)])) as TProperties,
  { additionalProperties: false, description: 'Commands applied to the request before it is sent; an unknown name is a 400.' }
)

export type Commands = { [K in CommandName]?: Static<typeof COMMANDS[K]['schema']> }

/** Runs the commands in the order the caller wrote them. */
export function applyCommands (document: Record<string, unknown>, commands: Commands): void {
  for (const [name, argument] of Object.entries(commands)) {
    const handler = COMMANDS[name as CommandName] as CommandHandler<TSchema>
    handler.apply(document, argument)
  }
}
