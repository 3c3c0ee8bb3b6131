import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { RawJson, ServiceError, stringifyWithRaw } from '../lib/http/index.js'
import { BULK_LIMIT, canonicalRequest, type JobFilter, type JobQueue, type JobView } from '../lib/relay/index.js'
import { configurationStatus } from '../lib/ops/index.js'
import { serves } from '../schemas/config.js'
import { Envelope, errorResponses } from '../schemas/envelope.js'
import { ApiKeyHeaders, BulkCancelBody, BulkData, BulkRetryBody, DestinationListData, JobData, JobListData, JobListQuery, JobParams, QueuedData, ResendBody, ResendData, ResendHeadersIn } from '../schemas/resend.js'

/** Whether the caller asked for queued delivery: the body's `delivery`, or Prefer: respond-async (RFC 7240). */
function wantsQueue (delivery: string | undefined, prefer: string | undefined): boolean {
  if (delivery !== undefined) return delivery === 'queued'
  return prefer !== undefined && prefer.split(',').some((preference) => preference.split(';', 1)[0]?.trim().toLowerCase() === 'respond-async')
}

/**
 * An answer that may carry JSON whose numbers a parse would change, written as the destination wrote it. (A
 * serializer of a reply's own leaves the Content-Type to it.)
 */
function exactly (reply: FastifyReply, body: unknown): void {
  if (body instanceof RawJson) void reply.serializer(stringifyWithRaw).type('application/json; charset=utf-8')
}

const resendRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { callersMissing, config, relay, resendJobs, resendQueueMissing } = fastify
  if (!serves(config, 'resend')) return
  fastify.readiness.add('resend', async () => configurationStatus(callersMissing))
  // Queued delivery is optional: without it /ready stays ready and says what it lacks.
  fastify.readiness.add('resend_queue', async () => (resendJobs === null ? `off: ${resendQueueMissing.join(', ')}` : await resendJobs.probe()))
  const gate = fastify.callerGate('resend')
  const owner = (request: FastifyRequest): string | null => request.brokerCaller?.name ?? null
  const jobs = (): JobQueue => {
    if (resendJobs === null) throw new ServiceError('NOT_CONFIGURED', { reason: `queued delivery needs ${resendQueueMissing.join(' and ')}`, missing: resendQueueMissing })
    return resendJobs
  }
  // What a job id and a limit are, in place of the validator's patterns.
  const hints = { validationHints: { id: 'it takes the job id POST /resend gave (a UUID)', limit: 'it takes a whole number from 1 to 100' } }
  // The job routes take no body: curl and many clients send an empty one with Content-Type: application/json.
  const jobRoute = { ...hints, bodiless: true }
  const jobSchema = (operationId: string, summary: string) => ({ operationId, summary, security: [{ apiKey: [] }], tags: ['resend'], headers: ApiKeyHeaders, params: JobParams, response: { 200: Envelope(JobData), ...errorResponses } })

  fastify.post('/resend', {
    ...gate,
    schema: {
      operationId: 'resend',
      security: [{ apiKey: [] }],
      summary: 'Send a failed request again, to an allowed destination only: now (its answer), or queued (202 and a job).',
      tags: ['resend'],
      headers: ResendHeadersIn,
      body: ResendBody,
      response: { 200: Envelope(ResendData), 202: Envelope(QueuedData), ...errorResponses }
    }
  }, async (request, reply) => {
    const { location, method, headers, params, commands, max_attempts: maxAttempts, delivery, auth } = request.body
    if (auth !== undefined && request.brokerCaller !== null && !request.brokerCaller.feishuApps.has(auth.feishu_app)) {
      throw new ServiceError('FORBIDDEN', { reason: 'feishu_app', detail: `the caller may not use the Feishu app ${auth.feishu_app} (its feishu_apps)` })
    }
    const queue = wantsQueue(delivery, request.headers.prefer) ? jobs() : null
    const prepared = await relay.prepare({ location, method, headers, params, bodyText: request.bodyText, commands, auth })
    if (queue !== null) {
      const idempotencyKey = request.headers['idempotency-key']
      const { view, replayed } = await queue.accept(prepared, owner(request), idempotencyKey === undefined ? undefined : { key: idempotencyKey, request: canonicalRequest(request.body, request.bodyText as string) })
      request.logFields = { job: view.id, destination: view.destination, ...(replayed ? { replayed } : {}) }
      void reply.code(202).header('location', view.status_url).header('preference-applied', 'respond-async')
      if (replayed) void reply.header('idempotent-replayed', 'true')
      return reply.ok(replayed ? 'RESEND_REPLAYED' : 'RESEND_QUEUED', { id: view.id, status: view.status, status_url: view.status_url })
    }
    const { answer, trace } = await relay.send(prepared, maxAttempts)
    request.logFields = trace
    exactly(reply, answer.body)
    return reply.ok('RESEND_OK', answer)
  })

  fastify.get('/resend/jobs', {
    ...gate,
    config: hints,
    schema: { operationId: 'listResendJobs', summary: 'Queued jobs, newest first: the caller\'s own in broker mode.', security: [{ apiKey: [] }], tags: ['resend'], headers: ApiKeyHeaders, querystring: JobListQuery, response: { 200: Envelope(JobListData), ...errorResponses } }
  }, async (request, reply) => {
    // Summaries: a listing carries no answer (GET /resend/jobs/{id} does).
    return reply.ok('RESEND_JOBS', { jobs: await jobs().list(owner(request), request.query.status, Number(request.query.limit ?? 20), request.query.idempotency_key) })
  })

  fastify.get('/resend/destinations', {
    ...gate,
    schema: { operationId: 'listResendDestinations', summary: 'Each destination host: its state (ok, paused, limited), recent failures and waiting jobs; the caller\'s own in broker mode.', security: [{ apiKey: [] }], tags: ['resend'], headers: ApiKeyHeaders, response: { 200: Envelope(DestinationListData), ...errorResponses } }
  }, async (request, reply) => {
    return reply.ok('RESEND_DESTINATIONS', { destinations: await jobs().listDestinations(owner(request)) })
  })

  // Bulk: every failed job (or queued one) the filter matches, up to its limit, as one by one would.
  const filterOf = (body: { destination?: string, since?: string, until?: string, limit?: number }): JobFilter =>
    ({ destination: body.destination, since: body.since === undefined ? undefined : Date.parse(body.since), until: body.until === undefined ? undefined : Date.parse(body.until), limit: body.limit ?? BULK_LIMIT })
  const bulkSchema = (operationId: string, summary: string, body: typeof BulkRetryBody | typeof BulkCancelBody) => ({ operationId, summary, security: [{ apiKey: [] }], tags: ['resend'], headers: ApiKeyHeaders, body, response: { 200: Envelope(BulkData), ...errorResponses } })
  fastify.post('/resend/jobs/retry', { ...gate, schema: bulkSchema('retryResendJobs', `Puts back up to ${BULK_LIMIT} failed jobs a filter matches (destination, when they failed); they meet the limits like any job.`, BulkRetryBody) }, async (request, reply) => {
    const ids = await jobs().retryMany(owner(request), filterOf(request.body))
    return reply.ok('RESEND_JOBS_RETRIED', { count: ids.length, ids })
  })
  fastify.delete('/resend/jobs', { ...gate, schema: bulkSchema('cancelResendJobs', `Cancels up to ${BULK_LIMIT} queued jobs a filter matches (destination, when they were created).`, BulkCancelBody) }, async (request, reply) => {
    const ids = await jobs().cancelMany(owner(request), filterOf(request.body))
    return reply.ok('RESEND_JOBS_CANCELLED', { count: ids.length, ids })
  })

  const answerJob = (reply: FastifyReply, view: JobView) => {
    exactly(reply, view.answer?.body)
    return reply.ok('RESEND_JOB', view)
  }
  fastify.get('/resend/jobs/:id', { ...gate, config: hints, schema: jobSchema('getResendJob', 'A queued job: its status, attempts, and the destination\'s answer once delivered.') }, async (request, reply) => {
    return answerJob(reply, await jobs().get(request.params.id, owner(request)))
  })
  fastify.post('/resend/jobs/:id/retry', { ...gate, config: jobRoute, schema: jobSchema('retryResendJob', 'Puts a failed job back in the queue, with a new RESEND_MAX_AGE; 409 unless it failed.') }, async (request, reply) => {
    return answerJob(reply, await jobs().retry(request.params.id, owner(request)))
  })
  fastify.delete('/resend/jobs/:id', { ...gate, config: jobRoute, schema: jobSchema('cancelResendJob', 'Cancels a queued job (it is removed); 409 once it is delivering or has ended.') }, async (request, reply) => {
    return answerJob(reply, await jobs().cancel(request.params.id, owner(request)))
  })
}

export default resendRoutes
