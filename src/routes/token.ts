import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ServiceError } from '../lib/errors.js'
import { configurationStatus } from '../plugins/readiness.js'
import { serves } from '../schemas/config.js'
import { Envelope, errorResponses, ok } from '../schemas/envelope.js'
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
    schema: {
      operationId: 'createToken',
      security: [{ apiKey: [] }],
      summary: 'Mint a Coze access token: sign an RS256 JWT with the service key and exchange it at Coze.',
      tags: ['coze'],
      headers: ApiKeyHeaders,
      body: TokenBody,
      response: { 200: Envelope(TokenData), ...errorResponses }
    }
  }, async (request) => {
    const body = request.body
    if (!apiKeys.configured) throw new ServiceError('NOT_CONFIGURED', { missing: 'EXPECTED_COZE_API_KEY' })
    // The header wins over the body field, which stays for callers of the original service.
    const callerKey = request.headers['x-api-key'] ?? body.coze_api_key
    const keyIndex = apiKeys.match(callerKey)
    if (keyIndex < 0) throw new ServiceError('UNAUTHORIZED')

    const { token, outcome, logid } = await coze.getAccessToken({
      kid: body.public_key,
      callerKey: callerKey as string,
      callerKeyIndex: keyIndex,
      sessionName: body.session_name,
      // The schema's default fills it in when the caller leaves it out.
      durationSeconds: body.duration_seconds as number
    })
    fastify.serviceMetrics.tokenRequest(outcome)
    request.logFields = logid === undefined ? { cache: outcome } : { cache: outcome, coze_logid: logid }
    return ok(request.headers['accept-language'], 'TOKEN_OK', token)
  })
}

export default tokenRoutes
