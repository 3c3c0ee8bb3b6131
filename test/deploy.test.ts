import { spawn, spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import t from 'tap'
import { ConfigSchema, loadConfig } from '../src/schemas/config.js'
import { build, freePort, systemTool, testKeys, trackChild } from './helper.js'

const PROMTOOL = '/usr/bin/promtool'
const promtool = systemTool(PROMTOOL, 'prometheus')

const read = async (path: string): Promise<string> => await readFile(new URL(`../${path}`, import.meta.url), 'utf8')

interface ContainerDefinition {
  user?: string
  readonlyRootFilesystem?: boolean
  environment: Array<{ name: string, value: string }>
  secrets: Array<{ name: string, valueFrom: string }>
  healthCheck: { command: string[] }
  stopTimeout: number
  logConfiguration: { logDriver: string }
}

async function exitCode (command: string, args: string[], env: Record<string, string>): Promise<number | null> {
  const child = trackChild(spawn(command, args, { env: { PATH: process.env.PATH ?? '', ...env }, stdio: 'ignore' }))
  return await new Promise((resolve) => child.once('exit', resolve))
}

t.test('the ECS task definition parses and agrees with the configuration schema', async (t) => {
  const task = JSON.parse(await read('deploy/ecs-task-definition.json')) as { containerDefinitions: ContainerDefinition[] }
  const [container] = task.containerDefinitions
  if (container === undefined) throw new Error('no container')
  // A variable of the service, or one a Feishu app's app_secret_env names.
  const named = Object.values(JSON.parse(container.environment.find(({ name }) => name === 'FEISHU_APPS')?.value ?? '{}') as Record<string, { app_secret_env: string }>).map((app) => app.app_secret_env)
  const known = [...Object.keys(ConfigSchema.properties), ...named]
  // (OTEL_* are OpenTelemetry's own variables, read by its SDK.)
  for (const { name } of [...container.environment, ...container.secrets]) t.ok(known.includes(name) || name.startsWith('OTEL_'), `${name} is a variable of the service`)
  for (const secret of ['JWT_PRIVATE_KEY', 'EXPECTED_COZE_API_KEY', 'METRICS_TOKEN']) {
    t.notOk(container.environment.some(({ name }) => name === secret), `${secret} is not written in the task definition`)
    t.match(container.secrets.find(({ name }) => name === secret)?.valueFrom, /^arn:aws:(secretsmanager|ssm):/, `${secret} comes from a secret store`)
  }
  const setting = (name: 'SHUTDOWN_GRACE_MS' | 'RESEND_TIMEOUT_MS'): number => Number(container.environment.find((entry) => entry.name === name)?.value ?? ConfigSchema.properties[name].default)
  t.ok(container.stopTimeout * 1000 > setting('SHUTDOWN_GRACE_MS'), 'ECS waits longer than the service drains')
  t.ok(setting('SHUTDOWN_GRACE_MS') > setting('RESEND_TIMEOUT_MS'), 'the service drains longer than an attempt takes')
  t.ok(ConfigSchema.properties.SHUTDOWN_GRACE_MS.default > ConfigSchema.properties.RESEND_TIMEOUT_MS.default, 'and so do the defaults')
  // Queued delivery, as docs/api.md describes it: its secret, and the Feishu apps' secrets, from a secret store.
  const environment = Object.fromEntries(container.environment.map(({ name, value }) => [name, value]))
  t.equal(environment.RESEND_QUEUE, 'redis')
  const feishuApps = JSON.parse(environment.FEISHU_APPS as string) as Record<string, { app_secret_env: string }>
  const secrets = new Map(container.secrets.map(({ name, valueFrom }) => [name, valueFrom]))
  for (const name of ['RESEND_QUEUE_SECRET', 'REDIS_URL', ...Object.values(feishuApps).map((app) => app.app_secret_env)]) t.match(secrets.get(name), /^arn:aws:(secretsmanager|ssm):/, `${name} comes from a secret store`)
  const values: Record<string, string> = { RESEND_QUEUE_SECRET: randomBytes(32).toString('base64'), REDIS_URL: 'redis://127.0.0.1:6379', JWT_PRIVATE_KEY: testKeys().pkcs8, EXPECTED_COZE_API_KEY: 'caller-key-0123456789', METRICS_TOKEN: 'metrics-token-0123456789', CONSOLE_TOKEN: randomBytes(32).toString('base64') }
  for (const app of Object.values(feishuApps)) values[app.app_secret_env] = 'feishu-secret-0123456789'
  const loaded = loadConfig({ env: { ...environment, ...values }, dotenvPath: '/nonexistent' })
  t.same([loaded.config.RESEND_QUEUE, loaded.feishuApps.map((app) => app.name)], ['redis', Object.keys(feishuApps)], 'it loads as the service loads it, queued delivery and Feishu apps on')
  t.same(loaded.warnings, [], 'with no warning')
  t.match(secrets.get('CONSOLE_TOKEN'), /^arn:aws:secretsmanager:/, 'the console, as docs/operations.md describes it: its token from a secret store')
  t.ok(loaded.config.CONSOLE_TOKEN !== undefined, 'and on')
  t.equal(container.readonlyRootFilesystem, true)
  t.equal(container.user, 'node')
  t.equal(container.logConfiguration.logDriver, 'awslogs')
  t.equal(container.healthCheck.command[0], 'CMD-SHELL')
})

t.test('the broker-mode task definition starts the broker, its keys and caller keys from secrets', async (t) => {
  const task = JSON.parse(await read('deploy/ecs-task-definition.broker.json')) as { containerDefinitions: ContainerDefinition[] }
  const [container] = task.containerDefinitions
  if (container === undefined) throw new Error('no container')
  const environment = Object.fromEntries(container.environment.map(({ name, value }) => [name, value]))
  const document = JSON.parse(environment.COZE_APPS as string) as { apps: Record<string, { keys: Array<{ private_key_env: string }> }>, callers: Record<string, { key_env: string }> }
  const named = [...Object.values(document.apps).flatMap((app) => app.keys.map((key) => key.private_key_env)), ...Object.values(document.callers).map((caller) => caller.key_env)]
  const secrets = new Map(container.secrets.map(({ name, valueFrom }) => [name, valueFrom]))
  for (const name of named) t.match(secrets.get(name), /^arn:aws:(secretsmanager|ssm):/, `${name}, named by the document, comes from a secret store`)
  for (const name of ['TOKEN_CACHE_SECRET', 'REDIS_URL', 'METRICS_TOKEN']) t.ok(secrets.has(name), `${name} is a secret`)
  const known = Object.keys(ConfigSchema.properties)
  for (const { name } of container.environment) t.ok(known.includes(name) || name.startsWith('OTEL_'), `${name} is a variable of the service`)
  // With stand-ins for the secrets, the configuration loads as the service would load it: the broker, no refusal.
  // ElastiCache Serverless: one endpoint, cluster mode, TLS (the REDIS_URL secret holds rediss://<endpoint>:6379).
  t.equal(environment.REDIS_CLUSTER, 'true')
  const values: Record<string, string> = { TOKEN_CACHE_SECRET: randomBytes(32).toString('base64'), REDIS_URL: 'rediss://aibill-cache-abc123.serverless.apse1.cache.amazonaws.com:6379', METRICS_TOKEN: 'metrics-token-0123456789', CONSOLE_SESSION_SECRET: randomBytes(32).toString('base64') }
  for (const name of named) values[name] = name.endsWith('_KEY') && !name.includes('CALLER') ? testKeys().pkcs8 : randomBytes(16).toString('hex')
  const loaded = loadConfig({ env: { ...environment, ...values }, dotenvPath: '/nonexistent' })
  t.same(loaded.broker?.apps.map((app) => app.name), Object.keys(document.apps))
  t.equal(loaded.config.TOKEN_CACHE, 'redis')
  t.same(loaded.broker?.callers.filter((caller) => caller.console !== false).map((caller) => caller.name), ['workflows'], 'a caller signs in to the console with its key')
  t.ok(secrets.has('CONSOLE_SESSION_SECRET'), 'its sessions signed with a secret of every instance')
  t.equal(container.user, 'node')
  t.equal(container.readonlyRootFilesystem, true)
})

t.test('both task definitions trace through an ADOT collector beside the service, whose role may write to X-Ray', async (t) => {
  const policy = JSON.parse(await read('deploy/task-role-tracing-policy.json')) as { Statement: Array<{ Action: string[] }> }
  const allowed = policy.Statement.flatMap((statement) => statement.Action)
  for (const action of ['xray:PutTraceSegments', 'xray:PutTelemetryRecords', 'xray:GetSamplingRules', 'xray:GetSamplingTargets']) t.ok(allowed.includes(action), `the task role's policy allows ${action}`)
  for (const file of ['deploy/ecs-task-definition.json', 'deploy/ecs-task-definition.broker.json']) {
    const task = JSON.parse(await read(file)) as { containerDefinitions: Array<ContainerDefinition & { name: string, image: string, essential: boolean, command?: string[], dependsOn?: Array<{ containerName: string, condition: string }> }> }
    const [service, collector] = task.containerDefinitions
    t.match(collector, { name: 'aws-otel-collector', image: /^public\.ecr\.aws\/aws-observability\/aws-otel-collector:v\d+\.\d+\.\d+$/, essential: false }, `${file}: the collector, pinned; its failure does not stop the task`)
    t.same(service?.dependsOn, [{ containerName: 'aws-otel-collector', condition: 'START' }], `${file}: the service starts after the collector`)
    const environment = Object.fromEntries((service?.environment ?? []).map(({ name, value }) => [name, value]))
    t.equal(environment.OTEL_EXPORTER_OTLP_ENDPOINT, 'http://localhost:4318', `${file}: the service exports to the collector over OTLP/HTTP`)
  }
})

t.test('the health checks of the image, Compose and ECS pass against a live service and fail without one', async (t) => {
  const { app } = await build(t)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const port = String((app.server.address() as { port: number }).port)
  const closed = String(await freePort())

  const dockerfile = await read('Dockerfile')
  const imageCheck = JSON.parse(/HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])/.exec(dockerfile)?.[1] ?? '[]') as string[]
  t.same(imageCheck.slice(0, 2), ['bash', '-c'], 'no second Node process')
  t.equal(await exitCode(imageCheck[0] as string, imageCheck.slice(1), { PORT: port }), 0, 'image: healthy')
  t.not(await exitCode(imageCheck[0] as string, imageCheck.slice(1), { PORT: closed }), 0, 'image: unhealthy when nothing answers')

  const task = JSON.parse(await read('deploy/ecs-task-definition.json')) as { containerDefinitions: ContainerDefinition[] }
  const ecsCheck = task.containerDefinitions[0]?.healthCheck.command[1] as string
  t.equal(await exitCode('sh', ['-c', ecsCheck], { PORT: port }), 0, 'ECS: healthy')
  t.not(await exitCode('sh', ['-c', ecsCheck], { PORT: closed }), 0, 'ECS: unhealthy when nothing answers')

  const compose = await read('docker-compose.yml')
  t.notMatch(compose, /container_name/, 'several copies may run')
  t.notMatch(compose, /"9464:9464"/, '/metrics is not published')
  const composeCheck = JSON.parse(/test: (\["CMD", "bash".*\])/.exec(compose)?.[1] ?? '[]') as string[]
  const composeScript = (composeCheck[3] as string).replace('/9000', `/${port}`)
  t.equal(await exitCode('bash', ['-c', composeScript], {}), 0, 'Compose: healthy')
})

t.test('the alert rules that ship are rules promtool accepts, on metrics the service serves', { skip: promtool.skip }, async (t) => {
  if (promtool.missing !== undefined) return t.fail(promtool.missing)
  const checked = spawnSync(PROMTOOL, ['check', 'rules', fileURLToPath(new URL('../deploy/prometheus-rules.yml', import.meta.url))], { encoding: 'utf8' })
  t.equal(checked.status, 0, checked.stdout + checked.stderr)
  const rules = await read('deploy/prometheus-rules.yml')
  const operations = await read('docs/operations.md')
  for (const metric of new Set(rules.match(/\b(resend|redis|feishu|token|http)_[a-z_]+\b/g)?.map((name) => name.replace(/_(count|sum|bucket)$/, '')))) t.match(operations, metric, `${metric} is documented`)
  t.match(operations, /deploy\/prometheus-rules\.yml/, 'docs/operations.md links the rules')
})
