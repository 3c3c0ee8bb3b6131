import type { Socket } from 'node:net'
import fp from 'fastify-plugin'

interface Progress {
  /** Bytes the kernel has taken so far. */
  flushed: number
  /** When that last grew, or when nothing was waiting. */
  since: number
}

/**
 * What open connections may cost. At most MAX_CONNECTIONS at once: past it, idle keep-alive connections are
 * closed to make room, and a new one is refused only when none is idle. An answer the client does not read
 * waits in memory: when no byte of it has left for WRITE_TIMEOUT_MS, the connection is destroyed and the
 * memory freed. (Node's socket timeouts cannot say this: they count reads and writes alike and would also end
 * a request that waits on a slow upstream.) While the server closes, every answer closes its connection.
 */
export default fp(async function connections (fastify) {
  const { MAX_CONNECTIONS, WRITE_TIMEOUT_MS } = fastify.config
  const open = new Map<Socket, Progress>()
  const server = fastify.server

  server.on('connection', (socket: Socket) => {
    if (open.size >= MAX_CONNECTIONS) {
      server.closeIdleConnections()
      // Those just closed are destroyed now but say 'close' only later: they no longer count.
      for (const other of open.keys()) if (other.destroyed) open.delete(other)
    }
    if (open.size >= MAX_CONNECTIONS) {
      fastify.log.warn({ limit: MAX_CONNECTIONS }, 'connection refused: MAX_CONNECTIONS reached and none is idle')
      socket.destroy()
      return
    }
    open.set(socket, { flushed: 0, since: performance.now() })
    socket.once('close', () => { open.delete(socket) })
  })

  // A sweep a few times per timeout: its cost grows with the connections, not with the requests.
  const sweeper = setInterval(() => {
    const now = performance.now()
    for (const [socket, progress] of open) {
      const waiting = socket.writableLength
      const flushed = socket.bytesWritten - waiting
      if (waiting === 0 || flushed > progress.flushed) {
        progress.flushed = flushed
        progress.since = now
      } else if (now - progress.since >= WRITE_TIMEOUT_MS) {
        fastify.log.warn({ waiting_bytes: waiting, timeout_ms: WRITE_TIMEOUT_MS }, 'connection closed: the client stopped reading its answer')
        socket.destroy()
      }
    }
  }, Math.max(100, Math.min(1000, WRITE_TIMEOUT_MS / 4)))
  sweeper.unref()
  fastify.addHook('onClose', (_instance, done) => { clearInterval(sweeper); done() })

  // While closing, answers end their connection so keep-alive clients move to another instance at once.
  fastify.addHook('onSend', (_request, reply, payload, done) => {
    if (!server.listening) void reply.header('connection', 'close')
    done(null, payload)
  })
}, { name: 'connections', fastify: '5.x', dependencies: ['config'] })
