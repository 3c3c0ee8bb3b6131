import { createServer, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

/** What one connection may cost, and how many there may be (MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, ...). */
export interface ConnectionLimits {
  maxConnections: number
  /** Per peer address as the socket sees it; X-Forwarded-For is never believed here. */
  maxConnectionsPerAddress: number
  /** HEADERS_TIMEOUT_MS: a connection that has not sent a whole request head by then is closed. */
  headersTimeoutMs: number
  /** WRITE_TIMEOUT_MS: an answer of which no byte has left for this long is dropped with its connection. */
  writeTimeoutMs: number
  /** Requests received on one connection and not yet answered; one more closes it (a pipelined flood). */
  maxUnanswered: number
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  maxConnections: 10_000,
  maxConnectionsPerAddress: 256,
  headersTimeoutMs: 10_000,
  writeTimeoutMs: 30_000,
  maxUnanswered: 16
}

/** Why the guard closed or refused a connection: the label of connections_closed_total. */
export type GuardReason = 'head_timeout' | 'evicted' | 'over_limit' | 'over_address_limit' | 'pipelined' | 'write_timeout'

interface Connection {
  address: string
  opened: number
  /** Requests whose head arrived. */
  requests: number
  /** Requests whose answer has not been handed to the kernel yet. */
  unanswered: number
  /** Bytes the kernel has taken so far, and when that last grew (or nothing was waiting). */
  flushed: number
  since: number
}

/**
 * Node's parser goes through a whole read (64 KiB: 2,000 pipelined requests) before a paused or destroyed socket
 * counts, building a request and an answer object for each. Its next request head is answered "upgrade" (2), on
 * which llhttp stops at once: the rest of the read is never parsed. (`socket.parser.onIncoming` is how Node's
 * server hands each head to itself; where a Node version has no such hook, the connection is still closed.)
 */
function stopParsing (socket: Socket): void {
  const parser = (socket as Socket & { parser?: { onIncoming?: unknown } | null }).parser
  if (typeof parser?.onIncoming === 'function') parser.onIncoming = () => 2
}

/**
 * When a connection closes, Node aborts each request of it still waiting for an answer with an error whose stack
 * trace it formats at once: about 6 µs each, so a closed pipelined flood (2,000 requests per 64 KiB read) cost
 * the event loop seconds. Its close handlers run with no stack traces; nothing reads them.
 */
function withoutStackTraces (socket: Socket): void {
  let limit = Error.stackTraceLimit
  socket.prependOnceListener('close', () => {
    limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
  })
  socket.once('close', () => { Error.stackTraceLimit = limit })
}

/** How long a connection that has sent nothing is spared when another needs its place. */
const EVICTABLE_AFTER_MS = 250

/** The event a guarded server emits for each connection it closes or refuses: (reason, fields for a log line). */
export const GUARD_EVENT = 'connectionGuard'

/**
 * An http.Server whose connections are bounded before Fastify sees a byte of them. Node alone leaves a connection
 * that never sends anything open for good (its header and request timeouts start with the first byte), dispatches
 * every request of a pipelined read to the application however many wait unanswered, and refuses new connections
 * rather than idle old ones at a cap. Here:
 * - a connection with no whole request head within `headersTimeoutMs` of opening is closed (Node's own
 *   headersTimeout, set too, covers the heads of later requests on a kept-alive connection);
 * - at `maxConnections` the oldest idle keep-alive connection makes room, else the oldest that never sent a
 *   request (once it has been open a moment); a new one is refused only when none qualifies;
 * - one address holds at most `maxConnectionsPerAddress`; the excess is refused;
 * - a connection with more than `maxUnanswered` requests waiting for their answers is closed, and the rest of its
 *   pipelined read is dropped before it reaches the application;
 * - an answer none of whose bytes leave for `writeTimeoutMs` closes its connection (large answers are written in
 *   chunks by the connections plugin, so a slow reader shows progress).
 * The sweep runs a few times per timeout: its cost grows with the connections, not the requests.
 */
export function createGuardedServer (handler: (req: IncomingMessage, res: ServerResponse) => void, limits: ConnectionLimits, options: ServerOptions = {}): Server {
  const open = new Map<Socket, Connection>()
  const perAddress = new Map<string, number>()
  const server = createServer({ ...options, headersTimeout: limits.headersTimeoutMs, connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs) }, (req, res) => {
    const socket = req.socket
    const connection = open.get(socket)
    /* c8 ignore next - the rest of a pipelined read after its connection closed, where Node has no parser hook */
    if (connection === undefined) return
    connection.requests++
    if (++connection.unanswered > limits.maxUnanswered) {
      stopParsing(socket)
      withoutStackTraces(socket)
      close(socket, 'pipelined', { limit: limits.maxUnanswered })
      return
    }
    // An answer closes once it is sent, or once its connection is gone: one listener either way.
    res.once('close', () => { connection.unanswered-- })
    handler(req, res)
  })

  function close (socket: Socket, reason: GuardReason, fields: Record<string, unknown> = {}): void {
    server.emit(GUARD_EVENT, reason, fields)
    socket.destroy()
    forget(socket)
  }

  function forget (socket: Socket): void {
    const connection = open.get(socket)
    if (connection === undefined) return
    open.delete(socket)
    const count = (perAddress.get(connection.address) as number) - 1
    if (count > 0) perAddress.set(connection.address, count)
    else perAddress.delete(connection.address)
  }

  /**
   * The connection to close for a newcomer: the oldest idle keep-alive one, else the oldest that never sent a
   * request and has been open a moment (one that connected just now is about to send its head).
   */
  function oldestIdle (now: number): Socket | undefined {
    let unused: Socket | undefined
    for (const [socket, state] of open) {
      if (state.unanswered > 0) continue
      if (state.requests > 0) return socket
      if (unused === undefined && now - state.opened >= EVICTABLE_AFTER_MS) unused = socket
    }
    return unused
  }

  server.on('connection', (socket: Socket) => {
    const address = String(socket.remoteAddress)
    const held = perAddress.get(address) ?? 0
    if (held >= limits.maxConnectionsPerAddress) {
      server.emit(GUARD_EVENT, 'over_address_limit', { limit: limits.maxConnectionsPerAddress })
      socket.destroy()
      return
    }
    if (open.size >= limits.maxConnections) {
      const idle = oldestIdle(performance.now())
      if (idle === undefined) {
        server.emit(GUARD_EVENT, 'over_limit', { limit: limits.maxConnections })
        socket.destroy()
        return
      }
      close(idle, 'evicted', { limit: limits.maxConnections })
    }
    const now = performance.now()
    open.set(socket, { address, opened: now, requests: 0, unanswered: 0, flushed: 0, since: now })
    perAddress.set(address, held + 1)
    socket.once('close', () => { forget(socket) })
  })

  const sweeper = setInterval(() => {
    const now = performance.now()
    for (const [socket, state] of open) {
      if (state.requests === 0 && now - state.opened >= limits.headersTimeoutMs) {
        close(socket, 'head_timeout', { timeout_ms: limits.headersTimeoutMs })
        continue
      }
      const waiting = socket.writableLength
      const flushed = socket.bytesWritten - waiting
      if (waiting === 0 || flushed > state.flushed) {
        state.flushed = flushed
        state.since = now
      } else if (now - state.since >= limits.writeTimeoutMs) {
        close(socket, 'write_timeout', { waiting_bytes: waiting, timeout_ms: limits.writeTimeoutMs })
      }
    }
  }, Math.max(100, Math.min(1000, limits.headersTimeoutMs / 4, limits.writeTimeoutMs / 4)))
  sweeper.unref()
  server.once('close', () => { clearInterval(sweeper) })
  return server
}
