import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { RawJson, stringifyWithRaw } from '../lib/exact-json.js'
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
    const { answer, trace } = await relay.send({ location, method, headers, params, bodyText: request.bodyText, commands, maxAttempts })
    request.logFields = trace
    // An answer whose numbers a parse would change is written as the destination wrote it.
    if (answer.body instanceof RawJson) void reply.serializer(stringifyWithRaw)
    return reply.ok('RESEND_OK', answer)
  })
}

export default resendRoutes
