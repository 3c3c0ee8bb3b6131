import { spawn } from 'node:child_process'
import { createConfig, lintFromString } from '@redocly/openapi-core'
import t from 'tap'
import { ERROR_STATUS } from '../../src/lib/http/errors.js'
import { build, stopChild, systemTool, tempDir, trackChild } from '../helper.js'

t.test('the OpenAPI document passes Redocly\'s recommended rules with no error and no warning', async (t) => {
  const { app } = await build(t)
  const source = (await app.inject('/docs/json')).body
  const problems = await lintFromString({ source, absoluteRef: 'openapi.json', config: await createConfig({ extends: ['recommended'] }) })
  t.same(problems.map((problem) => `${problem.severity} ${problem.ruleId}: ${problem.message}`), [])
  const doc = JSON.parse(source)
  t.same(doc.components.schemas.ErrorEnvelope.properties.data.properties.error.enum, Object.keys(ERROR_STATUS), 'the error codes are an enum')
  t.same(doc.paths['/token'].post.security, [{ apiKey: [] }], 'the key-protected routes use the security scheme')
  t.same(doc.paths['/health'].get.security, [])
})

t.test('/docs: a CSP that works over plain HTTP on any host', async (t) => {
  const { app } = await build(t)
  const csp = String((await app.inject('/docs/')).headers['content-security-policy'])
  t.notMatch(csp, /upgrade-insecure-requests/)
  t.match(csp, /style-src 'self' 'unsafe-inline';/)
  t.match(csp, /script-src 'self'[^;]*;/)
  t.notMatch(/script-src [^;]*/.exec(csp)?.[0], /unsafe-inline/, 'no inline scripts')
})

// Debian's chromium: .ci/run and npm run setup:test-tools install it.
const CHROMIUM = '/usr/bin/chromium'
const chromium = systemTool(CHROMIUM, 'chromium')

t.test('the docs page renders in headless Chromium at a host name that is not localhost', { skip: chromium.skip }, async (t) => {
  if (chromium.missing !== undefined) return t.fail(chromium.missing)
  const { app } = await build(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const profile = await tempDir(t, 'aibill-chromium-')
  const child = trackChild(spawn(CHROMIUM, [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run',
    `--user-data-dir=${profile}`, '--host-resolver-rules=MAP aibill-task.internal 127.0.0.1', '--virtual-time-budget=10000',
    '--enable-logging=stderr', '--v=0', '--dump-dom', `http://aibill-task.internal:${port}/docs/`
  ], { stdio: ['ignore', 'pipe', 'pipe'] }))
  t.teardown(async () => { await stopChild(child) })
  let dom = ''
  let log = ''
  child.stdout.on('data', (chunk: Buffer) => { dom += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
  await new Promise((resolve) => child.once('exit', resolve))
  for (const path of ['/health', '/token', '/resend', '/api/auth-url', '/api/complete-auth']) t.match(dom, `data-path="${path}"`, `${path} is shown`)
  t.notMatch(log, /Content Security Policy|Refused to/, 'no CSP error in the console')
})
