import fp from 'fastify-plugin'
import type { Dispatcher } from 'undici'
import { type CozeClient, createCozeClient } from '../lib/coze/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    coze: CozeClient
  }
}

/** The single app's name where apps are listed (the console). */
export const SINGLE_APP = 'default'

export interface CozePluginOptions {
  dispatcher?: Dispatcher
}

/** The Coze client of POST /token: the signer, the issuer, the exchange and its token cache. */
export default fp<CozePluginOptions>(async function coze (fastify, opts) {
  const { config } = fastify
  const client = createCozeClient({
    url: config.COZE_API_URL,
    timeoutMs: config.COZE_TIMEOUT_MS,
    signer: fastify.signer,
    issuer: config.COZE_APP_ID !== undefined ? { appId: config.COZE_APP_ID } : config.COZE_ISS_FROM_CALLER_KEY ? { fromCallerKey: true } : null,
    // Coze's SDKs sign for the host of the API they call: api.coze.cn or api.coze.com.
    audience: config.COZE_JWT_AUDIENCE ?? new URL(config.COZE_API_URL).hostname,
    jwtTtlSeconds: config.COZE_JWT_TTL_SECONDS,
    reuseSeconds: config.COZE_TOKEN_REUSE_SECONDS,
    maxPending: config.COZE_MAX_PENDING_EXCHANGES,
    dispatcher: opts.dispatcher,
    onExchange: (outcome, seconds, logid) => {
      fastify.serviceMetrics.cozeExchange(outcome, seconds)
      // The single app's exchanges, as the console shows them (the broker's are counted by app where they are minted).
      if (fastify.brokerSetup === null) fastify.activity.record('coze', SINGLE_APP, outcome, logid)
    },
    onToken: fastify.serviceMetrics.tokenRequest
  })
  if (fastify.brokerSetup === null) {
    if (client.missing.includes('COZE_APP_ID')) fastify.log.warn('no COZE_APP_ID: POST /token answers 503 NOT_CONFIGURED (set the id of your Coze OAuth app, the JWT iss)')
    // What this instance will talk to, said once: no secret in it.
    fastify.log.info({ upstream: 'coze', app_id: config.COZE_APP_ID, token_url: config.COZE_API_URL, audience: config.COZE_JWT_AUDIENCE ?? new URL(config.COZE_API_URL).hostname }, 'upstream configured')
  }
  fastify.decorate('coze', client)
  fastify.addHook('onClose', async () => await client.close())
}, { name: 'coze', fastify: '5.x', dependencies: ['config', 'signer', 'metrics'] })
