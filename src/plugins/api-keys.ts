import fp from 'fastify-plugin'
import { createApiKeyVerifier, type ApiKeyVerifier } from '../lib/api-keys.js'

declare module 'fastify' {
  interface FastifyInstance {
    apiKeys: ApiKeyVerifier
  }
}

/** The keys callers present to /token and /resend (EXPECTED_COZE_API_KEY, comma-separated for rotation). */
export default fp(async function apiKeys (fastify) {
  const verifier = createApiKeyVerifier(fastify.config.EXPECTED_COZE_API_KEY)
  if (!verifier.configured) fastify.log.warn('no EXPECTED_COZE_API_KEY: /token and /resend answer 503 NOT_CONFIGURED')
  fastify.decorate('apiKeys', verifier)
}, { name: 'api-keys', fastify: '5.x', dependencies: ['config'] })
