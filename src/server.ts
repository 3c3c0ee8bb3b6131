import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import app from './app.js'
import { stopTracing } from './lib/tracing/index.js'
import { connectionLimits, serverOptions } from './options.js'
import { loadConfig, type LoadedConfig, trustProxySetting } from './schemas/config.js'

let loaded: LoadedConfig
try {
  loaded = loadConfig()
} catch (err) {
  // Names the variable; the values themselves (keys among them) are not repeated.
  process.stderr.write(`${JSON.stringify({ level: 60, time: Date.now(), msg: 'start failed', err: { message: (err as Error).message } })}\n`)
  process.exit(1)
}

const { config } = loaded
const server = Fastify(serverOptions({ logLevel: config.LOG_LEVEL, trustProxy: trustProxySetting(config.TRUST_PROXY), connections: connectionLimits(config) }))

try {
  await server.register(fp(app), loaded)
  await server.ready()
} catch (err) {
  // An invalid key or an unreachable Redis: say which, and stop with a non-zero code.
  server.log.fatal({ err: { message: (err as Error).message } }, 'start failed')
  process.exit(1)
}

// Its own lines (a second signal, the grace run out) go to the JSON log as well, not to the console as text.
// (pino logs an Error as err and a string as msg.)
const graceLogger = { error: (what: unknown) => { server.log.error(what as string) } }
closeWithGrace({ delay: server.config.SHUTDOWN_GRACE_MS, logger: graceLogger }, async ({ signal, err }) => {
  /* c8 ignore next 2 - an uncaught error, which no test provokes on purpose */
  if (err !== undefined) server.log.error({ err }, 'closing after an error')
  else server.log.info({ signal }, 'closing')
  await server.close()
  // The spans still held go to the collector, within a bound of their own.
  await stopTracing()
})

await server.listen({ port: server.config.PORT, host: server.config.HOST })
