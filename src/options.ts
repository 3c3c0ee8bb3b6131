import { randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import { LogController, type FastifyServerOptions } from 'fastify'
import type { DestinationStream } from 'pino'
import { answerClientError, sendError } from './plugins/errors.js'
import type { TrustProxy } from './schemas/config.js'

export interface ServerOptionsInput {
  /** Where log lines go; tests pass a stream they read. Default: stdout. */
  logStream?: DestinationStream
  logLevel?: string
  /** TRUST_PROXY: who may set X-Forwarded-For, so rate limits see the real client behind a load balancer. */
  trustProxy?: TrustProxy
}

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
export function serverOptions ({ logStream, logLevel = 'info', trustProxy = false }: ServerOptionsInput = {}): FastifyServerOptions {
  const transport = logStream === undefined ? prettyTransport() : undefined
  return {
    logger: {
      level: logLevel,
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      ...(logStream !== undefined ? { stream: logStream } : {}),
      ...(transport !== undefined ? { transport } : {})
    },
    // One line per request is logged by the app's onResponse hook instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => randomUUID(),
    trustProxy,
    // Longer than a load balancer's idle timeout (60 s on AWS), so the balancer closes first.
    keepAliveTimeout: 72_000,
    requestTimeout: 60_000,
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
