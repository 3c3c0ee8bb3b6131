import { Piscina } from 'piscina'
import type { JsonPathOutcome, JsonPathTask } from './json-path-worker.js'
import { isPlainPath, JsonParseRefusal, MAX_MATCHED_VALUES, rewriteParams, type Rewritten } from './json-path.js'
import { ServiceError } from '../http/index.js'

export interface JsonPathPoolOptions {
  /** JSONPATH_WORKERS: threads evaluating at once. */
  workers: number
  /** JSONPATH_TIMEOUT_MS: all expressions of one request together, from the moment a worker starts them. */
  timeoutMs: number
  /** The heap one worker may use, in MB; past it the worker ends and the request is refused. */
  memoryMb: number
  /** Requests that may wait for a worker; one more is 503 at once. */
  maxQueue: number
  maxDepth: number
  maxMatches?: number
  /** How long a request may wait for a worker to start it (default: as many deadlines as may be ahead, 10 s at least). */
  maxWaitMs?: number
  /** Told when a worker fails outside a task (at start, say); piscina replaces it, or stops trying. */
  onWorkerError?: (err: Error) => void
  /**
   * Whether plain paths (json-path.ts) over a body of at most PLAIN_ON_EVENT_LOOP_MAX_CHARS are evaluated on the
   * event loop (the default); false sends every request to a worker.
   */
  plainOnEventLoop?: boolean
}

export interface JsonPathPool {
  /** Rewrites the params of `bodyText` by the expressions, away from the event loop, within the bounds. */
  rewrite (bodyText: string, expressions: string[]): Promise<Rewritten>
  close (): Promise<void>
}

/**
 * The largest body whose plain paths are evaluated on the event loop: the matched strings are parsed exactly
 * (lossless-json, several times JSON.parse), which for 64 KiB is a few milliseconds at worst; a larger body goes to
 * a worker whatever its expressions.
 */
export const PLAIN_ON_EVENT_LOOP_MAX_CHARS = 64 * 1024

const commandFailed = (details: Record<string, unknown>): ServiceError => new ServiceError('COMMAND_FAILED', { command: 'json_parse', ...details })

/**
 * JSONPath evaluation in worker threads (piscina). An expression's cost cannot be counted from inside a library,
 * so it is bounded from outside: a deadline per request, after which the worker is ended and replaced, and a heap
 * limit per worker. The event loop only hands the text over and reads the result, except for plain paths: their
 * cost is bounded by the body's size, and they are evaluated at once, with the same limits and answers.
 */
export function createJsonPathPool (options: JsonPathPoolOptions): JsonPathPool {
  const pool = new Piscina<JsonPathTask, JsonPathOutcome>({
    filename: new URL('./json-path-worker.js', import.meta.url).href,
    minThreads: options.workers,
    maxThreads: options.workers,
    idleTimeout: Infinity,
    resourceLimits: { maxOldGenerationSizeMb: options.memoryMb, maxYoungGenerationSizeMb: Math.min(32, Math.ceil(options.memoryMb / 4)) }
  })
  const maxMatches = options.maxMatches ?? MAX_MATCHED_VALUES
  let closing = false
  // The tasks handed over and not yet started, by id: a worker says when it starts one (piscina passes it on).
  const starting = new Map<number, () => void>()
  let nextId = 0
  // An 'error' of the pool has no task to reject (piscina emits it for a worker that fails with none): without a
  // listener it would end the process.
  /* c8 ignore next - a safety net no test can provoke on purpose */
  pool.on('error', (err: Error) => { options.onWorkerError?.(err) })
  // However long the queue, a request waits at most for as many deadlines as may be ahead of it (and 10 s at least,
  // the time a worker may take to start on a loaded machine); past that (no worker left to start it, say) it is
  // turned away rather than left hanging.
  const maxWaitMs = options.maxWaitMs ?? Math.max(10_000, options.timeoutMs * (Math.ceil(options.maxQueue / options.workers) + 2))
  pool.on('message', (message: { jsonPathTaskStarted?: number }) => {
    const start = starting.get(message.jsonPathTaskStarted as number)
    starting.delete(message.jsonPathTaskStarted as number)
    start?.()
  })
  // Requests handed over and not yet started by a worker: the queue, bounded here.
  let waiting = 0

  /** What a failed hand-over means to the caller: its deadline, its heap, or the pool closing. */
  function failureOf (err: unknown, timedOut: boolean): unknown {
    if (timedOut) return commandFailed({ reason: `the expressions took longer than ${options.timeoutMs} ms (JSONPATH_TIMEOUT_MS)`, limit: options.timeoutMs })
    if ((err as NodeJS.ErrnoException).code === 'ERR_WORKER_OUT_OF_MEMORY') return commandFailed({ reason: `the expressions needed more than ${options.memoryMb} MB`, limit: options.memoryMb })
    /* c8 ignore start - a worker that fails otherwise (it cannot load) is a defect: 500 */
    if (!closing) return err
    /* c8 ignore stop - end of the defect branch */
    return new ServiceError('SERVICE_UNAVAILABLE', { reason: 'closing' })
  }

  return {
    async rewrite (bodyText, expressions) {
      if (options.plainOnEventLoop !== false && bodyText.length <= PLAIN_ON_EVENT_LOOP_MAX_CHARS && expressions.length > 0 && expressions.every((expression) => isPlainPath(expression, options.maxDepth))) {
        try {
          return rewriteParams(bodyText, expressions, { maxDepth: options.maxDepth, maxMatches })
        } catch (err) {
          // Anything else is a defect of the caller (text that is not JSON, which the route never hands over): as it is.
          throw err instanceof JsonParseRefusal ? commandFailed(err.details) : err
        }
      }
      if (waiting >= options.maxQueue + options.workers) throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'jsonpath_queue', limit: options.maxQueue })
      waiting++
      let started = false
      const start = (): void => {
        if (!started) waiting--
        started = true
      }
      const id = nextId++
      const abort = new AbortController()
      let waitedTooLong = false
      let timer = setTimeout(() => {
        waitedTooLong = true
        abort.abort()
      }, maxWaitMs)
      starting.set(id, () => {
        start()
        clearTimeout(timer)
        timer = setTimeout(() => { abort.abort() }, options.timeoutMs)
      })
      const settle = (): void => {
        start()
        starting.delete(id)
        clearTimeout(timer)
      }
      let outcome: JsonPathOutcome
      try {
        outcome = await pool.run({ bodyText, expressions, maxDepth: options.maxDepth, maxMatches, id }, { signal: abort.signal })
      } catch (err) {
        settle()
        throw waitedTooLong ? new ServiceError('SERVICE_UNAVAILABLE', { reason: 'jsonpath_queue', waited_ms: maxWaitMs }) : failureOf(err, abort.signal.aborted)
      }
      settle()
      if ('refused' in outcome) throw commandFailed(outcome.refused)
      return outcome.rewritten
    },
    async close () {
      closing = true
      await pool.destroy()
    }
  }
}
