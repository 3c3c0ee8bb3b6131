import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ServiceError, outcomeOf } from '../lib/errors.js'
import { configurationStatus } from '../plugins/readiness.js'
import { serves } from '../schemas/config.js'
import type { ResendMethod } from '../plugins/resend.js'
import { Envelope, errorResponses, ok } from '../schemas/envelope.js'
import { ApiKeyHeaders, ResendBody, ResendData } from '../schemas/resend.js'

const resendRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { apiKeys, config } = fastify
  if (!serves(config, 'resend')) return
  fastify.readiness.add('resend', async () => configurationStatus(apiKeys.configured ? [] : ['EXPECTED_COZE_API_KEY']))

  fastify.post('/resend', {
    schema: {
      operationId: 'resend',
      security: [{ apiKey: [] }],
      summary: 'Send a failed request again, to an allowed destination only, and return its answer.',
      tags: ['resend'],
      headers: ApiKeyHeaders,
      body: ResendBody,
      response: { 200: Envelope(ResendData), ...errorResponses }
    }
  }, async (request) => {
    const { body } = request
    if (!apiKeys.configured) throw new ServiceError('NOT_CONFIGURED', { missing: 'EXPECTED_COZE_API_KEY' })
    if (!apiKeys.verify(request.headers['x-api-key'] ?? body.coze_api_key)) throw new ServiceError('UNAUTHORIZED')

    let outcome
    const trace: Record<string, unknown> = {}
    request.logFields = trace
    try {
      outcome = await fastify.resend.resend({
        location: body.location,
        // The schema's defaults fill these in when the caller leaves them out.
        method: body.method as ResendMethod,
        maxAttempts: body.max_attempts as number,
        headers: body.headers,
        params: body.params,
        commands: body.commands
      }, request.log, trace)
    } catch (err) {
      const attempts = (err as Partial<ServiceError>).details?.attempts
      fastify.serviceMetrics.resend(outcomeOf(err), typeof attempts === 'number' ? attempts : 0)
      throw err
    }
    const succeeded = outcome.status >= 200 && outcome.status <= 299
    fastify.serviceMetrics.resend(succeeded ? 'success' : 'upstream_error', outcome.attempts)
    if (!succeeded) throw new ServiceError('UPSTREAM_ERROR', { ...outcome })
    return ok(request.headers['accept-language'], 'RESEND_OK', outcome)
  })
}

export default resendRoutes
