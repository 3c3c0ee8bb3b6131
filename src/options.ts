import { randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import { LogController, type FastifyServerOptions } from 'fastify'
import { answerClientError, type ConnectionLimits, createGuardedServer, DEFAULT_CONNECTION_LIMITS, sendError } from './lib/http/index.js'
import type { DestinationStream } from 'pino'
import type { Config, TrustProxy } from './schemas/config.js'
import { traceLogFields, tracingStarted } from './lib/tracing/index.js'

export interface ServerOptionsInput {
  /** Where log lines go; tests pass a stream they read. Default: stdout. */
  logStream?: DestinationStream
  logLevel?: string
  /** TRUST_PROXY: who may set X-Forwarded-For, so rate limits see the real client behind a load balancer. */
  trustProxy?: TrustProxy
  /** MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, HEADERS_TIMEOUT_MS, WRITE_TIMEOUT_MS: bounds on each connection. */
  connections?: ConnectionLimits
}

// Longer than a load balancer's idle timeout (60 s on AWS), so the balancer closes first.
const KEEP_ALIVE_TIMEOUT_MS = 72_000
const REQUEST_TIMEOUT_MS = 60_000

// No log line carries a body or headers; should one ever log request headers, the credentials go.
// (Exact paths only: wildcard paths cost every log line several per cent of a request.)
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'req.headers.cookie'
]

function prettyTransport (): { target: string } | undefined {
  if (process.stdout.isTTY !== true) return undefined
  try {
    // pino-pretty is a dev dependency: present on a developer's machine, absent from the image.
    return { target: createRequire(import.meta.url).resolve('pino-pretty') }
    /* c8 ignore start - reached only where dev dependencies are pruned (the image) */
  } catch {
    return undefined
  }
  /* c8 ignore stop - end of the branch only the image takes */
}

/** The options of the Fastify server, shared by src/server.ts and the tests so both run the same service. */
export function serverOptions ({ logStream, logLevel = 'info', trustProxy = false, connections = DEFAULT_CONNECTION_LIMITS }: ServerOptionsInput = {}): FastifyServerOptions {
  const transport = logStream === undefined ? prettyTransport() : undefined
  return {
    logger: {
      level: logLevel,
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      // With tracing on, a line logged within a span carries its ids (the request's own line has them already).
      ...(tracingStarted() ? { mixin: traceLogFields } : {}),
      ...(logStream !== undefined ? { stream: logStream } : {}),
      ...(transport !== undefined ? { transport } : {})
    },
    // One line per request is logged by the app's onResponse hook instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => randomUUID(),
    trustProxy,
    // Connections are bounded before Fastify sees them (lib/http/connection-guard.ts); the timeouts Fastify would set
    // on a server of its own are set here.
    serverFactory: (handler) => {
      const server = createGuardedServer(handler, connections, { requestTimeout: REQUEST_TIMEOUT_MS })
      server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS
      return server
    },
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    requestTimeout: REQUEST_TIMEOUT_MS,
    ajv: {
      customOptions: {
        // Reject unknown and ill-typed fields instead of silently dropping or converting them.
        removeAdditional: false,
        coerceTypes: false,
        useDefaults: true,
        allErrors: false
      }
    },
    frameworkErrors: (error, request, reply) => { sendError(error, request, reply) },
    clientErrorHandler: answerClientError
  }
}

/** The bounds on connections that the configuration sets. */
export function connectionLimits (config: Pick<Config, 'MAX_CONNECTIONS' | 'MAX_CONNECTIONS_PER_IP' | 'HEADERS_TIMEOUT_MS' | 'WRITE_TIMEOUT_MS' | 'BODY_LIMIT_BYTES'>): ConnectionLimits {
  return {
    ...DEFAULT_CONNECTION_LIMITS,
    maxConnections: config.MAX_CONNECTIONS,
    maxConnectionsPerAddress: config.MAX_CONNECTIONS_PER_IP,
    headersTimeoutMs: config.HEADERS_TIMEOUT_MS,
    writeTimeoutMs: config.WRITE_TIMEOUT_MS,
    bodyLimitBytes: config.BODY_LIMIT_BYTES
  }
}
