import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ServiceError } from '../lib/http/index.js'
import { logRef } from '../plugins/request-log.js'
import { serves } from '../schemas/config.js'
import { AuthUrlData, AuthUrlQuery, CompleteAuthBody, CompleteAuthData } from '../schemas/augment.js'
import { Envelope, errorResponses } from '../schemas/envelope.js'

// The original service's words (zh: `无效的请求数据: code, state, tenant_url 都是必需的`), from the catalogue.
const REQUIRED_FIELDS = { field: 'body', required: ['code', 'state', 'tenant_url'], reason: 'code, state and tenant_url are all required' }


/** Registered under the /api prefix (the only routes plugins/cors.ts opens to browsers). */
const augmentRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, augment } = fastify
  if (!serves(config, 'augment')) return

  // Broker mode: a caller key whose routes include augment; single-app mode: no key (the page is a browser's).
  const gate = fastify.callerGate('augment')

  fastify.get('/auth-url', {
    ...gate,
    // Each call stores a state: its own limit, never looser than the global one.
    config: { rateLimit: { max: Math.min(config.RATE_LIMIT_AUTH_URL_MAX, config.RATE_LIMIT_MAX), timeWindow: config.RATE_LIMIT_WINDOW } },
    schema: {
      operationId: 'createAuthUrl',
      security: [],
      summary: 'Start an Augment sign-in: an authorize link with a PKCE challenge, and its state.',
      tags: ['augment'],
      querystring: AuthUrlQuery,
      response: { 200: Envelope(AuthUrlData), ...errorResponses }
    }
  }, async (request, reply) => {
    const { authorizeUrl, state } = await augment.start()
    request.logFields = { user_id: request.query.user_id, state_ref: logRef(state) }
    return reply.ok('AUTH_URL_OK', { authorize_url: authorizeUrl, state })
  })

  fastify.post('/complete-auth', {
    ...gate,
    config: { validationDetails: REQUIRED_FIELDS },
    onRequest: [fastify.noStore, ...gate.onRequest],
    schema: {
      operationId: 'completeAuth',
      security: [],
      summary: 'Finish an Augment sign-in: exchange the code Augment showed for an access token.',
      tags: ['augment'],
      body: CompleteAuthBody,
      response: { 200: Envelope(CompleteAuthData), ...errorResponses }
    }
  }, async (request, reply) => {
    // Pasted from Augment's page: codes and states hold no white space, so any is a stray line break or space.
    const code = request.body.code.replace(/\s+/g, '')
    const state = request.body.state.replace(/\s+/g, '')
    const tenantUrl = request.body.tenant_url.trim()
    if (code === '' || state === '' || tenantUrl === '') throw new ServiceError('VALIDATION_FAILED', REQUIRED_FIELDS)
    const done = await augment.complete({ code, state, tenantUrl })
    request.logFields = { state_ref: logRef(state), tenant: done.tenant.url.host, token_id: done.id }
    return reply.ok('COMPLETE_AUTH_OK', { status: 'success' as const, token: done.token, tenant_url: tenantUrl, token_info: { id: done.id, created_at: done.createdAt } })
  })
}

export default augmentRoutes
