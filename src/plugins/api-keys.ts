import type { FastifyRequest, onRequestHookHandler, preValidationHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { type ApiKeyVerifier, createApiKeyVerifier, type ServiceError } from '../lib/http/index.js'
import { bodyKey, createCallerCheck, headerKey, type BrokerCaller, type BrokerRoute } from '../lib/coze/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    apiKeys: ApiKeyVerifier
    /** What the key-protected routes still need to tell callers apart (EXPECTED_COZE_API_KEY); empty when set. */
    callersMissing: string[]
    /**
     * The hooks of a group of routes, before any validation: a key in a header is checked on arrival (onRequest),
     * one in the body once it is parsed (preValidation), so that no caller without a valid key learns the shape of
     * the API. Single-app mode: a key of EXPECTED_COZE_API_KEY opens token and resend, and the sign-in needs none
     * (no hooks). Broker mode: a caller's key opens exactly the caller's routes.
     */
    callerGate (route: BrokerRoute): CallerGate
  }
  interface FastifyRequest {
    /** Single-app mode: the key presented and its place in EXPECTED_COZE_API_KEY, once the gate passed. */
    caller: { key: string, index: number } | null
    /** Broker mode: the caller, once the gate passed. */
    brokerCaller: BrokerCaller | null
  }
}

/** The hooks a route spreads into its options (none for a route that takes no key). */
export interface CallerGate {
  onRequest: onRequestHookHandler[]
  preValidation: preValidationHookHandler[]
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

  const check = createCallerCheck(verifier, broker)
  // Decides one request: undefined when it may go on, else the refusal.
  const decide = (request: FastifyRequest, route: BrokerRoute, key: string): ServiceError | undefined => {
    const decision = check(route, key)
    if ('refused' in decision) return decision.refused
    if ('shared' in decision) request.caller = decision.shared
    else request.brokerCaller = decision.caller
    return undefined
  }
  fastify.decorate('callerGate', (route: BrokerRoute): CallerGate => {
    if (broker === null && route === 'augment') return { onRequest: [], preValidation: [] }
    return {
      // A key in a header is decided before the body is read; without one, the body's key once it is parsed.
      onRequest: [function callerKeyHeader (request, _reply, done) {
        const key = headerKey(request.headers)
        done(key === undefined ? undefined : decide(request, route, key))
      }],
      preValidation: [function callerKeyBody (request, _reply, done) {
        done(request.caller !== null || request.brokerCaller !== null ? undefined : decide(request, route, headerKey(request.headers) ?? bodyKey(request.body)))
      }]
    }
  })
}, { name: 'api-keys', fastify: '5.x', dependencies: ['config', 'broker'] })
