import { FEISHU_RATE_LIMITED, feishuCode, isFeishuConfigurationCode } from './feishu.js'
import type { AttemptResult, RelayAnswer } from './send.js'

/** How an attempt decides a queued job, and when the next one is due: pure, so tested alone. */

// The destination's answers that say "later": Feishu's rate limits, its write conflicts and timeouts.
const FEISHU_LATER = new Set([FEISHU_RATE_LIMITED, 1254290, 1254291, 1254608, 1255040])

/** How an attempt decides the job: delivered, tried again later, or failed now. */
export type Verdict =
  | { kind: 'delivered', answer: RelayAnswer }
  | { kind: 'retry', askedMs?: number | undefined, last: { status?: number, error: string }, answer?: RelayAnswer }
  | { kind: 'failed', last: { status?: number, error: string }, answer?: RelayAnswer }

/**
 * Any failure to get an answer, 5xx, 429 and Feishu's "later" codes are tried again; a 2xx is delivered (unless a
 * Feishu answer's code says otherwise); any other answer fails the job at once, kept for the operator.
 */
export function judge (result: AttemptResult, speaksFeishu: boolean): Verdict {
  if ('failure' in result) {
    // Feishu refused the app's own credentials: waiting will not mend them.
    const code = result.failure.details.feishu_code
    if (result.failure.code === 'FEISHU_TOKEN_FAILED' && isFeishuConfigurationCode(code)) return { kind: 'failed', last: { error: `feishu_${String(code)}` } }
    return { kind: 'retry', last: { error: result.failure.code } }
  }
  const { answer } = result
  const code = speaksFeishu ? feishuCode(answer.body) : undefined
  if ((code !== undefined && FEISHU_LATER.has(code)) || answer.status >= 500 || answer.status === 429) {
    return { kind: 'retry', askedMs: result.askedRetryInMs, last: { status: answer.status, error: code !== undefined && code !== 0 ? `feishu_${code}` : 'UPSTREAM_ERROR' }, answer }
  }
  if (answer.status >= 200 && answer.status <= 299 && (code === undefined || code === 0)) return { kind: 'delivered', answer }
  return { kind: 'failed', last: { status: answer.status, error: code !== undefined && code !== 0 ? `feishu_${code}` : 'UPSTREAM_ERROR' }, answer }
}

/**
 * When the next attempt is due after a failed one: the schedule's wait, or longer if the destination asked for it
 * (Retry-After), but never past the job's end (RESEND_MAX_AGE): a wait that would pass it makes a last attempt at
 * the end instead. Undefined once the end has come: the job fails.
 */
export function nextAttemptAt ({ now, attempt, scheduleMs, askedMs = 0, endsAt }: { now: number, attempt: number, scheduleMs: number[], askedMs?: number | undefined, endsAt: number }): number | undefined {
  if (now >= endsAt) return undefined
  return Math.min(now + Math.max(scheduledWait(scheduleMs, attempt), askedMs), endsAt)
}

/** The wait before attempt `attempt + 1`: the schedule's entry (the last repeats), ±20 % so retries spread out. */
export function scheduledWait (scheduleMs: number[], attempt: number, random = Math.random()): number {
  const base = scheduleMs[Math.min(attempt, scheduleMs.length) - 1] as number
  return Math.round(base * (0.8 + 0.4 * random))
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }

/** `5s`, `2m`, `1h`, `250ms`: milliseconds. */
export function parseDuration (text: string): number {
  const match = /^\s*(\d+)(ms|s|m|h|d)\s*$/.exec(text) as RegExpExecArray
  return Number(match[1]) * (DURATION_UNITS[match[2] as string] as number)
}
