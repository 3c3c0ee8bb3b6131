import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import t from 'tap'
import { build, skipWithoutRedis, systemTool, testKeys, trackChild } from '../helper.js'

// Debian's prometheus package: .ci/run and npm run setup:test-tools install it.
const PROMTOOL = '/usr/bin/promtool'
const promtool = systemTool(PROMTOOL, 'prometheus')

t.test('/metrics passes promtool check metrics; the docs page is not counted as API traffic', { skip: promtool.skip }, async (t) => {
  if (promtool.missing !== undefined) return t.fail(promtool.missing)
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

t.test('every metric /metrics exposes, beyond Node\'s process metrics, is in docs/operations.md', { skip: await skipWithoutRedis() }, async (t) => {
  const docs = await readFile(new URL('../../docs/operations.md', import.meta.url), 'utf8')
  const names = new Set<string>()
  // One app with the memory stores, one with Redis (redis_up, token_cache_degraded): between them, every metric.
  const document = { apps: { bills: { app_id: '1', api_base: 'https://api.coze.cn', keys: [{ kid: 'k', private_key_env: 'BILLS_KEY' }] } }, callers: { c: { key_env: 'CALLER_KEY', apps: ['bills'] } } }
  const configs = [{}, { COZE_APPS: JSON.stringify(document), BILLS_KEY: testKeys().pkcs8, CALLER_KEY: 'metrics-doc-caller-0123456789', TOKEN_CACHE: 'redis', TOKEN_CACHE_SECRET: randomBytes(32).toString('base64'), METRICS_TOKEN: 'metrics-doc-token-0123456789' }]
  for (const config of configs) {
    const { app } = await build(t, config)
    const text = (await app.inject({ url: '/metrics', headers: { authorization: 'Bearer metrics-doc-token-0123456789' } })).body
    for (const [, name] of text.matchAll(/^# TYPE (\S+) /gm)) names.add(name as string)
  }
  const own = [...names].filter((name) => !/^(process|nodejs)_/.test(name))
  t.ok(own.length >= 15, `${own.length} metrics of the service's own`)
  t.same(own.filter((name) => !docs.includes(`\`${name}\``)), [], 'each is named in docs/operations.md')
})
