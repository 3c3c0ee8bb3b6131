import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { configurationStatus } from '../lib/readiness.js'
import { serves } from '../schemas/config.js'
import { Envelope, errorResponses } from '../schemas/envelope.js'
import { ApiKeyHeaders } from '../schemas/resend.js'
import { TokenBody, TokenData } from '../schemas/token.js'

const tokenRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { apiKeys, config, coze } = fastify
  if (!serves(config, 'token')) return
  const missing = [...(apiKeys.configured ? [] : ['EXPECTED_COZE_API_KEY']), ...coze.missing]
  fastify.readiness.add('token', async () => configurationStatus(missing))

  fastify.post('/token', {
    // An answer that carries a token is never stored by a proxy or a browser, errors included.
    onRequest: (_request, reply, done) => { reply.preventCache(); done() },
    preHandler: fastify.requireCallerKey,
    schema: {
      operationId: 'createToken',
      security: [{ apiKey: [] }],
      summary: 'Mint a Coze access token: sign an RS256 JWT with the service key and exchange it at Coze.',
      tags: ['coze'],
      headers: ApiKeyHeaders,
      body: TokenBody,
      response: { 200: Envelope(TokenData), ...errorResponses }
    }
  }, async (request, reply) => {
    const { body, caller } = request
    const { token, outcome, logid } = await coze.getAccessToken({
      kid: body.public_key,
      callerKey: caller?.key as string,
      callerKeyIndex: caller?.index as number,
      sessionName: body.session_name,
      // The schema's default fills it in when the caller leaves it out.
      durationSeconds: body.duration_seconds as number
    })
    request.logFields = logid === undefined ? { cache: outcome } : { cache: outcome, coze_logid: logid }
    return reply.ok('TOKEN_OK', token)
  })
}

export default tokenRoutes
