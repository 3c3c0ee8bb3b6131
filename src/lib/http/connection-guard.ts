import { createServer, type IncomingMessage, type Server, type ServerOptions, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'

/** What one connection may cost, and how many there may be (MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, ...). */
export interface ConnectionLimits {
  maxConnections: number
  /** Per peer address as the socket sees it; X-Forwarded-For is never believed here. */
  maxConnectionsPerAddress: number
  /** HEADERS_TIMEOUT_MS: a connection that has not sent a whole request head by then is closed. */
  headersTimeoutMs: number
  /**
   * WRITE_TIMEOUT_MS: the grace of an answer the client does not take at once. Past it, an answer whose bytes
   * leave at under `minWriteBytesPerSecond`, counted over the whole answer, is dropped with its connection.
   */
  writeTimeoutMs: number
  /** The lowest rate a reader may take an answer at, after the grace (Kestrel's MinResponseDataRate: 240). */
  minWriteBytesPerSecond: number
  /** Requests received on one connection and not yet answered; one more closes it (a pipelined flood). */
  maxUnanswered: number
  /** BODY_LIMIT_BYTES: a request that says a larger Content-Length with Expect: 100-continue gets 413 unsent. */
  bodyLimitBytes: number
  /**
   * After an answer sent before its request's body was read (413, 401), the rest of the body is read and thrown
   * away for at most this long, and this long without a byte (nginx's lingering_time and lingering_timeout), so
   * that closing does not reset the connection under the answer.
   */
  lingerMs: number
  lingerIdleMs: number
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  maxConnections: 10_000,
  maxConnectionsPerAddress: 256,
  headersTimeoutMs: 10_000,
  writeTimeoutMs: 30_000,
  minWriteBytesPerSecond: 240,
  maxUnanswered: 16,
  bodyLimitBytes: 1_048_576,
  lingerMs: 5000,
  lingerIdleMs: 1000
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
  /** When its last answer was sent (or it opened): a connection that served lately is a pool's, kept. */
  active: number
  /** The request being read: its body may still be arriving when the answer is sent. */
  current: IncomingMessage | undefined
  /** Since when bytes have waited to leave (undefined: none wait), and what the kernel had taken by then. */
  waitingSince: number | undefined
  flushedAtStart: number
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
/** How long a kept-alive connection that served a request is spared: a balancer's pool reuses its own. */
const POOLED_FOR_MS = 10_000

/** The event a guarded server emits for each connection it closes or refuses: (reason, fields for a log line). */
export const GUARD_EVENT = 'connectionGuard'

/**
 * An http.Server whose connections are bounded before Fastify sees a byte of them. Node alone leaves a connection
 * that never sends anything open for good (its header and request timeouts start with the first byte), dispatches
 * every request of a pipelined read to the application however many wait unanswered, refuses new connections
 * rather than idle old ones at a cap, and resets a connection it closes while a request body still arrives. Here:
 * - a connection with no whole request head within `headersTimeoutMs` of opening is closed (Node's own
 *   headersTimeout, set too, covers the heads of later requests on a kept-alive connection);
 * - at `maxConnections` the oldest connection that never sent a request makes room (once it has been open a
 *   moment), else the kept-alive one idle the longest, if it served nothing for 10 s (a balancer's pool reuses its
 *   connections, and a reset one is a 502 there); a new one is refused only when none qualifies;
 * - one address holds at most `maxConnectionsPerAddress`; the excess is refused;
 * - a connection with more than `maxUnanswered` requests waiting for their answers is closed, and the rest of its
 *   pipelined read is dropped before it reaches the application;
 * - an answer the client does not take is cut once, after `writeTimeoutMs`, its bytes have left at under
 *   `minWriteBytesPerSecond` over the whole time they waited: a stopped reader is cut, a slow steady one (whose
 *   progress the kernel shows in bursts seconds apart) never is;
 * - `Expect: 100-continue` with a Content-Length over `bodyLimitBytes` is answered (413) before the body is sent;
 * - an answer sent before its request's body was read is followed by reading the rest and throwing it away, for
 *   `lingerMs` at most and `lingerIdleMs` without a byte, before the connection closes (the answer would be lost
 *   to a reset otherwise).
 * The sweep runs a few times per timeout: its cost grows with the connections, not the requests.
 */
export function createGuardedServer (handler: (req: IncomingMessage, res: ServerResponse) => void, limits: ConnectionLimits, options: ServerOptions = {}): Server {
  const open = new Map<Socket, Connection>()
  const perAddress = new Map<string, number>()
  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
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
    connection.current = req
    // An answer closes once it is sent, or once its connection is gone: one listener either way.
    res.once('close', () => {
      connection.unanswered--
      connection.active = performance.now()
    })
    handler(req, res)
  }
  const server = createServer({ ...options, headersTimeout: limits.headersTimeoutMs, connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs) }, onRequest)
  // A client that asks before sending its body is told to send it only when it fits; otherwise the application
  // answers 413 from the Content-Length alone, and the body is never sent.
  server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
    if (!(Number(req.headers['content-length']) > limits.bodyLimitBytes)) res.writeContinue()
    onRequest(req, res)
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
   * The connection to close for a newcomer: the oldest that never sent a request and has been open a moment (one
   * that connected just now is about to send its head), else the kept-alive one idle the longest, once it has
   * served nothing for a while (a balancer's pooled connections are reused: one reset under it is a 502).
   */
  function evictable (now: number): Socket | undefined {
    let idle: Socket | undefined
    let idleSince = now - POOLED_FOR_MS
    for (const [socket, state] of open) {
      if (state.unanswered > 0) continue
      if (state.requests === 0) {
        if (now - state.opened >= EVICTABLE_AFTER_MS) return socket
      } else if (state.active <= idleSince) {
        idle = socket
        idleSince = state.active
      }
    }
    return idle
  }

  /** Reads and throws away the rest of a body the answer did not wait for, then closes (nginx's lingering close). */
  function linger (socket: Socket): void {
    socket.end()
    socket.setTimeout(limits.lingerIdleMs, () => { socket.destroy() })
    const cut = setTimeout(() => { socket.destroy() }, limits.lingerMs)
    cut.unref()
    socket.once('close', () => { clearTimeout(cut) })
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
      const idle = evictable(performance.now())
      if (idle === undefined) {
        server.emit(GUARD_EVENT, 'over_limit', { limit: limits.maxConnections })
        socket.destroy()
        return
      }
      close(idle, 'evicted', { limit: limits.maxConnections })
    }
    const now = performance.now()
    const state: Connection = { address, opened: now, requests: 0, unanswered: 0, active: now, current: undefined, waitingSince: undefined, flushedAtStart: 0 }
    open.set(socket, state)
    perAddress.set(address, held + 1)
    socket.once('close', () => { forget(socket) })
    // Node ends a connection whose answer says Connection: close with destroySoon(); when the request's body is
    // still arriving, the unread bytes would make the kernel reset the connection, and the answer with it.
    const destroySoon = socket.destroySoon.bind(socket)
    socket.destroySoon = () => {
      if (state.current !== undefined && !state.current.complete) linger(socket)
      else destroySoon()
    }
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
      if (waiting === 0) {
        state.waitingSince = undefined
      } else if (state.waitingSince === undefined) {
        state.waitingSince = now
        state.flushedAtStart = flushed
      } else if (now - state.waitingSince >= limits.writeTimeoutMs && (flushed - state.flushedAtStart) * 1000 < limits.minWriteBytesPerSecond * (now - state.waitingSince)) {
        close(socket, 'write_timeout', { waiting_bytes: waiting, timeout_ms: limits.writeTimeoutMs, min_bytes_per_second: limits.minWriteBytesPerSecond })
      }
    }
  }, Math.max(100, Math.min(1000, limits.headersTimeoutMs / 4, limits.writeTimeoutMs / 4)))
  sweeper.unref()
  server.once('close', () => { clearInterval(sweeper) })
  return server
}
