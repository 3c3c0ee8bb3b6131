import { jsonpath, JSONPathEnvironment, JSONPathError, type JSONPathNode, type JSONPathQuery, type JSONValue } from 'json-p3'
import { DEFAULT_MAX_JSON_DEPTH, jsonDeeperThan, mayLoseNumbers, parseExact, stringifyExact } from '../http/index.js'

/** What all the expressions of one request may match together. */
export const MAX_MATCHED_VALUES = 10_000
/** How many normalized paths the answer lists per expression. */
export const MAX_REPORTED_PATHS = 20

// RFC 9535 as written (json-p3's strict environment): no extensions of its own. Its descent may go as deep as a
// body may nest, and no deeper.
const environments = new Map<number, JSONPathEnvironment>()
function environmentFor (maxDepth: number): JSONPathEnvironment {
  let environment = environments.get(maxDepth)
  if (environment === undefined) {
    environment = new JSONPathEnvironment({ strict: true, maxRecursionDepth: maxDepth + 1 })
    environments.set(maxDepth, environment)
  }
  return environment
}

/** A refusal of json-p3's, in the answer's words: its message without the expression it quotes. */
const refusalOf = (expression: string, err: JSONPathError): JsonParseRefusal =>
  new JsonParseRefusal({ expression, position: err.token.index, reason: err.message.replace(/ \('.*$/, '') })

/** Why json_parse refused a request: safe details for the answer (the expression, where, and why). */
export class JsonParseRefusal extends Error {
  constructor (readonly details: Record<string, unknown>) {
    super(String(details.reason))
    this.name = 'JsonParseRefusal'
  }
}

/** What json_parse did with one expression. */
export interface JsonParseReport {
  expression: string
  /** Strings parsed at the locations it matched (a location reached twice is parsed once). */
  parsed: number
  /** Their normalized paths (RFC 9535 §2.7), the first MAX_REPORTED_PATHS. */
  paths: string[]
}

export interface Rewritten {
  /** The params as JSON text, ready to send; undefined when the request had none. */
  body: string | undefined
  report: JsonParseReport[]
}

export interface RewriteLimits {
  /** BODY_MAX_DEPTH: how deep the body may nest once a string became JSON. */
  maxDepth: number
  maxMatches?: number
}

/**
 * Compiled expressions by depth and text: callers send the same few with every request, and each request looks at
 * its expressions twice (plain or not, then the rewrite). At most COMPILED_MAX of them, each of at most
 * COMPILED_MAX_LENGTH characters (longer ones are compiled every time); full, the cache starts over.
 */
export const COMPILED_MAX = 1000
export const COMPILED_MAX_LENGTH = 256
const compiled = new Map<string, JSONPathQuery>()

/** Compiles an RFC 9535 expression; a syntax error is a refusal naming the expression and the position. */
export function compileJsonPath (expression: string, maxDepth = DEFAULT_MAX_JSON_DEPTH): JSONPathQuery {
  const key = `${maxDepth} ${expression}`
  const known = compiled.get(key)
  if (known !== undefined) return known
  let query: JSONPathQuery
  try {
    query = environmentFor(maxDepth).compile(expression)
  } catch (err) {
    /* c8 ignore next - json-p3 throws nothing but its own errors for a string */
    if (!(err instanceof JSONPathError)) throw err
    throw refusalOf(expression, err)
  }
  if (expression.length <= COMPILED_MAX_LENGTH) {
    if (compiled.size >= COMPILED_MAX) compiled.clear()
    compiled.set(key, query)
  }
  return query
}

const { IndexSelector, NameSelector, SliceSelector, WildcardSelector } = jsonpath.selectors

/**
 * Whether an expression is a plain path: child segments only, each of one name, index, wildcard or slice. Such a
 * path reaches each node of the body at most once, so its cost is bounded by the body's size (already bounded)
 * and it may run on the event loop. Descents, filters, functions and lists of selectors (`[*,*]` doubles at each
 * step) go to the workers; so does an expression that does not compile (the worker's answer names the error).
 */
export function isPlainPath (expression: string, maxDepth = DEFAULT_MAX_JSON_DEPTH): boolean {
  let query: JSONPathQuery
  try {
    query = compileJsonPath(expression, maxDepth)
  } catch {
    return false
  }
  return query.segments.every((segment) => !segment.toString().startsWith('..') && segment.selectors.length === 1 &&
    segment.selectors.every((selector) => selector instanceof NameSelector || selector instanceof IndexSelector || selector instanceof WildcardSelector || selector instanceof SliceSelector))
}

/**
 * json_parse: each string an expression matches is replaced by the JSON it holds. Expressions see the request's
 * params as `$.params` (so `$..fields` and `$.params..fields` both work, and nothing else of the request is in
 * reach). Numbers keep their exact text throughout. Plain paths run on the event loop; the rest in a worker thread
 * (json-path-pool.ts), which bounds their time and memory: the work of an expression is not counted here, only its
 * matches.
 */
export function rewriteParams (bodyText: string, expressions: readonly string[], { maxDepth, maxMatches = MAX_MATCHED_VALUES }: RewriteLimits): Rewritten {
  const queries = expressions.map((expression) => compileJsonPath(expression, maxDepth))
  // The exact parser costs several times JSON.parse: only for text whose numbers a parse would change.
  let exact = mayLoseNumbers(bodyText)
  const body = (exact ? parseExact(bodyText) : JSON.parse(bodyText)) as { params?: unknown }
  const document = { params: body.params } as { params: JSONValue }
  const done = new Set<string>()
  let matched = 0
  const report = queries.map((query, index) => {
    const expression = expressions[index] as string
    // Collected before anything changes: a value just parsed is not walked by the same expression.
    const nodes: JSONPathNode[] = []
    try {
      for (const node of query.lazyQuery(document)) {
        if (++matched > maxMatches) throw new JsonParseRefusal({ expression, reason: `the expressions match more than ${maxMatches} values`, limit: maxMatches })
        nodes.push(node)
      }
    } catch (err) {
      if (err instanceof JsonParseRefusal) throw err
      // json-p3's own: descents nested deeper than a body may (it counts descents inside descents as depth).
      throw refusalOf(expression, err as JSONPathError)
    }
    if (nodes.length === 0) throw new JsonParseRefusal({ expression, reason: 'matched nothing' })
    const strings = nodes.filter((node) => typeof node.value === 'string')
    // (What an earlier expression of the request already parsed is done, not a mistake.)
    if (strings.length === 0 && !nodes.some((node) => done.has(node.getPath({ form: 'canonical' })))) {
      throw new JsonParseRefusal({ expression, reason: `matched ${nodes.length} value(s), none of them a string: json_parse parses strings that hold JSON (point the expression at those strings)` })
    }
    const paths: string[] = []
    let parsed = 0
    for (const node of strings) {
      const path = node.getPath({ form: 'canonical' })
      if (done.has(path)) continue
      done.add(path)
      exact ||= mayLoseNumbers(node.value as string)
      replaceWithParsed(document, node, { expression, path, maxDepth })
      if (++parsed <= MAX_REPORTED_PATHS) paths.push(path)
    }
    return { expression, parsed, paths }
  })
  return { body: exact ? stringifyExact(document.params) : JSON.stringify(document.params), report }
}

/** Puts the JSON a matched string holds where the string was, within the depth every body keeps. */
function replaceWithParsed (document: { params: JSONValue }, node: JSONPathNode, where: { expression: string, path: string, maxDepth: number }): void {
  const text = node.value as string
  // The containers above the value: the body, then each step of its location (params, ...).
  if (jsonDeeperThan(text, where.maxDepth - node.location.length)) {
    throw new JsonParseRefusal({ expression: where.expression, path: where.path, position: 0, reason: `the parsed value would nest deeper than ${where.maxDepth} levels` })
  }
  let value: unknown
  try {
    value = parseExact(text)
  } catch (err) {
    // lossless-json ends every message of a syntax error with "at position N".
    const position = Number((err as Error).message.split('position ').at(-1))
    throw new JsonParseRefusal({ expression: where.expression, path: where.path, position, reason: 'the matched string is not valid JSON' })
  }
  let parent = document as unknown as Record<string | number, unknown>
  for (const step of node.location.slice(0, -1)) parent = parent[step] as Record<string | number, unknown>
  parent[node.location.at(-1) as string | number] = value
}
