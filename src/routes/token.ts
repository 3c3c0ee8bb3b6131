import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { TSchema } from '@sinclair/typebox'
import type { Broker } from '../lib/coze/index.js'
import { configurationStatus } from '../lib/ops/index.js'
import { logRef } from '../plugins/request-log.js'
import { BrokerTokenBody, BrokerTokenData } from '../schemas/broker.js'
import { serves } from '../schemas/config.js'
import { Envelope, errorResponses } from '../schemas/envelope.js'
import { ApiKeyHeaders } from '../schemas/resend.js'
import { TokenBody, TokenData } from '../schemas/token.js'


/**
 * POST /token: one app and a shared caller key (single-app mode), or a caller of the apps document asking for one
 * of its apps (broker mode). Either way the answer is never stored by a proxy or a browser, errors included.
 */
const tokenRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { broker, callersMissing, config, coze } = fastify
  if (!serves(config, 'token')) return
  const gate = fastify.callerGate('token')
  const options = <B extends TSchema, D extends TSchema>(summary: string, body: B, data: D) => ({
    onRequest: [fastify.noStore, ...gate.onRequest],
    preValidation: gate.preValidation,
    config: { validationHints: { public_key: 'it takes the key fingerprint shown on the Coze app page (43 characters, the JWT kid), not the public key itself' } },
    schema: { operationId: 'createToken', security: [{ apiKey: [] }], summary, tags: ['coze'], headers: ApiKeyHeaders, body, response: { 200: Envelope(data), ...errorResponses } }
  })

  if (broker !== null) {
    fastify.readiness.add('token', async () => 'ok')
    fastify.post('/token', options('Mint (or reuse) a Coze access token for one of the caller\'s apps, within what the caller may ask.', BrokerTokenBody, BrokerTokenData), async (request, reply) => {
      const { body } = request
      const caller = request.brokerCaller as NonNullable<typeof request.brokerCaller>
      request.logFields = { caller: caller.name, app: body.app }
      const minted = await (broker as Broker).mint(caller, {
        app: body.app,
        sessionName: body.session_name,
        durationSeconds: body.duration_seconds,
        scope: body.scope,
        deviceId: body.device_id,
        customConsumer: body.custom_consumer,
        minValiditySeconds: body.min_validity_seconds
      })
      Object.assign(request.logFields, { kid: minted.kid, cache: minted.outcome })
      if (minted.logid !== undefined) request.logFields.coze_logid = minted.logid
      if (body.session_name !== undefined) request.logFields.session_ref = logRef(body.session_name)
      return reply.ok('TOKEN_OK', { ...minted.token, app: minted.app })
    })
    return
  }

  const missing = [...callersMissing, ...coze.missing]
  fastify.readiness.add('token', async () => configurationStatus(missing))
  fastify.post('/token', options('Mint a Coze access token: sign an RS256 JWT with the service key and exchange it at Coze.', TokenBody, TokenData), async (request, reply) => {
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
