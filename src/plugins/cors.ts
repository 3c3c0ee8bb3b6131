import fastifyCors from '@fastify/cors'
import fp from 'fastify-plugin'

/**
 * CORS for the browser-facing sign-in routes under /api, and only for the origins CORS_ORIGINS lists; every other
 * route, and every route when the list is empty, sends no CORS headers.
 */
export default fp(async function cors (fastify) {
  const origins = fastify.config.CORS_ORIGINS.split(',').map((origin) => origin.trim()).filter(Boolean)
  if (origins.length === 0) return
  await fastify.register(fastifyCors, {
    methods: ['GET', 'POST'],
    maxAge: 600,
    // Per request: another path, or an origin not listed, gets no CORS headers at all.
    delegator: (request, callback) => {
      const origin = request.headers.origin
      const allowed = request.url.startsWith('/api/') && typeof origin === 'string' && origins.includes(origin)
      callback(null, { origin: allowed ? origin : false })
    }
  })
}, { name: 'cors', fastify: '5.x', dependencies: ['config'] })
