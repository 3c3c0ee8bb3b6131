import type { FastifyRequest, preHandlerHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { type ApiKeyVerifier, createApiKeyVerifier, ServiceError } from '../lib/http/index.js'
import type { BrokerCaller, BrokerRoute } from '../lib/coze/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    apiKeys: ApiKeyVerifier
    /** What the key-protected routes still need to tell callers apart (EXPECTED_COZE_API_KEY); empty when set. */
    callersMissing: string[]
    /**
     * The preHandler of a group of routes. Single-app mode: a key of EXPECTED_COZE_API_KEY opens token and resend,
     * and the sign-in needs none (undefined). Broker mode: a caller's key opens exactly the caller's routes.
     */
    callerGate (route: BrokerRoute): preHandlerHookHandler | undefined
  }
  interface FastifyRequest {
    /** Single-app mode: the key presented and its place in EXPECTED_COZE_API_KEY, once the gate passed. */
    caller: { key: string, index: number } | null
    /** Broker mode: the caller, once the gate passed. */
    brokerCaller: BrokerCaller | null
  }
}

/** X-API-Key, else `Authorization: Bearer`, else the body's coze_api_key (kept for callers of the original services). */
function presentedKey (request: FastifyRequest): string {
  const { headers } = request
  const header = headers['x-api-key'] ?? (headers.authorization?.startsWith('Bearer ') === true ? headers.authorization.slice(7) : undefined)
  const presented = header ?? (request.body as { coze_api_key?: unknown } | undefined)?.coze_api_key
  return typeof presented === 'string' ? presented : ''
}

/** Who may call: the shared keys of EXPECTED_COZE_API_KEY (comma-separated for rotation), or the broker's callers. */
export default fp(async function apiKeys (fastify) {
  const { broker } = fastify
  const verifier = createApiKeyVerifier(fastify.config.EXPECTED_COZE_API_KEY)
  fastify.decorate('apiKeys', verifier)
  fastify.decorate('callersMissing', broker !== null || verifier.configured ? [] : ['EXPECTED_COZE_API_KEY'])
  fastify.decorateRequest('caller', null)
  fastify.decorateRequest('brokerCaller', null)
  if (broker === null && !verifier.configured) fastify.log.warn('no EXPECTED_COZE_API_KEY: /token and /resend answer 503 NOT_CONFIGURED')

  const sharedKey: preHandlerHookHandler = function sharedKey (request, _reply, done) {
    if (!verifier.configured) { done(new ServiceError('NOT_CONFIGURED', { missing: 'EXPECTED_COZE_API_KEY' })); return }
    const key = presentedKey(request)
    const index = verifier.match(key)
    if (index < 0) { done(new ServiceError('UNAUTHORIZED')); return }
    request.caller = { key, index }
    done()
  }
  fastify.decorate('callerGate', (route: BrokerRoute): preHandlerHookHandler | undefined => {
    if (broker === null) return route === 'augment' ? undefined : sharedKey
    return function brokerCaller (request, _reply, done) {
      const caller = broker.authenticate(presentedKey(request))
      if (caller === null) { done(new ServiceError('UNAUTHORIZED')); return }
      try {
        broker.authorizeRoute(caller, route)
      } catch (err) {
        done(err as ServiceError)
        return
      }
      request.brokerCaller = caller
      done()
    }
  })
}, { name: 'api-keys', fastify: '5.x', dependencies: ['config', 'broker'] })
