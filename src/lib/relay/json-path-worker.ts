import { parentPort } from 'node:worker_threads'
import { JsonParseRefusal, rewriteParams, type Rewritten } from './json-path.js'

/** One request's JSONPath work, as the pool hands it to a worker thread. */
export interface JsonPathTask {
  bodyText: string
  expressions: string[]
  maxDepth: number
  maxMatches: number
  /** Said to the pool the moment this worker starts the task: the deadline counts from there, not from the queue. */
  id: number
}

export type JsonPathOutcome = { rewritten: Rewritten } | { refused: Record<string, unknown> }

/** The worker's entry (piscina): refusals come back as data, since an error loses its fields between threads. */
export default function runJsonPathTask (task: JsonPathTask): JsonPathOutcome {
  parentPort?.postMessage({ jsonPathTaskStarted: task.id })
  try {
    return { rewritten: rewriteParams(task.bodyText, task.expressions, task) }
  } catch (err) {
    if (err instanceof JsonParseRefusal) return { refused: err.details }
    /* c8 ignore next - rewriteParams throws nothing else for text the main thread parsed */
    throw err
  }
}
