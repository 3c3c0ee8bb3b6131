import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import t from 'tap'
import { build, trackChild } from '../helper.js'

// Debian's prometheus package; under CI it must be there (.ci/run installs it), elsewhere the test says why it skipped.
const PROMTOOL = '/usr/bin/promtool'
const skipPromtool = existsSync(PROMTOOL) ? false : process.env.CI !== undefined && process.env.CI !== '' ? false : `no ${PROMTOOL} (apt-get install prometheus)`

t.test('/metrics passes promtool check metrics; the docs page is not counted as API traffic', { skip: skipPromtool }, async (t) => {
  const { app } = await build(t)
  for (const url of ['/health', '/docs/', '/docs/static/index.css', '/docs/json', '/api/auth-url']) await app.inject(url)
  const text = (await app.inject('/metrics')).body
  t.notMatch(text, /route="\/docs/, 'no /docs route in the request metrics')
  t.match(text, /http_request_duration_seconds_count\{method="GET",route="\/api\/auth-url",status_code="200"\} 1/)
  t.match(text, /nodejs_active_handles\{type=/, 'the per-type gauges stay')
  const child = trackChild(spawn(PROMTOOL, ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] }))
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stdin.end(text)
  const code = await new Promise((resolve) => child.once('exit', resolve))
  t.equal(code, 0, output)
})
