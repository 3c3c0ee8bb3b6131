import { hkdfSync } from 'node:crypto'
import fastifyCookie from '@fastify/cookie'
import fastifyFormbody from '@fastify/formbody'
import fastifyHelmet from '@fastify/helmet'
import type { FastifyInstance } from 'fastify'
import { consoleRoutes, createConsoleAccess } from '../console/index.js'
import { SINGLE_APP } from './coze.js'

/**
 * GET /console, for operators: on with CONSOLE_TOKEN, or in broker mode with callers that have `console` (their
 * sessions signed with CONSOLE_SESSION_SECRET). Off, /console is 404 like any unknown path. Encapsulated: the
 * cookies, form bodies, CSRF guard and security headers are the console's alone; the API keeps JSON only.
 */
export default async function consolePages (fastify: FastifyInstance): Promise<void> {
  const { config, broker, brokerSetup } = fastify
  const callers = brokerSetup?.callers ?? []
  if (config.CONSOLE_TOKEN === undefined && !callers.some((caller) => caller.console !== false)) return
  // One key on every instance: the session secret, or one derived from the console token.
  const secret = config.CONSOLE_SESSION_SECRET === undefined ? Buffer.from(config.CONSOLE_TOKEN as string) : Buffer.from(config.CONSOLE_SESSION_SECRET, 'base64')
  const derive = (purpose: string): Buffer => Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), purpose, 32))
  // Pages for people, not an API: left out of the OpenAPI document.
  fastify.addHook('onRoute', (route) => { route.schema = { ...route.schema, hide: true } })
  await fastify.register(fastifyCookie, { secret: derive('aibill console session').toString('base64') })
  await fastify.register(fastifyFormbody, { bodyLimit: 4096 })
  // No inline script or style, nothing from another origin, no framing; pages are never stored.
  await fastify.register(fastifyHelmet, {
    contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], scriptSrc: ["'self'"], styleSrc: ["'self'"], imgSrc: ["'self'"], connectSrc: ["'self'"], formAction: ["'self'"], frameAncestors: ["'none'"], baseUri: ["'none'"] } },
    referrerPolicy: { policy: 'no-referrer' },
    // HSTS is the TLS terminator's to send (the balancer's): the service may run behind plain HTTP in a private network.
    strictTransportSecurity: false
  })
  fastify.addHook('onSend', async (_request, reply) => {
    if (String(reply.getHeader('content-type')).startsWith('text/html')) void reply.header('cache-control', 'no-store')
  })
  await fastify.register(consoleRoutes, {
    access: createConsoleAccess({ token: config.CONSOLE_TOKEN, authenticate: broker === null ? null : (key) => broker.authenticate(key), callers, sessionMinutes: config.CONSOLE_SESSION_MINUTES }),
    sessionMinutes: config.CONSOLE_SESSION_MINUTES,
    csrfKey: derive('aibill console csrf'),
    jobs: fastify.resendJobs,
    jobsMissing: fastify.resendQueueMissing,
    activity: fastify.activity,
    cozeApps: brokerSetup === null
      ? (config.COZE_APP_ID === undefined ? [] : [{ name: SINGLE_APP, appId: config.COZE_APP_ID, kids: [] }])
      : brokerSetup.apps.map((app) => ({ name: app.name, appId: app.appId, kids: app.keys.map((key) => key.kid) })),
    feishuApps: fastify.feishuApps.map((app) => ({ name: app.name, appId: app.appId, origin: app.base.origin })),
    callers: callers.map((caller) => caller.name),
    signInLimit: { max: Math.min(config.RATE_LIMIT_AUTH_URL_MAX, config.RATE_LIMIT_MAX), timeWindow: config.RATE_LIMIT_WINDOW }
  })
}
