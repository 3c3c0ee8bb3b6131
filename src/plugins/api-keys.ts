import type { preHandlerHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { createApiKeyVerifier, type ApiKeyVerifier } from '../lib/api-keys.js'
import { ServiceError } from '../lib/errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    apiKeys: ApiKeyVerifier
    /** The preHandler of every route a caller key opens: NOT_CONFIGURED without keys, UNAUTHORIZED without a match. */
    requireCallerKey: preHandlerHookHandler
  }
  interface FastifyRequest {
    /** The key the caller presented and its place in EXPECTED_COZE_API_KEY, once requireCallerKey passed. */
    caller: { key: string, index: number } | null
  }
}

/** The keys callers present to /token and /resend (EXPECTED_COZE_API_KEY, comma-separated for rotation). */
export default fp(async function apiKeys (fastify) {
  const verifier = createApiKeyVerifier(fastify.config.EXPECTED_COZE_API_KEY)
  if (!verifier.configured) fastify.log.warn('no EXPECTED_COZE_API_KEY: /token and /resend answer 503 NOT_CONFIGURED')
  fastify.decorate('apiKeys', verifier)
  fastify.decorateRequest('caller', null)
  // X-API-Key wins over the body's coze_api_key, which stays for callers of the original services.
  fastify.decorate('requireCallerKey', function requireCallerKey (request, _reply, done) {
    if (!verifier.configured) { done(new ServiceError('NOT_CONFIGURED', { missing: 'EXPECTED_COZE_API_KEY' })); return }
    const presented = request.headers['x-api-key'] ?? (request.body as { coze_api_key?: string } | undefined)?.coze_api_key
    const key = typeof presented === 'string' ? presented : ''
    const index = verifier.match(key)
    if (index < 0) { done(new ServiceError('UNAUTHORIZED')); return }
    request.caller = { key, index }
    done()
  } satisfies preHandlerHookHandler)
}, { name: 'api-keys', fastify: '5.x', dependencies: ['config'] })
