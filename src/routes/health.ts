import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { SERVICE_NAME, SERVICE_VERSION, ServiceError } from '../lib/http/index.js'
import { NEVER_SHED } from '../plugins/pressure.js'
import { Envelope, errorResponses } from '../schemas/envelope.js'
import { HealthData, ReadyData } from '../schemas/health.js'

// Probes are never rate limited or shed (a busy instance must not look dead to its load balancer), and are
// not timed by the request metrics.
const PROBE = { rateLimit: false, disableMetrics: true, ...NEVER_SHED } as const

const healthRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/health', {
    config: PROBE,
    schema: {
      operationId: 'getHealth',
      security: [],
      summary: 'Liveness: the process answers. No I/O.',
      tags: ['probes'],
      response: { 200: Envelope(HealthData), ...errorResponses }
    }
  }, async (_request, reply) => reply.ok('HEALTH_OK', {
    status: 'ok' as const, service: SERVICE_NAME, version: SERVICE_VERSION, timestamp: new Date().toISOString()
  }))

  fastify.get('/ready', {
    config: PROBE,
    schema: {
      operationId: 'getReady',
      security: [],
      summary: 'Readiness: every configured dependency answers (503 NOT_READY with each check otherwise).',
      tags: ['probes'],
      response: { 200: Envelope(ReadyData), ...errorResponses }
    }
  }, async (_request, reply) => {
    const { ready, checks } = await fastify.readiness.check()
    if (!ready) throw new ServiceError('NOT_READY', { status: 'not_ready', checks })
    return reply.ok('READY_OK', { status: 'ready' as const, checks })
  })
}

export default healthRoutes
