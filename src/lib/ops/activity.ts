/**
 * What this instance saw of each Coze and Feishu app lately, for the console: counts by outcome, the last success
 * and the last failure (its code, and Coze's logid). In memory, per instance: Prometheus has the totals of all.
 * Bounded by construction: apps come from the configuration and outcomes from a fixed vocabulary, and past
 * MAX_APPS or MAX_OUTCOMES a new name is not recorded.
 */
export type ActivityKind = 'coze' | 'feishu'

export interface AppActivity {
  counts: Record<string, number>
  last_ok_at: number | null
  last_failure: { at: number, code: string, logid?: string } | null
}

export interface Activity {
  /** An outcome: `hit`, `miss`, `shared`, `success` and `ok` are successes, anything else the error's code. */
  record (kind: ActivityKind, app: string, outcome: string, logid?: string): void
  read (kind: ActivityKind): ReadonlyMap<string, AppActivity>
}

const MAX_APPS = 1000
const MAX_OUTCOMES = 32
const SUCCESSES = new Set(['hit', 'miss', 'shared', 'success', 'ok'])

export function createActivity (now: () => number = Date.now): Activity {
  const kinds: Record<ActivityKind, Map<string, AppActivity>> = { coze: new Map(), feishu: new Map() }
  return {
    record (kind, app, outcome, logid) {
      const apps = kinds[kind]
      let entry = apps.get(app)
      if (entry === undefined) {
        if (apps.size >= MAX_APPS) return
        entry = { counts: {}, last_ok_at: null, last_failure: null }
        apps.set(app, entry)
      }
      if (outcome in entry.counts || Object.keys(entry.counts).length < MAX_OUTCOMES) entry.counts[outcome] = (entry.counts[outcome] ?? 0) + 1
      if (SUCCESSES.has(outcome)) entry.last_ok_at = now()
      else entry.last_failure = { at: now(), code: outcome, ...(logid === undefined ? {} : { logid }) }
    },
    read (kind) { return kinds[kind] }
  }
}
