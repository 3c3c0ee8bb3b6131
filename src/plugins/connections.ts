import { Readable } from 'node:stream'
import fp from 'fastify-plugin'
import { GUARD_EVENT, type GuardReason } from '../lib/http/index.js'

// Answers larger than this are handed to the socket in chunks, so that a client reading slowly shows progress to
// the write timeout (which sees a whole write as one step).
const CHUNKED_ABOVE_BYTES = 256 * 1024
const CHUNK_BYTES = 64 * 1024

function inChunks (payload: Buffer): Readable {
  let offset = 0
  return new Readable({
    read () {
      this.push(offset < payload.length ? payload.subarray(offset, offset += CHUNK_BYTES) : null)
    }
  })
}

/**
 * The connection guard's reports (lib/http/connection-guard.ts bounds the connections themselves): counted by reason,
 * and logged at most once a second per reason so that a flood cannot flood the logs. While the server closes,
 * every answer closes its connection.
 */
export default fp(async function connections (fastify) {
  const server = fastify.server
  const lastLogged = new Map<GuardReason, number>()
  server.on(GUARD_EVENT, (reason: GuardReason, fields: Record<string, unknown>) => {
    fastify.serviceMetrics.connectionClosed(reason)
    const now = performance.now()
    if (now - (lastLogged.get(reason) ?? -Infinity) < 1000) return
    lastLogged.set(reason, now)
    fastify.log.warn({ reason, ...fields }, 'connection closed to bound its cost')
  })

  fastify.addHook('onSend', (_request, reply, payload, done) => {
    // While closing, answers end their connection so keep-alive clients move to another instance at once.
    if (!server.listening) void reply.header('connection', 'close')
    // Answers are serialized JSON strings; one is at most three bytes a character, so most are ruled out at once.
    if (typeof payload !== 'string' || payload.length * 3 <= CHUNKED_ABOVE_BYTES || Buffer.byteLength(payload) <= CHUNKED_ABOVE_BYTES) {
      done(null, payload)
      return
    }
    const bytes = Buffer.from(payload)
    void reply.header('content-length', bytes.length)
    done(null, inChunks(bytes))
  })
}, { name: 'connections', fastify: '5.x', dependencies: ['config', 'metrics'] })
