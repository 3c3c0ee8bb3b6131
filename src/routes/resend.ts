import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { configurationStatus } from '../lib/readiness.js'
import { serves } from '../schemas/config.js'
import { Envelope, errorResponses } from '../schemas/envelope.js'
import { ApiKeyHeaders, ResendBody, ResendData } from '../schemas/resend.js'

const resendRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { callersMissing, config, relay } = fastify
  if (!serves(config, 'resend')) return
  fastify.readiness.add('resend', async () => configurationStatus(callersMissing))

  fastify.post('/resend', {
    preHandler: fastify.callerGate('resend'),
    schema: {
      operationId: 'resend',
      security: [{ apiKey: [] }],
      summary: 'Send a failed request again, to an allowed destination only, and return its answer.',
      tags: ['resend'],
      headers: ApiKeyHeaders,
      body: ResendBody,
      response: { 200: Envelope(ResendData), ...errorResponses }
    }
  }, async (request, reply) => {
    const { location, method, headers, params, commands, max_attempts: maxAttempts } = request.body
    const { answer, trace } = await relay.send({ location, method, headers, params, commands, maxAttempts })
    request.logFields = trace
    return reply.ok('RESEND_OK', answer)
  })
}

export default resendRoutes
