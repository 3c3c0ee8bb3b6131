import { readFileSync } from 'node:fs'
import { STATUS_CODES } from 'node:http'
import fastifyCsrf from '@fastify/csrf-protection'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { isServiceError, ServiceError, stringifyWithRaw } from '../lib/http/index.js'
import type { Activity } from '../lib/ops/index.js'
import { BULK_LIMIT, JOB_STATUSES, LIST_SCAN, type JobQueue, type JobStatus, type JobView } from '../lib/relay/index.js'
import type { ConsoleAccess, ConsoleViewer } from './access.js'
import type { Html } from './html.js'
import { appsContent, type CozeAppRow, destinationsContent, errorPage, refusedContent, type FeishuAppRow, jobContent, type JobFilterForm, jobsContent, type Notice, nowContent, type Overview, page, replayContent, signInPage } from './pages.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** Who signed in to the console, from its session cookie; null before. */
    consoleViewer: ConsoleViewer | null
  }
  interface FastifyContextConfig {
    /** A console route open before sign-in: the sign-in and the page's assets. */
    consolePublic?: boolean
  }
}

export const SESSION_COOKIE = 'aibill_console'

export interface ConsoleRoutesOptions {
  access: ConsoleAccess
  sessionMinutes: number
  /** Queued delivery, or what it lacks. */
  jobs: JobQueue | null
  jobsMissing: string[]
  activity: Activity
  cozeApps: Array<{ name: string, appId: string, kids: string[] }>
  feishuApps: Array<{ name: string, appId: string, origin: string }>
  /** Broker mode: the callers an administrator may filter jobs by. */
  callers: string[]
  signInLimit: { max: number, timeWindow: string }
  /** Binds each CSRF token to who is signed in (the same on every instance). */
  csrfKey: Buffer
}

/** Who a CSRF token is bound to: the signed-out visitor, the administrator, or a caller. */
const viewerKey = (request: FastifyRequest): string => (request.consoleViewer === null ? '-' : request.consoleViewer.name ?? '*')

/** The script and the style sheet: served from the service itself (no CDN; the CSP allows no other). */
const TYPES: Record<string, string> = { 'console.js': 'text/javascript; charset=utf-8', 'console.css': 'text/css; charset=utf-8' }

/** Form fields: strings only, each at most this long (a field sent twice, or a longer one, is refused). */
function field (body: unknown, name: string, max = 512): string | undefined {
  const value = (body as Record<string, unknown> | undefined)?.[name]
  if (value === undefined || value === '') return undefined
  if (typeof value !== 'string' || value.length > max) throw new ServiceError('VALIDATION_FAILED', { field: name, reason: `it takes one text of at most ${max} characters` })
  return value
}

const JOB_ID = /^[0-9a-f-]{36}$/

/** What an action's redirect says on the page it lands on: fixed sentences, and a count. */
function noticeOf (query: unknown): Notice | undefined {
  const { done, refused, replayed } = query as { done?: unknown, refused?: unknown, replayed?: unknown }
  if (done === 'retried') return { kind: 'ok', text: 'Put back in the queue.' }
  if (done === 'cancelled') return { kind: 'ok', text: 'Cancelled: the job is removed.' }
  if (refused === 'retry') return { kind: 'error', text: 'Not retried: only a failed job can be.' }
  if (refused === 'cancel') return { kind: 'error', text: 'Not cancelled: only a queued job can be (it is delivering, or has ended).' }
  if (typeof replayed === 'string' && /^\d{1,6}$/.test(replayed)) return { kind: 'ok', text: `${replayed} failed job${replayed === '1' ? '' : 's'} put back in the queue.` }
  return undefined
}

export async function consoleRoutes (fastify: FastifyInstance, options: ConsoleRoutesOptions): Promise<void> {
  const { access } = options
  const cookieOptions = { path: '/console', httpOnly: true, sameSite: 'strict', secure: 'auto', signed: true } as const
  const send = (reply: FastifyReply, status: number, body: Html): FastifyReply => reply.code(status).type('text/html; charset=utf-8').send(body.text)
  // One CSRF token per answer (a second call could make a second secret), bound to who is signed in.
  const tokens = new WeakMap<FastifyReply, string>()
  const csrf = (request: FastifyRequest, reply: FastifyReply): string => {
    let token = tokens.get(reply)
    if (token === undefined) {
      token = reply.generateCsrf({ userInfo: viewerKey(request) })
      tokens.set(reply, token)
    }
    return token
  }
  const render = (request: FastifyRequest, reply: FastifyReply, section: Parameters<typeof page>[1], title: string, content: Html, notice?: Notice, status = 200, refresh = true): FastifyReply =>
    send(reply, status, page({ viewer: request.consoleViewer as ConsoleViewer, csrf: csrf(request, reply), notice }, section, title, content, refresh))
  const owner = (request: FastifyRequest, caller?: string): string | null => {
    const viewer = request.consoleViewer as ConsoleViewer
    if (!viewer.admin) return viewer.name
    return caller !== undefined && options.callers.includes(caller) ? caller : null
  }
  const jobs = (): JobQueue => {
    if (options.jobs === null) throw new ServiceError('NOT_CONFIGURED', { missing: options.jobsMissing })
    return options.jobs
  }
  const filterOf = (request: FastifyRequest, source: unknown): JobFilterForm => {
    const status = field(source, 'status')
    const viewer = request.consoleViewer as ConsoleViewer
    return {
      status: JOB_STATUSES.includes(status as JobStatus) ? status as JobStatus : undefined,
      destination: field(source, 'destination'),
      caller: viewer.admin ? field(source, 'caller', 64) : undefined
    }
  }

  fastify.decorateRequest('consoleViewer', null)
  await fastify.register(fastifyCsrf, {
    sessionPlugin: '@fastify/cookie',
    cookieKey: 'aibill_console_csrf',
    // A browser-session cookie: a page's forms keep working as long as its session does.
    cookieOpts: cookieOptions,
    getUserInfo: viewerKey,
    csrfOpts: { hmacKey: options.csrfKey }
  })
  fastify.addHook('onRequest', async (request, reply) => {
    const cookie = request.cookies[SESSION_COOKIE]
    const signed = cookie === undefined ? null : request.unsignCookie(cookie)
    request.consoleViewer = signed?.valid === true ? access.viewerOf(signed.value as string, Date.now()) : null
    if (request.consoleViewer !== null || request.routeOptions.config.consolePublic === true) return
    // Signed out, expired, or never signed in: the sign-in page and nothing else.
    return send(reply, 401, signInPage(csrf(request, reply), false))
  })
  // Actions: same-origin POSTs (a browser says where a request comes from) with the form's CSRF token.
  fastify.addHook('onRequest', async (request) => {
    const site = request.headers['sec-fetch-site']
    if (request.method === 'POST' && site !== undefined && site !== 'same-origin' && site !== 'none') throw new ServiceError('FORBIDDEN', { reason: 'cross-site' })
  })
  fastify.addHook('preHandler', (request, reply, done) => {
    if (request.method === 'POST') fastify.csrfProtection(request, reply, done)
    else done()
  })
  fastify.setErrorHandler(async (error, request, reply) => {
    // The service's own errors by their code; a plugin's (the CSRF guard, the form parser) by their status.
    const known = isServiceError(error)
    /* c8 ignore next 2 - every error met here is the service's or carries a status (Fastify's, its plugins'); another would be a 500, logged */
    const status = (error as { statusCode?: number }).statusCode ?? 500
    if (!known && status >= 500) request.log.error({ err: { message: (error as Error).message } }, 'console: the page failed')
    if (known && error.details.retry_after_seconds !== undefined) void reply.header('retry-after', String(error.details.retry_after_seconds))
    const code = known ? error.code : (STATUS_CODES[status] as string).toUpperCase().replace(/ /g, '_')
    // Signed in, the answer keeps the console around it (a page the queue is needed for, without the queue).
    if (request.consoleViewer === null) return send(reply, status, errorPage(status, code))
    const missing = known && code === 'NOT_CONFIGURED' ? options.jobsMissing.join(' and ') : undefined
    return render(request, reply, 'now', `${status} ${code}`, refusedContent(code, missing), undefined, status, false)
  })

  // Read once, when the console is on (a service without it does not need the files).
  for (const [file, type] of Object.entries(TYPES)) {
    const content = readFileSync(new URL(`../../public/console/${file}`, import.meta.url))
    fastify.get(`/console/assets/${file}`, { config: { consolePublic: true } }, async (_request, reply) =>
      await reply.type(type).header('cache-control', 'no-cache').send(content))
  }

  fastify.get('/console', { config: { consolePublic: true } }, async (request, reply) => {
    if (request.consoleViewer === null) return send(reply, 200, signInPage(csrf(request, reply), false))
    const viewer = request.consoleViewer
    let overview: Overview | string = options.jobsMissing.join(' and ')
    if (options.jobs !== null && viewer.admin) overview = { ...options.jobs.snapshot(), throughput: await options.jobs.throughput() }
    if (options.jobs !== null && !viewer.admin) {
      // A caller's own jobs only, as its listing reads them (each status's newest LIST_SCAN); the queue's chart is
      // every caller's, and is not shown.
      const own = await options.jobs.list(viewer.name, undefined, LIST_SCAN * JOB_STATUSES.length)
      const counts = Object.fromEntries(JOB_STATUSES.map((status) => [status, own.filter((job) => job.status === status).length])) as Record<JobStatus, number>
      const waiting = own.filter((job) => job.status === 'queued' || job.status === 'delivering').map((job) => Date.parse(job.created_at))
      overview = { counts, oldestSeconds: waiting.length === 0 ? 0 : (Date.now() - Math.min(...waiting)) / 1000, throughput: null }
    }
    return render(request, reply, 'now', 'Now', nowContent(overview))
  })

  fastify.post('/console/sign-in', { config: { consolePublic: true, rateLimit: options.signInLimit }, bodyLimit: 4096 }, async (request, reply) => {
    const viewer = access.signIn(field(request.body, 'token') ?? '')
    if (viewer === null) {
      request.log.info({ reason: 'console_sign_in_refused' }, 'console: a sign-in was refused')
      return send(reply, 401, signInPage(csrf(request, reply), true))
    }
    request.log.info({ console_viewer: viewer.name ?? 'administrator' }, 'console: signed in')
    void reply.setCookie(SESSION_COOKIE, access.session(viewer, Date.now()), { ...cookieOptions, maxAge: options.sessionMinutes * 60 })
    return await reply.code(303).header('location', '/console').send()
  })

  fastify.post('/console/sign-out', { bodyLimit: 4096 }, async (_request, reply) => {
    void reply.clearCookie(SESSION_COOKIE, cookieOptions)
    return await reply.code(303).header('location', '/console').send()
  })

  fastify.get('/console/destinations', async (request, reply) =>
    render(request, reply, 'destinations', 'Destinations', destinationsContent(await jobs().listDestinations(owner(request)))))

  fastify.get('/console/apps', async (request, reply) => {
    const viewer = request.consoleViewer as ConsoleViewer
    const now = Date.now()
    const coze: CozeAppRow[] = options.cozeApps.filter((app) => viewer.apps === null || viewer.apps.has(app.name))
      .map((app) => ({ ...app, activity: options.activity.read('coze').get(app.name) }))
    const feishu: FeishuAppRow[] = options.feishuApps.filter((app) => viewer.feishuApps === null || viewer.feishuApps.has(app.name))
      .map((app) => ({ ...app, activity: options.activity.read('feishu').get(app.name) }))
    return render(request, reply, 'apps', 'Apps', appsContent(coze, feishu, now))
  })

  /** The jobs of the filter, newest first: each status read newest first (LIST_SCAN), then the destination. */
  const listed = async (request: FastifyRequest, filter: JobFilterForm): Promise<JobView[]> => {
    const all = await jobs().list(owner(request, filter.caller), filter.status, LIST_SCAN)
    const prefix = filter.destination
    return all.filter((job) => prefix === undefined || job.destination === prefix || job.destination.startsWith(prefix.endsWith('/') ? prefix : `${prefix}/`)).slice(0, 100)
  }
  const jobsPage = async (request: FastifyRequest, reply: FastifyReply, filter: JobFilterForm, notice?: Notice) =>
    render(request, reply, 'jobs', 'Jobs', jobsContent(await listed(request, filter), filter, (request.consoleViewer as ConsoleViewer).admin ? options.callers : []), notice)
  fastify.get('/console/jobs', async (request, reply) => await jobsPage(request, reply, filterOf(request, request.query), noticeOf(request.query)))

  const jobPage = async (request: FastifyRequest, reply: FastifyReply, job: JobView, notice?: Notice) =>
    render(request, reply, 'jobs', 'Job', jobContent(job, job.answer === undefined ? undefined : stringifyWithRaw(job.answer.body), csrf(request, reply)), notice)
  const jobId = (request: FastifyRequest): string => {
    const { id } = request.params as { id: string }
    if (!JOB_ID.test(id)) throw new ServiceError('NOT_FOUND', { resource: 'job' })
    return id
  }
  fastify.get('/console/jobs/:id', async (request, reply) => await jobPage(request, reply, await jobs().get(jobId(request), owner(request)), noticeOf(request.query)))

  // The job routes' own operations, under the same ownership. Each action answers with a redirect to the page
  // that shows its result (a reload does not repeat it); a refusal (409: not failed, not queued) says so there.
  const act = (operation: 'retry' | 'cancel') => async (request: FastifyRequest, reply: FastifyReply) => {
    const id = jobId(request)
    const outcome = await jobs()[operation](id, owner(request)).then((job) => job.status, (err: unknown) => {
      if (isServiceError(err) && err.code === 'CONFLICT') return 'refused'
      throw err
    })
    const location = outcome === 'cancelled' ? '/console/jobs?done=cancelled' : `/console/jobs/${id}?${outcome === 'refused' ? `refused=${operation}` : 'done=retried'}`
    return await reply.code(303).header('location', location).send()
  }
  fastify.post('/console/jobs/:id/retry', { bodyLimit: 4096 }, act('retry'))
  fastify.post('/console/jobs/:id/cancel', { bodyLimit: 4096 }, act('cancel'))

  const replayFilter = (request: FastifyRequest, filter: JobFilterForm) =>
    ({ owner: owner(request, filter.caller), filter: { destination: filter.destination, limit: BULK_LIMIT } })
  fastify.get('/console/replay', async (request, reply) => {
    const filter = filterOf(request, request.query)
    const { owner: whose, filter: matching } = replayFilter(request, filter)
    return render(request, reply, 'jobs', 'Replay failed jobs', replayContent(await jobs().countMany(whose, matching, 'failed'), filter, csrf(request, reply)), undefined, 200, false)
  })
  fastify.post('/console/replay', { bodyLimit: 4096 }, async (request, reply) => {
    const filter = filterOf(request, request.body)
    const { owner: whose, filter: matching } = replayFilter(request, filter)
    const ids = await jobs().retryMany(whose, matching)
    const back = new URLSearchParams({ replayed: String(ids.length), ...(filter.destination === undefined ? {} : { destination: filter.destination }), ...(filter.caller === undefined ? {} : { caller: filter.caller }) })
    return await reply.code(303).header('location', `/console/jobs?${back.toString()}`).send()
  })
}
