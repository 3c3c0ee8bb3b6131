import { Type, type Static, type TProperties, type TSchema } from '@sinclair/typebox'
import { ServiceError } from './errors.js'
import { jsonDeeperThan } from './json-depth.js'
import { JsonPathLimitError, JsonPathSyntaxError, evaluateJsonPath, parseJsonPath, type JsonPathBudget } from './json-path.js'

export const MAX_JSON_PARSE_EXPRESSIONS = 32
/** What all the expressions of one request may visit and match together. */
export const MAX_VISITED_NODES = 50_000
export const MAX_MATCHED_VALUES = 10_000

/** What the commands work on: the body that will be sent, and nothing else of the request. */
export interface CommandDocument {
  params: unknown
}

export interface CommandContext {
  budget: JsonPathBudget
  /** How deep the document may nest once a command has changed it (BODY_MAX_DEPTH). */
  maxDepth: number
}

/** A command rewrites the document in place before it is sent; it throws COMMAND_FAILED to stop the send. */
export interface CommandHandler<S extends TSchema = TSchema> {
  /** Schema of the command's argument in `commands.<name>`. */
  schema: S
  /** Returns what it did, for the answer (json_parse: how many values each expression replaced). */
  apply (document: CommandDocument, argument: Static<S>, context: CommandContext): unknown
}

function commandFailed (command: string, details: Record<string, unknown>): ServiceError {
  return new ServiceError('COMMAND_FAILED', { command, ...details })
}

/** `json_parse`: each string a JSONPath matches is replaced by the JSON it contains. */
export const jsonParse: CommandHandler<ReturnType<typeof jsonParseSchema>> = {
  schema: jsonParseSchema(),
  apply (document, expressions, { budget, maxDepth }) {
    const replaced: number[] = []
    for (const expression of expressions) {
      let steps
      try {
        steps = parseJsonPath(expression)
      } catch (err) {
        const { position, reason } = err as JsonPathSyntaxError
        throw commandFailed('json_parse', { expression, position, reason })
      }
      // Only the body is sent: an edit of anything else would be silently lost, so it is refused.
      const first = steps[0]
      if (first === undefined || first.descend || first.selector.kind !== 'name' || first.selector.name !== 'params') {
        throw commandFailed('json_parse', { expression, position: 1, reason: 'only paths under $.params can be rewritten' })
      }
      let matches
      try {
        matches = evaluateJsonPath(document, steps, budget, { maxVisits: MAX_VISITED_NODES, maxMatches: MAX_MATCHED_VALUES })
      } catch (err) {
        /* c8 ignore next - the evaluator throws nothing else */
        if (!(err instanceof JsonPathLimitError)) throw err
        throw commandFailed('json_parse', { expression, reason: err.message, limit: err.limit })
      }
      if (matches.length === 0) throw commandFailed('json_parse', { expression, reason: 'matched nothing' })
      let count = 0
      for (const match of matches) {
        if (typeof match.value !== 'string') continue
        // The document stays within the depth every body keeps, so it can always be serialized.
        if (jsonDeeperThan(match.value, maxDepth - match.depth)) {
          throw commandFailed('json_parse', { expression, path: match.path(), position: 0, reason: `the parsed value would nest deeper than ${maxDepth} levels` })
        }
        try {
          (match.parent as Record<string | number, unknown>)[match.key] = JSON.parse(match.value)
        } catch (err) {
          const at = /position (\d+)/.exec((err as Error).message)
          throw commandFailed('json_parse', { expression, path: match.path(), position: at === null ? 0 : Number(at[1]), reason: 'the matched string is not valid JSON' })
        }
        count++
      }
      replaced.push(count)
    }
    return replaced
  }
}

function jsonParseSchema () {
  return Type.Array(Type.String({ minLength: 1, maxLength: 512 }), {
    maxItems: MAX_JSON_PARSE_EXPRESSIONS,
    description: 'JSONPath expressions under $.params (plain paths, *, [n], one .. each); each matched string is replaced by its parsed JSON. An expression that matches nothing fails the request.'
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

/** What each command did, by name. */
export type CommandReport = { [K in CommandName]?: number[] }

/** Runs the commands in the order the caller wrote them, within one budget for the whole request. */
export function applyCommands (document: CommandDocument, commands: Commands, maxDepth: number): CommandReport {
  const context: CommandContext = { budget: { visits: 0, matches: 0 }, maxDepth }
  const report: Record<string, unknown> = {}
  for (const [name, argument] of Object.entries(commands)) {
    const handler = COMMANDS[name as CommandName] as CommandHandler<TSchema>
    report[name] = handler.apply(document, argument, context)
  }
  return report as CommandReport
}
