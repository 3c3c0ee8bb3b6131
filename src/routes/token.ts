import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ServiceError } from '../lib/errors.js'
import { Envelope, errorResponses, ok } from '../schemas/envelope.js'
import { TokenBody, TokenData } from '../schemas/token.js'

const tokenRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, apiKeys } = fastify

  fastify.post('/token', {
    schema: {
      summary: 'Mint a Coze access token: sign an RS256 JWT with the service key and exchange it at Coze.',
      tags: ['coze'],
      body: TokenBody,
      response: { 200: Envelope(TokenData), ...errorResponses }
    }
  }, async (request) => {
    const body = request.body
    if (!apiKeys.configured) throw new ServiceError('NOT_CONFIGURED', { missing: 'EXPECTED_COZE_API_KEY' })
    const keyIndex = apiKeys.match(body.coze_api_key)
    if (keyIndex < 0) throw new ServiceError('UNAUTHORIZED')

    const { token, outcome } = await fastify.coze.getAccessToken({
      kid: body.public_key,
      // Without an app id the presented key is the issuer, as the original service did.
      iss: config.COZE_APP_ID || body.coze_api_key,
      issuerId: config.COZE_APP_ID ? 'app' : `key-${keyIndex}`,
      sessionName: body.session_name,
      // The schema's default fills it in when the caller leaves it out.
      durationSeconds: body.duration_seconds as number
    })
    fastify.serviceMetrics.tokenRequest(outcome)
    request.log.debug({ cache: outcome }, 'coze token issued')
    return ok(request.headers['accept-language'], 'TOKEN_OK', token)
  })
}

export default tokenRoutes
