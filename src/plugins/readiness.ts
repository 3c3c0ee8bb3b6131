import fp from 'fastify-plugin'
import { createReadiness, type Readiness } from '../lib/ops/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    readiness: Readiness
  }
}

/** Where plugins and routes register what GET /ready reports on. */
export default fp(async function readiness (fastify) {
  fastify.decorate('readiness', createReadiness(2000))
}, { name: 'readiness', fastify: '5.x' })
