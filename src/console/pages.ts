import type { AppActivity } from '../lib/ops/index.js'
import { type DestinationView, type JobStatus, type JobView, LIST_SCAN } from '../lib/relay/index.js'
import type { ConsoleViewer } from './access.js'
import { type Html, html } from './html.js'

/** The console's pages, rendered on the server: the script only refreshes them (public/console/console.js). */

export interface Notice { kind: 'ok' | 'error', text: string }
export interface PageContext { viewer: ConsoleViewer, csrf: string, notice?: Notice | undefined }

const SECTIONS = [['now', '/console', 'Now'], ['destinations', '/console/destinations', 'Destinations'], ['apps', '/console/apps', 'Apps'], ['jobs', '/console/jobs', 'Jobs']] as const
type Section = typeof SECTIONS[number][0]

const csrfField = (csrf: string): Html => html`<input type="hidden" name="_csrf" value="${csrf}">`

/** A POST form of one button, with the CSRF token. */
export const action = (path: string, label: string, csrf: string, fields: Record<string, string> = {}, kind = ''): Html =>
  html`<form method="post" action="${path}" class="inline">${csrfField(csrf)}${Object.entries(fields).map(([name, value]) => html`<input type="hidden" name="${name}" value="${value}">`)}<button type="submit" class="${kind}">${label}</button></form>`

function document (title: string, body: Html): Html {
  return html`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>${title} · aibill console</title>
<link rel="stylesheet" href="/console/assets/console.css"><script src="/console/assets/console.js" defer></script></head>
<body>${body}</body></html>`
}

export function page (context: PageContext, section: Section, title: string, content: Html, refresh = true): Html {
  const who = context.viewer.name === null ? 'administrator' : `${context.viewer.name}${context.viewer.admin ? ' (all callers)' : ''}`
  return document(title, html`<header><a class="brand" href="/console">aibill console</a>
<nav aria-label="Sections">${SECTIONS.map(([name, path, label]) => html`<a href="${path}"${name === section ? html` aria-current="page"` : ''}>${label}</a>`)}</nav>
<span class="who">${who}</span>${action('/console/sign-out', 'Sign out', context.csrf, {}, 'quiet')}</header>
<main id="main"${refresh ? html` data-refresh="5"` : ''}><h1>${title}</h1>
${context.notice === undefined ? '' : html`<p class="notice ${context.notice.kind}" role="status">${context.notice.text}</p>`}
${content}</main>`)
}

export function signInPage (csrf: string, refused: boolean): Html {
  return document('Sign in', html`<main id="main" class="sign-in"><h1>aibill console</h1>
${refused ? html`<p class="notice error" role="alert">That token does not open the console.</p>` : ''}
<form method="post" action="/console/sign-in">${csrfField(csrf)}
<label for="token">Console token or caller key</label>
<input id="token" name="token" type="password" autocomplete="current-password" required maxlength="512" autofocus>
<button type="submit">Sign in</button></form></main>`)
}

export function errorPage (status: number, code: string): Html {
  return document('Refused', html`<main id="main"><h1>${status} ${code}</h1><p><a href="/console">Back to the console</a></p></main>`)
}

/** What a signed-in operator reads when a page cannot be given: what is missing, or the code. */
export function refusedContent (code: string, missing: string | undefined): Html {
  if (missing !== undefined) return html`<p class="notice error">Queued delivery is off: it needs ${missing}.</p>`
  return html`<p>The service answered ${code}.</p><p><a href="/console">Back to the console</a></p>`
}

/** An age in words: 42 s, 5 min, 3 h. */
export function age (seconds: number): string {
  if (seconds < 120) return `${Math.round(seconds)} s`
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`
  return `${Math.round(seconds / 3600)} h`
}

const when = (iso: string | null | undefined): Html => (iso === null || iso === undefined ? html`<span class="muted">—</span>` : html`<time datetime="${iso}">${iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}</time>`)

export interface Overview {
  counts: Record<JobStatus, number>
  oldestSeconds: number
  /** Every caller's deliveries and failures a minute; null for a caller's own view. */
  throughput: { delivered: number[], failed: number[] } | null
}

/** Deliveries and failures a minute as bars, in SVG (no script, no inline style: the CSP allows neither). */
function chart (throughput: NonNullable<Overview['throughput']>): Html {
  const totals = throughput.delivered.map((count, index) => count + (throughput.failed[index] as number))
  const busiest = Math.max(0, ...totals)
  const high = (count: number): number => Math.round((count / Math.max(1, busiest)) * 1000) / 10
  // A bar for each minute that saw a job end; a quiet minute is a gap.
  const bars = throughput.delivered.map((delivered, index) => {
    const failed = throughput.failed[index] as number
    return html`${delivered === 0 ? '' : html`<rect class="delivered" x="${index * 10}" y="${100 - high(delivered)}" width="8" height="${high(delivered)}"></rect>`}${failed === 0 ? '' : html`<rect class="failed" x="${index * 10}" y="${100 - high(delivered) - high(failed)}" width="8" height="${high(failed)}"></rect>`}`
  })
  const sum = (series: number[]): number => series.reduce((total, count) => total + count, 0)
  return html`<figure class="chart"><svg viewBox="0 0 600 100" preserveAspectRatio="none" role="img" aria-label="Deliveries and failures a minute over the last hour">${bars}</svg>
<figcaption><span class="key delivered"></span>${sum(throughput.delivered)} delivered · <span class="key failed"></span>${sum(throughput.failed)} failed in the last hour (busiest minute: ${busiest})</figcaption></figure>`
}

export function nowContent (overview: Overview | string): Html {
  if (typeof overview === 'string') return html`<p class="notice error">Queued delivery is off: it needs ${overview}.</p>`
  const { counts } = overview
  return html`<section class="tiles" aria-label="Jobs by status">
${(['queued', 'delivering', 'delivered', 'failed'] as const).map((status) => html`<a class="tile ${status}" href="/console/jobs?status=${status}"><span class="count">${counts[status]}</span> ${status}</a>`)}
<div class="tile"><span class="count">${overview.oldestSeconds === 0 ? '—' : age(overview.oldestSeconds)}</span> oldest waiting</div></section>
${overview.throughput === null ? html`<p class="muted">Your jobs: the newest ${LIST_SCAN} of each status.</p>` : html`<h2>Last hour</h2>${chart(overview.throughput)}`}`
}

export function destinationsContent (destinations: DestinationView[]): Html {
  if (destinations.length === 0) return html`<p>No destination has been tried lately.</p>`
  return html`<div class="scroll"><table><thead><tr><th>Destination</th><th>State</th><th>Recent attempts</th><th>Failure rate</th><th>Last error</th><th>Last attempt</th><th>Waiting</th><th>Sending</th></tr></thead><tbody>
${destinations.map((destination) => html`<tr><td><a href="/console/jobs?destination=${destination.host}">${destination.host}</a></td>
<td><span class="state ${destination.state}">${destination.state}</span>${destination.paused_until === null ? '' : html` until ${when(destination.paused_until)} (${destination.paused_by})`}</td>
<td>${destination.recent.attempts}</td><td>${Math.round(destination.recent.failure_rate * 100)} %</td><td>${destination.last_error ?? '—'}</td>
<td>${when(destination.last_attempt_at)}</td><td>${destination.waiting}</td><td>${destination.in_flight}</td></tr>`)}
</tbody></table></div>`
}

export interface CozeAppRow { name: string, appId: string, kids: string[], activity: AppActivity | undefined }
export interface FeishuAppRow { name: string, appId: string, origin: string, activity: AppActivity | undefined }

const count = (activity: AppActivity | undefined, ...outcomes: string[]): number => outcomes.reduce((sum, outcome) => sum + (activity?.counts[outcome] ?? 0), 0)
const failures = (activity: AppActivity | undefined, successes: string[]): number =>
  Object.entries(activity?.counts ?? {}).reduce((sum, [outcome, times]) => sum + (successes.includes(outcome) ? 0 : times), 0)
const lastFailure = (activity: AppActivity | undefined, now: number): Html => {
  const failure = activity?.last_failure ?? null
  if (failure === null) return html`<span class="muted">none</span>`
  return html`${failure.code} ${age((now - failure.at) / 1000)} ago${failure.logid === undefined ? '' : html`<br><span class="muted">logid</span> <code>${failure.logid}</code>`}`
}

export function appsContent (coze: CozeAppRow[], feishu: FeishuAppRow[], now: number): Html {
  return html`<p class="muted">Counts since this instance started.</p>
<h2>Coze apps</h2>${coze.length === 0 ? html`<p>No Coze app is configured.</p>` : html`<div class="scroll"><table><thead><tr><th>App</th><th>App id</th><th>Keys (kid)</th><th>Cache hits</th><th>Exchanges</th><th>Failures</th><th>Last failure</th></tr></thead><tbody>
${coze.map((app) => html`<tr><td>${app.name}</td><td><code>${app.appId}</code></td><td>${app.kids.length === 0 ? html`<span class="muted">the caller's</span>` : app.kids.map((kid) => html`<code>${kid}</code> `)}</td>
<td>${count(app.activity, 'hit', 'shared')}</td><td>${count(app.activity, 'miss', 'success')}</td><td>${failures(app.activity, ['hit', 'shared', 'miss', 'success'])}</td><td>${lastFailure(app.activity, now)}</td></tr>`)}
</tbody></table></div>`}
<h2>Feishu apps</h2>${feishu.length === 0 ? html`<p>No Feishu app is configured.</p>` : html`<div class="scroll"><table><thead><tr><th>App</th><th>App id</th><th>Open Platform</th><th>Token fetched</th><th>Fetch failures</th><th>Last fetch error</th></tr></thead><tbody>
${feishu.map((app) => html`<tr><td>${app.name}</td><td><code>${app.appId}</code></td><td>${app.origin}</td>
<td>${app.activity?.last_ok_at === null || app.activity === undefined ? html`<span class="muted">not by this instance</span>` : `${age((now - app.activity.last_ok_at) / 1000)} ago`}</td>
<td>${failures(app.activity, ['ok'])}</td><td>${lastFailure(app.activity, now)}</td></tr>`)}
</tbody></table></div>`}`
}

export interface JobFilterForm { status: JobStatus | undefined, destination: string | undefined, caller: string | undefined }

const query = (fields: Record<string, string | undefined>): string =>
  new URLSearchParams(Object.entries(fields).filter((entry): entry is [string, string] => entry[1] !== undefined && entry[1] !== '')).toString()

export function jobsContent (jobs: JobView[], filter: JobFilterForm, callers: string[]): Html {
  const select = (name: string, options: readonly string[], chosen: string | undefined, any: string): Html =>
    html`<select id="${name}" name="${name}"><option value="">${any}</option>${options.map((option) => html`<option${option === chosen ? html` selected` : ''}>${option}</option>`)}</select>`
  return html`<form method="get" action="/console/jobs" class="filter">
<label for="status">Status</label>${select('status', ['queued', 'delivering', 'delivered', 'failed'], filter.status, 'any')}
<label for="destination">Destination</label><input id="destination" name="destination" value="${filter.destination ?? ''}" placeholder="host/path" maxlength="512">
${callers.length === 0 ? '' : html`<label for="caller">Caller</label>${select('caller', callers, filter.caller, 'all')}`}
<button type="submit">Filter</button>
<a class="button" href="/console/replay?${query({ destination: filter.destination, caller: filter.caller })}">Replay the failed ones…</a></form>
${jobs.length === 0 ? html`<p>No job matches.</p>` : html`<div class="scroll"><table><thead><tr><th>Created</th><th>Status</th><th>Destination</th><th>Attempts</th><th>Last attempt</th></tr></thead><tbody>
${jobs.map((job) => html`<tr><td><a href="/console/jobs/${job.id}">${when(job.created_at)}</a></td><td><span class="state ${job.status}">${job.status}</span></td><td>${job.destination}</td><td>${job.attempts}</td>
<td>${job.last_attempt === null ? '—' : html`${job.last_attempt.status ?? ''} ${job.last_attempt.error ?? ''}`}</td></tr>`)}
</tbody></table></div>`}`
}

/** The answer as the destination wrote it, cut at this many characters. */
export const ANSWER_SHOWN_CHARS = 4096

export function jobContent (job: JobView, answerText: string | undefined, csrf: string): Html {
  const history = job.history ?? []
  return html`<dl class="facts"><dt>Job</dt><dd><code>${job.id}</code></dd><dt>Status</dt><dd><span class="state ${job.status}">${job.status}</span>${job.waiting_for === null ? '' : ` (${job.waiting_for})`}</dd>
<dt>Destination</dt><dd>${job.destination}</dd><dt>Created</dt><dd>${when(job.created_at)}</dd><dt>Attempts</dt><dd>${job.attempts}</dd>
<dt>Next attempt</dt><dd>${when(job.next_attempt_at)}</dd></dl>
<div class="actions">${job.status === 'failed' ? action(`/console/jobs/${job.id}/retry`, 'Retry', csrf) : ''}${job.status === 'queued' ? action(`/console/jobs/${job.id}/cancel`, 'Cancel', csrf, {}, 'danger') : ''}</div>
<h2>Attempts</h2>${history.length === 0 ? html`<p>No attempt yet.</p>` : html`<ol class="timeline">${history.map((attempt) => html`<li>${when(attempt.at)} · ${attempt.status === undefined ? '' : html`HTTP ${attempt.status} `}${attempt.error ?? 'delivered'}${attempt.next_attempt_at === undefined ? '' : html` · next at ${when(attempt.next_attempt_at)}`} <span class="muted">on ${attempt.instance === '' ? 'an earlier version' : attempt.instance}</span></li>`)}</ol>`}
${job.history !== undefined && job.attempts > history.length ? html`<p class="muted">The ${history.length} latest of ${job.attempts} attempts.</p>` : ''}
<h2>Destination's answer</h2>${job.answer === undefined ? html`<p class="muted">None kept.</p>` : html`<p>HTTP ${job.answer.status}</p><pre>${(answerText as string).length > ANSWER_SHOWN_CHARS ? `${(answerText as string).slice(0, ANSWER_SHOWN_CHARS)}… (cut)` : answerText}</pre>`}`
}

export function replayContent (matching: number, filter: JobFilterForm, csrf: string): Html {
  const what = [filter.destination === undefined ? '' : `to ${filter.destination}`, filter.caller === undefined ? '' : `of ${filter.caller}`].filter(Boolean).join(' ')
  if (matching === 0) return html`<p>No failed job ${what} to replay.</p><p><a href="/console/jobs?status=failed">Back to the failed jobs</a></p>`
  return html`<p>${matching} failed job${matching === 1 ? '' : 's'} ${what} will be put back in the queue, each with a new age.</p>
${action('/console/replay', `Replay ${matching} job${matching === 1 ? '' : 's'}`, csrf, { ...(filter.destination === undefined ? {} : { destination: filter.destination }), ...(filter.caller === undefined ? {} : { caller: filter.caller }), expected: String(matching) })}
<a class="button quiet" href="/console/jobs?${query({ status: 'failed', destination: filter.destination, caller: filter.caller })}">Back</a>`
}
