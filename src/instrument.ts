/**
 * Loaded before the server (`node --import ./dist/instrument.js dist/server.js`): starts OpenTelemetry when an OTLP
 * endpoint is set, before Fastify and undici load, so that their instrumentations see every instance and request.
 * Otherwise it loads nothing and costs nothing. The OTEL_* lines of `.env` count as the server's other variables do
 * (the environment wins; an empty value is no value).
 */
import { existsSync, readFileSync } from 'node:fs'
import { parseEnv } from 'node:util'
import { startTracing, tracingWanted } from './lib/tracing/index.js'

const fromFile = existsSync('.env') ? parseEnv(readFileSync('.env', 'utf8')) : {}
for (const [name, value] of Object.entries(fromFile)) {
  if (name.startsWith('OTEL_') && (process.env[name] ?? '') === '' && value !== undefined) process.env[name] = value
}
for (const name of Object.keys(process.env)) {
  if (name.startsWith('OTEL_') && process.env[name]?.trim() === '') Reflect.deleteProperty(process.env, name)
}

if (tracingWanted(process.env)) {
  try {
    await startTracing(process.env)
  } catch (err) {
    process.stderr.write(`${JSON.stringify({ level: 60, time: Date.now(), msg: 'start failed', err: { message: (err as Error).message } })}\n`)
    process.exit(1)
  }
}
