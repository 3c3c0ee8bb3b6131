/**
 * A bounded JSONPath for the relay's commands. It knows the plain paths callers use (`$.a.b`, `$['a']`, `[0]`,
 * `[-1]`, `*`, and one `..` per expression) and nothing that evaluates code. Every node it steps on is counted
 * against a budget shared by all expressions of one request, so the work a request can cause is bounded by
 * construction, whatever the document or the expression. (General JSONPath libraries neither count nor stop:
 * `$..*..*..*` over a 100-deep array ran for 35 seconds in one.)
 */

export type Selector =
  | { kind: 'name', name: string }
  | { kind: 'index', index: number }
  | { kind: 'wildcard' }

export interface Step {
  /** `..`: the selector applies to the node itself and to every node below it. */
  descend: boolean
  selector: Selector
}

export class JsonPathSyntaxError extends Error {
  constructor (readonly position: number, readonly reason: string) {
    super(reason)
    this.name = 'JsonPathSyntaxError'
  }
}

/** A bound of the budget was reached: `reason` names it. */
export class JsonPathLimitError extends Error {
  constructor (readonly reason: string, readonly limit: number) {
    super(reason)
    this.name = 'JsonPathLimitError'
  }
}

const NAME_END = /[.[\]()?'"\s]/

export function parseJsonPath (expression: string): Step[] {
  if (!expression.startsWith('$')) throw new JsonPathSyntaxError(0, 'an expression starts with $')
  const steps: Step[] = []
  let i = 1
  let descents = 0

  const readName = (): Selector => {
    if (expression[i] === '*') { i++; return { kind: 'wildcard' } }
    const start = i
    while (i < expression.length && !NAME_END.test(expression[i] as string)) i++
    if (expression[i] === '(' || expression[i] === '?') throw new JsonPathSyntaxError(i, 'filter and script expressions are not allowed')
    if (i === start) throw new JsonPathSyntaxError(i, 'a name is expected')
    return { kind: 'name', name: expression.slice(start, i) }
  }

  const readBracket = (): Selector => {
    const open = i
    i++
    let selector: Selector
    const c = expression[i]
    if (c === '*') {
      i++
      selector = { kind: 'wildcard' }
    } else if (c === '\'' || c === '"') {
      let name = ''
      i++
      while (i < expression.length && expression[i] !== c) {
        if (expression[i] === '\\' && i + 1 < expression.length) i++
        name += expression[i]
        i++
      }
      if (i >= expression.length) throw new JsonPathSyntaxError(open, 'an unclosed quoted name')
      i++
      selector = { kind: 'name', name }
    } else {
      const digits = /^-?\d{1,9}/.exec(expression.slice(i))
      if (digits === null) {
        const reason = c === '?' || c === '(' ? 'filter and script expressions are not allowed' : 'only [*], [n] and [\'name\'] are supported in brackets'
        throw new JsonPathSyntaxError(i, reason)
      }
      i += digits[0].length
      selector = { kind: 'index', index: Number(digits[0]) }
    }
    if (expression[i] !== ']') throw new JsonPathSyntaxError(i, 'only [*], [n] and [\'name\'] are supported in brackets')
    i++
    return selector
  }

  while (i < expression.length) {
    const c = expression[i]
    if (c === '.' && expression[i + 1] === '.') {
      if (++descents > 1) throw new JsonPathSyntaxError(i, 'at most one recursive descent (..) per expression')
      i += 2
      steps.push({ descend: true, selector: expression[i] === '[' ? readBracket() : readName() })
    } else if (c === '.') {
      i++
      steps.push({ descend: false, selector: readName() })
    } else if (c === '[') {
      steps.push({ descend: false, selector: readBracket() })
    } else {
      throw new JsonPathSyntaxError(i, c === '(' || c === '?' ? 'filter and script expressions are not allowed' : `unexpected "${String(c)}"`)
    }
  }
  return steps
}

/** What one request may spend on all of its expressions together. */
export interface JsonPathBudget {
  /** Nodes stepped on (each child looked at, each node a descent passes). */
  visits: number
  /** Values matched. */
  matches: number
}

export interface JsonPathLimits {
  maxVisits: number
  maxMatches: number
}

/** A matched value, with where it sits so that it can be replaced. */
export interface JsonPathMatch {
  value: unknown
  /** The array or object holding it; null for the root. */
  parent: Record<string | number, unknown> | null
  key: string | number
  /** Levels below the root. */
  depth: number
  /** The normalized path, e.g. `$['params']['records'][0]['fields']`. */
  path (): string
}

interface Node {
  value: unknown
  up: Node | null
  key: string | number
}

const isContainer = (value: unknown): value is Record<string | number, unknown> => typeof value === 'object' && value !== null

function depthOf (node: Node): number {
  let depth = 0
  for (let at = node.up; at !== null; at = at.up) depth++
  return depth
}

function pathOf (node: Node): string {
  const parts: string[] = []
  for (let at: Node | null = node; at.up !== null; at = at.up) {
    parts.push(typeof at.key === 'number' ? `[${at.key}]` : `['${at.key.replace(/\\/g, '\\\\').replace(/'/g, '\\\'')}']`)
  }
  return `$${parts.reverse().join('')}`
}

/**
 * Evaluates parsed steps over a JSON document (only own properties; never a prototype), charging the budget.
 * Throws JsonPathLimitError as soon as a bound is passed, before any more work.
 */
export function evaluateJsonPath (document: unknown, steps: Step[], budget: JsonPathBudget, limits: JsonPathLimits): JsonPathMatch[] {
  const visit = (): void => {
    if (++budget.visits > limits.maxVisits) throw new JsonPathLimitError(`the expressions visit more than ${limits.maxVisits} nodes`, limits.maxVisits)
  }

  const select = (node: Node, selector: Selector, out: Node[]): void => {
    const { value } = node
    if (!isContainer(value)) return
    if (selector.kind === 'wildcard') {
      if (Array.isArray(value)) {
        for (let index = 0; index < value.length; index++) { visit(); out.push({ value: value[index], up: node, key: index }) }
      } else {
        for (const key of Object.keys(value)) { visit(); out.push({ value: value[key], up: node, key }) }
      }
    } else if (selector.kind === 'index') {
      if (!Array.isArray(value)) return
      const index = selector.index < 0 ? value.length + selector.index : selector.index
      visit()
      if (index >= 0 && index < value.length) out.push({ value: value[index], up: node, key: index })
    } else if (!Array.isArray(value) && Object.hasOwn(value, selector.name)) {
      visit()
      out.push({ value: value[selector.name], up: node, key: selector.name })
    }
  }

  let current: Node[] = [{ value: document, up: null, key: '$' }]
  for (const step of steps) {
    const next: Node[] = []
    if (step.descend) {
      // Depth-first with an explicit stack: no recursion, whatever the nesting.
      const stack = current.slice().reverse()
      while (stack.length > 0) {
        const node = stack.pop() as Node
        select(node, step.selector, next)
        const { value } = node
        if (!isContainer(value)) continue
        const children: Node[] = []
        if (Array.isArray(value)) for (let index = 0; index < value.length; index++) { visit(); children.push({ value: value[index], up: node, key: index }) }
        else for (const key of Object.keys(value)) { visit(); children.push({ value: value[key], up: node, key }) }
        for (let k = children.length - 1; k >= 0; k--) stack.push(children[k] as Node)
      }
    } else {
      for (const node of current) select(node, step.selector, next)
    }
    current = next
  }

  budget.matches += current.length
  if (budget.matches > limits.maxMatches) throw new JsonPathLimitError(`the expressions match more than ${limits.maxMatches} values`, limits.maxMatches)
  return current.map((node) => ({
    value: node.value,
    parent: node.up === null ? null : node.up.value as Record<string | number, unknown>,
    key: node.key,
    depth: depthOf(node),
    path: () => pathOf(node)
  }))
}
