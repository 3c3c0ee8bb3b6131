import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import fp from 'fastify-plugin'
import app from './app.js'
import { serverOptions } from './options.js'

const server = Fastify(serverOptions())

try {
  await server.register(fp(app), { readEnvironment: true })
  await server.ready()
} catch (err) {
  // An invalid configuration or key: say which, and stop with a non-zero code.
  server.log.fatal({ err: { message: (err as Error).message } }, 'start failed')
  process.exit(1)
}

closeWithGrace({ delay: server.config.SHUTDOWN_GRACE_MS }, async ({ signal, err }) => {
  /* c8 ignore next 2 - an uncaught error, which no test provokes on purpose */
  if (err !== undefined) server.log.error({ err }, 'closing after an error')
  else server.log.info({ signal }, 'closing')
  await server.close()
})

await server.listen({ port: server.config.PORT, host: server.config.HOST })
