import type { Job, JobType } from 'bullmq'

/** What a caller sees of a job, read from its small fields only: a view never holds a request. */

/** A job's status as a caller sees it. */
export type JobStatus = 'queued' | 'delivering' | 'delivered' | 'failed'
export const JOB_STATUSES: readonly JobStatus[] = ['queued', 'delivering', 'delivered', 'failed']

export interface JobView {
  id: string
  /** `cancelled` only in the answer that cancelled it: the job is gone then. */
  status: JobStatus | 'cancelled'
  /** Attempts made so far. */
  attempts: number
  created_at: string
  /** When the next attempt is due, while the job waits for one; null otherwise. */
  next_attempt_at: string | null
  /** Host and path (never the query, which may hold secrets). */
  destination: string
  last_attempt: { at: string, status?: number, error?: string } | null
  /**
   * What holds a queued job back without spending an attempt: its destination paused (its breaker, or a rate
   * limit it answered with) or at its limit (RESEND_HOST_LIMITS); null otherwise.
   */
  waiting_for: 'destination_paused' | 'destination_limit' | null
  /** Its latest attempts, oldest first (a single job's view only; a listing leaves it out). */
  history?: AttemptView[]
  /** The destination's answer: when delivered, and when it failed the job (a 4xx). */
  answer?: { status: number, body: unknown }
  status_url: string
}

/** One attempt as the job keeps it: when, how it ended, when the next was due, and which instance made it. */
export interface AttemptRecord {
  at: number
  status?: number | undefined
  /** Why it was not delivered; absent only for the attempt that delivered it. */
  error?: string | undefined
  next_at?: number | undefined
  instance: string
}

export interface AttemptView { at: string, status?: number, error?: string, next_attempt_at?: string, instance: string }

/** Attempts a job keeps: its latest, about 100 bytes each, within the overhead a job is counted for. */
export const HISTORY_KEPT = 8

/** The job's history with one more attempt, the oldest dropped past HISTORY_KEPT. */
export const withAttempt = (progress: Progress, attempt: AttemptRecord): AttemptRecord[] =>
  [...(progress.history ?? []), attempt].slice(-HISTORY_KEPT)

const attemptView = (record: AttemptRecord): AttemptView => ({
  at: iso(record.at),
  ...(record.status === undefined ? {} : { status: record.status }),
  ...(record.error === undefined ? {} : { error: record.error }),
  ...(record.next_at === undefined ? {} : { next_attempt_at: iso(record.next_at) }),
  instance: record.instance
})

/** A job's progress, kept beside it in the clear: counts and times, never a header, a body or an answer. */
export interface Progress {
  attempts: number
  /** Where RESEND_MAX_AGE counts from: acceptance, or the last manual retry. */
  since: number
  next_attempt_at?: number | undefined
  /** What held it back at its last turn (destinations.ts), until its next attempt. */
  held?: 'paused' | 'limited' | undefined
  last?: { at: number, status?: number, error?: string } | undefined
  /** Its latest attempts (HISTORY_KEPT), oldest first. */
  history?: AttemptRecord[] | undefined
}

/** A delivered job's return value: small, so that a listing reads it cheaply (the answer is kept apart). */
export interface Delivered {
  attempts: number
  last: { at: number, status: number }
  /** The instance that delivered it. */
  instance?: string
}

/**
 * A job's name, in the clear: whose it is, where it goes (host and path, as the logs say), the HMAC of the request
 * accepted under an Idempotency-Key ('' without one), and a nonce that tells the request that stored it.
 */
export interface JobName { owner: string, destination: string, fingerprint: string, nonce: string }
export const nameOf = (job: { name: string }): JobName => {
  const [owner, destination, fingerprint = '', nonce = ''] = JSON.parse(job.name) as [string, string, string?, string?]
  return { owner, destination, fingerprint, nonce }
}
export const jobName = (name: JobName): string => JSON.stringify([name.owner, name.destination, name.fingerprint, name.nonce])

/** The BullMQ states behind each status a caller sees. */
export const STATES: Record<JobStatus, JobType[]> = {
  queued: ['waiting', 'prioritized', 'delayed'],
  delivering: ['active'],
  delivered: ['completed'],
  failed: ['failed']
}

const STATUS_OF: Record<string, JobStatus> = Object.fromEntries(JOB_STATUSES.flatMap((status) => STATES[status].map((state) => [state, status])))

/* c8 ignore next - a job removed between two reads is 'unknown': it was queued a moment ago, or is gone */
export const statusOf = (state: string): JobStatus => STATUS_OF[state] ?? 'queued'

const HELD = { paused: 'destination_paused', limited: 'destination_limit' } as const

export const iso = (millis: number): string => new Date(millis).toISOString()

/** The fields of a job a view is made of. */
export type JobFields = Pick<Job, 'id' | 'name' | 'timestamp' | 'progress' | 'returnvalue' | 'failedReason' | 'finishedOn'>

export function progressOf (job: Pick<Job, 'progress' | 'timestamp'>): Progress {
  const progress = job.progress as Partial<Progress> | number
  if (typeof progress === 'object' && typeof progress.attempts === 'number') return progress as Progress
  return { attempts: 0, since: job.timestamp }
}

/** A job's attempts, oldest first: those its progress kept, and the delivery. */
export function historyOf (job: JobFields, status: JobStatus): AttemptView[] {
  const records = [...progressOf(job).history ?? []]
  if (status === 'delivered' && typeof job.returnvalue === 'string') {
    const delivered = JSON.parse(job.returnvalue) as Delivered
    records.push({ at: delivered.last.at, status: delivered.last.status, instance: delivered.instance ?? '' })
  }
  return records.slice(-HISTORY_KEPT).map(attemptView)
}

/** What a caller sees of a job, from its small fields only: a listing never reads a request or an answer. */
export function viewOf (job: JobFields, status: JobStatus, statusPath: string): JobView {
  const id = job.id as string
  const progress = progressOf(job)
  const delivered = status === 'delivered' && typeof job.returnvalue === 'string' ? JSON.parse(job.returnvalue) as Delivered : undefined
  const last = delivered?.last ?? progress.last
  const view: JobView = {
    id,
    status,
    attempts: delivered?.attempts ?? progress.attempts,
    created_at: iso(job.timestamp),
    next_attempt_at: status === 'queued' && progress.next_attempt_at !== undefined ? iso(progress.next_attempt_at) : null,
    destination: nameOf(job).destination,
    last_attempt: last === undefined ? null : { ...last, at: iso(last.at) },
    waiting_for: status === 'queued' && progress.held !== undefined ? HELD[progress.held] : null,
    status_url: `${statusPath}${id}`
  }
  // Failed before any attempt (unreadable, or taken over too many times): BullMQ's reason.
  if (status === 'failed' && last === undefined) view.last_attempt = { at: iso(job.finishedOn as number), error: job.failedReason }
  return view
}
