import { createHash, generateKeyPairSync } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import autocannon from 'autocannon'
import { AUTH_URL_REQUESTS, CONNECTIONS, DURATION, FEISHU_PATH, FIELDS, measure, type Measured, type Options, ROUNDS, sequentialLatency, signaturesPerSecond, WARMUP } from './measure.js'
import { type Child, freePort, jsonLine, ROOT, rssMb, startNode } from './processes.js'
import { measureCluster } from './cluster.js'
import { measureQueue } from './queue.js'

const API_KEY = 'bench-service-key'
const KID = '_v0VjcMlLdQc3tRTD3jC5Xz29TUnKQOhtuD5k-gpyf4'

/**
 * npm run bench: every scenario beside its ceiling, measured in one run on this machine, then checked against
 * its target. Everything listens on 127.0.0.1; every request loop is bounded in time or count.
 */

async function scrape (port: number, metric: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  const line = text.split('\n').find((row) => row.startsWith(`${metric} `))
  return Number(line?.split(' ')[1] ?? NaN)
}

async function main (): Promise<void> {
  const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const children: Child[] = []
  const stopAll = async (): Promise<void> => { await Promise.all(children.map(async (child) => { await child.stop() })) }
  process.on('SIGINT', () => { void stopAll().then(() => process.exit(130)) })

  try {
    process.stderr.write('starting the mock upstreams\n')
    const mocks = await startNode('build/bench/mocks.js', {}, (line) => jsonLine<{ coze: number }>(line, 'coze'))
    children.push(mocks.child)
    const ports = mocks.value as { coze: number, feishu: number, augment: number, otlp: number }
    const cozeUrl = `http://127.0.0.1:${ports.coze}/api/permission/oauth2/token`

    const serviceEnv = (port: number, extra: Record<string, string>): Record<string, string> => ({
      HOST: '127.0.0.1',
      PORT: String(port),
      LOG_LEVEL: 'info',
      // One app, or (with COZE_APPS in extra) the broker's document and nothing of the single app.
      ...(extra.COZE_APPS === undefined ? { JWT_PRIVATE_KEY: pem, COZE_APP_ID: '1180000000001', EXPECTED_COZE_API_KEY: API_KEY, COZE_API_URL: cozeUrl } : {}),
      RESEND_ALLOWED_HOSTS: `http://127.0.0.1:${ports.feishu}`,
      AUGMENT_TENANT_HOSTS: `http://127.0.0.1:${ports.augment}`,
      // The bench is one client sending as fast as it can: the limits are not what is measured.
      RATE_LIMIT_MAX: '10000000',
      RATE_LIMIT_AUTH_URL_MAX: '10000000',
      DOCS_ENABLED: 'false',
      ...extra
    })
    const startService = async (extra: Record<string, string>): Promise<{ port: number, pid: number, child: Child }> => {
      const port = await freePort()
      // As npm start runs it: instrument.js first (tracing, when extra sets an OTLP endpoint).
      const service = await startNode('dist/server.js', serviceEnv(port, extra), (line) => (line.includes('Server listening at') ? true : undefined), ['dist/instrument.js'])
      children.push(service.child)
      return { port, pid: service.child.process.pid as number, child: service.child }
    }

    process.stderr.write('starting the ceilings\n')
    const ceilings = await startNode('build/bench/ceilings.js', { JWT_PRIVATE_KEY: pem, COZE_API_URL: cozeUrl, TENANT_URL: `http://127.0.0.1:${ports.augment}/`, FEISHU_ORIGIN: `http://127.0.0.1:${ports.feishu}`, LOG_LEVEL: 'info' }, (line) => jsonLine<{ port: number }>(line, 'port'))
    children.push(ceilings.child)
    const ceilingPort = (ceilings.value as { port: number }).port
    const ceilingPid = ceilings.child.process.pid as number

    const signatures = await signaturesPerSecond(pem, 5, KID)
    process.stderr.write(`  RS256 signatures: ${Math.round(signatures)}/s\n`)

    const tokenBody = JSON.stringify({ public_key: KID, coze_api_key: API_KEY, duration_seconds: 86399 })
    const jsonPost = (url: string, body: string): Options => ({ url, method: 'POST', headers: { 'content-type': 'application/json' }, body })

    // Broker mode: 50 apps and 200 session names, every token cached after the warm-up.
    const apps = Object.fromEntries(Array.from({ length: 50 }, (_unused, i) => [`app-${i}`, {
      app_id: String(1150000000000 + i), api_base: `http://127.0.0.1:${ports.coze}`, keys: [{ kid: KID, private_key_env: 'BENCH_APP_KEY' }]
    }]))
    const document = { apps, callers: { bench: { key_sha256: createHash('sha256').update(API_KEY).digest('hex'), apps: Object.keys(apps) } } }
    const brokerBodies = Array.from({ length: 200 }, (_unused, i) => JSON.stringify({ app: `app-${i % 50}`, session_name: `user-${i}` }))
    let next = 0
    const brokerOptionsAt = (port: number): Options => ({
      url: `http://127.0.0.1:${port}/token`,
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
      setupClient: (client: { setBody: (body: string) => void, on: (event: string, listener: () => void) => void }) => {
        client.setBody(brokerBodies[next++ % brokerBodies.length] as string)
        client.on('response', () => { client.setBody(brokerBodies[next++ % brokerBodies.length] as string) })
      }
    }) as unknown as Options
    const location = `http://127.0.0.1:${ports.feishu}${FEISHU_PATH}`
    // npm run bench:cluster: the cached broker /token and queued acceptance, on one Redis and on a cluster.
    if (process.env.BENCH_ONLY === 'cluster') {
      const measured = await measureCluster({
        startService,
        brokerEnv: { COZE_APPS: JSON.stringify(document), BENCH_APP_KEY: pem },
        brokerOptions: brokerOptionsAt,
        location,
        apiKey: API_KEY,
        redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
      })
      process.stdout.write(`${JSON.stringify({
        token_cached_rps: { single: measured.tokenSingle.rps, cluster: measured.tokenCluster.rps, ratio: measured.tokenCluster.rps / measured.tokenSingle.rps },
        queued_accept_rps: { single: measured.acceptSingle.rps, cluster: measured.acceptCluster.rps, ratio: measured.acceptCluster.rps / measured.acceptSingle.rps }
      }, null, 2)}\n`)
      return
    }
    // npm run bench:queue: queued delivery alone.
    if (process.env.BENCH_ONLY === 'queue') {
      const queue = await measureQueue({ startService, location, apiKey: API_KEY, redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', connections: CONNECTIONS, fields: FIELDS })
      process.stdout.write(`${JSON.stringify({ accept_over_validation_ms: queue.accept.p50 - queue.validated.p50, accepted_per_second: queue.acceptThroughput.rps, delivery_vs_now: queue.deliveryRps / queue.syncThroughput.rps, delivered: queue.delivered, delivery_with_controls_vs_without: queue.deliveryRps / queue.deliveryRpsWithoutControls, redis_per_job: queue.redisPerJob, service_cpu_us: { per_job: queue.serviceCpuMicrosPerJob, per_request_now: queue.serviceCpuMicrosNow } })}\n`)
      return
    }
    process.stderr.write('measuring POST /token with the cache off, and its ceiling\n')
    const off = await startService({ COZE_TOKEN_REUSE_SECONDS: '0' })
    const tokenOff = await measure('POST /token, cache off', jsonPost(`http://127.0.0.1:${off.port}/token`, tokenBody), off.pid)
    const signAndPost = await measure('ceiling: sign + post (bare Fastify)', jsonPost(`http://127.0.0.1:${ceilingPort}/sign-and-post`, '{}'), ceilingPid)

    process.stderr.write('measuring the service with the cache on\n')
    const service = await startService({})
    const base = `http://127.0.0.1:${service.port}`
    const tokenOn = await measure('POST /token, cache on', jsonPost(`${base}/token`, tokenBody), service.pid)
    const health = await measure('GET /health', { url: `${base}/health` }, service.pid)
    const hello = await measure('ceiling: hello world (bare Fastify)', { url: `http://127.0.0.1:${ceilingPort}/hello` }, ceilingPid)
    // Not targets: the service's own answers from a bare server, to tell the answers' cost from the service's.
    const sameHealthOptions = { url: `http://127.0.0.1:${ceilingPort}/same-health` }
    const sameTokenOptions = jsonPost(`http://127.0.0.1:${ceilingPort}/same-token`, tokenBody)
    const sameHealth = await measure('reference: the /health answer (bare Fastify)', sameHealthOptions, ceilingPid)
    const sameToken = await measure('reference: the /token answer, body validated (bare Fastify)', sameTokenOptions, ceilingPid)

    const brokerService = await startService({ COZE_APPS: JSON.stringify(document), BENCH_APP_KEY: pem })
    const brokerOptions = brokerOptionsAt(brokerService.port)
    const singleCached = await measure('POST /token, cache on, one app (X-API-Key)', { ...jsonPost(`${base}/token`, JSON.stringify({ public_key: KID, duration_seconds: 86399 })), headers: { 'content-type': 'application/json', 'x-api-key': API_KEY } }, service.pid)
    const brokerCached = await measure('POST /token, broker: 50 apps, 200 session names, cached', brokerOptions, brokerService.pid)

    const resendBody = JSON.stringify({
      location,
      headers: { Authorization: 'Bearer t-bench' },
      params: { records: [{ fields: FIELDS }] },
      commands: { json_parse: ['$.params.records[*].fields'] }
    })
    // Latency added by the relay: one request at a time (so the median is the path's cost, not queueing),
    // each timed here, since autocannon's percentiles have a resolution of a millisecond.
    const resend = await sequentialLatency('POST /resend (one at a time)', `${base}/resend`, resendBody, { 'x-api-key': API_KEY })
    // The same relay without commands (the fields already objects): what json_parse in its worker adds.
    const plainBody = JSON.stringify({ location, headers: { Authorization: 'Bearer t-bench' }, params: { records: [{ fields: JSON.parse(FIELDS) }] } })
    const resendPlain = await sequentialLatency('POST /resend without commands (one at a time)', `${base}/resend`, plainBody, { 'x-api-key': API_KEY })
    const direct = await sequentialLatency('ceiling: the same request straight to the mock (one at a time)', location, JSON.stringify({ records: [{ fields: JSON.parse(FIELDS) }] }), {})
    const resendThroughput = await measure('POST /resend', { ...jsonPost(`${base}/resend`, resendBody), headers: { 'content-type': 'application/json', 'x-api-key': API_KEY } }, service.pid)
    // The relay against the bare relay (bench/ceilings.ts), with the seed's json_parse and without commands,
    // alternating, ROUNDS times.
    process.stderr.write('measuring the relay against the bare relay\n')
    const relayPost = (url: string, body: string): Options => ({ ...jsonPost(url, body), headers: { 'content-type': 'application/json', 'x-api-key': API_KEY } })
    const bare = { jsonParse: [] as number[], plain: [] as number[], first: [] as Measured[] }
    for (let round = 1; round <= ROUNDS; round++) {
      const ours = round === 1 ? resendThroughput : await measure('POST /resend', relayPost(`${base}/resend`, resendBody), service.pid)
      const theirs = await measure('ceiling: the bare relay, json_parse inline', relayPost(`http://127.0.0.1:${ceilingPort}/bare-relay`, resendBody), ceilingPid)
      bare.jsonParse.push(ours.rps / theirs.rps)
      const oursPlain = await measure('POST /resend without commands', relayPost(`${base}/resend`, plainBody), service.pid)
      const theirsPlain = await measure('ceiling: the bare relay without commands', relayPost(`http://127.0.0.1:${ceilingPort}/bare-relay`, plainBody), ceilingPid)
      bare.plain.push(oursPlain.rps / theirsPlain.rps)
      if (round === 1) bare.first.push(ours, theirs, oursPlain, theirsPlain)
    }
    if (process.env.BENCH_ONLY === 'relay') {
      process.stdout.write(`${JSON.stringify({ json_parse_vs_bare: bare.jsonParse, plain_vs_bare: bare.plain, first_round_rps: bare.first.map((m) => [m.name, Math.round(m.rps)]) })}\n`)
      return
    }
    // Tracing on (every request sampled, exported over OTLP/HTTP protobuf to a collector on loopback) against the
    // same service with tracing off: cached /token and /resend, alternating, ROUNDS times.
    process.stderr.write('measuring tracing on against off\n')
    const traced = await startService({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${ports.otlp}`, OTEL_TRACES_SAMPLER: 'always_on' })
    const tracedBase = `http://127.0.0.1:${traced.port}`
    const tracing = { token: [] as number[], resend: [] as number[], tokenOn: [] as Measured[], resendOn: [] as Measured[], resendOff: [] as Measured[] }
    for (let round = 1; round <= ROUNDS; round++) {
      const tokenTraced = await measure('POST /token, cache on, tracing on', jsonPost(`${tracedBase}/token`, tokenBody), traced.pid)
      const tokenPlain = round === 1 ? tokenOn : await measure('POST /token, cache on', jsonPost(`${base}/token`, tokenBody), service.pid)
      tracing.token.push(tokenTraced.rps / tokenPlain.rps)
      tracing.tokenOn.push(tokenTraced)
      const resendTraced = await measure('POST /resend, tracing on', { ...jsonPost(`${tracedBase}/resend`, resendBody), headers: { 'content-type': 'application/json', 'x-api-key': API_KEY } }, traced.pid)
      const resendPlain = round === 1 ? resendThroughput : await measure('POST /resend', { ...jsonPost(`${base}/resend`, resendBody), headers: { 'content-type': 'application/json', 'x-api-key': API_KEY } }, service.pid)
      tracing.resend.push(resendTraced.rps / resendPlain.rps)
      tracing.resendOn.push(resendTraced)
      tracing.resendOff.push(resendPlain)
    }
    await traced.child.stop()
    if (process.env.BENCH_ONLY === 'tracing') {
      process.stdout.write(`${JSON.stringify({ token_cached_on_over_off: tracing.token, resend_on_over_off: tracing.resend, rps: { token_on: tracing.tokenOn.map((m) => m.rps), resend_on: tracing.resendOn.map((m) => m.rps), resend_off: tracing.resendOff.map((m) => m.rps) } })}\n`)
      return
    }
    process.stderr.write('measuring queued delivery (Redis at REDIS_URL)\n')
    const queue = await measureQueue({ startService, location, apiKey: API_KEY, redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', connections: CONNECTIONS, fields: FIELDS })

    const tenantUrl = `http://127.0.0.1:${ports.augment}/`
    const flowOptions = {
      url: base,
      requests: [
        {
          method: 'GET',
          path: '/api/auth-url',
          onResponse: (_status: number, body: string, context: Record<string, unknown>) => { context.state = (JSON.parse(body) as { data: { state: string } }).data.state }
        },
        {
          method: 'POST',
          path: '/api/complete-auth',
          headers: { 'content-type': 'application/json' },
          setupRequest: (request: Record<string, unknown>, context: Record<string, unknown>) => ({ ...request, body: JSON.stringify({ code: 'bench-code', state: context.state, tenant_url: tenantUrl }) })
        }
      ]
    } as Options
    const flow = await measure('GET /api/auth-url + POST /api/complete-auth', flowOptions, service.pid)
    const flowReferenceOptions = { ...flowOptions, url: `http://127.0.0.1:${ceilingPort}`, requests: (flowOptions.requests ?? []).map((request) => ({ ...request, path: `/reference${String(request.path).slice(4)}` })) } as Options
    const flowReference = await measure('reference: the same two requests and tenant round trip (bare Fastify)', flowReferenceOptions, ceilingPid)

    // More rounds of each throughput pair, alternating scenario and ceiling, so that a burst of load from
    // elsewhere on the machine moves one round, not the verdict.
    const rounds: Record<string, number[]> = {
      tokenOff: [tokenOff.rps / signatures],
      tokenOn: [tokenOn.rps / sameToken.rps],
      health: [health.rps / hello.rps],
      flow: [flow.rps / flowReference.rps],
      broker: [brokerCached.rps / singleCached.rps],
      tokenOffVsSignAndPost: [tokenOff.rps / signAndPost.rps],
      tokenOnVsHealth: [tokenOn.rps / health.rps],
      healthOverhead: [health.rps / sameHealth.rps],
      tracingToken: tracing.token,
      bareJsonParse: bare.jsonParse,
      barePlain: bare.plain,
      tracingResend: tracing.resend
    }
    const push = (key: string, value: number): void => { (rounds[key] as number[]).push(value) }
    for (let round = 2; round <= ROUNDS; round++) {
      process.stderr.write(`round ${round} of ${ROUNDS}\n`)
      const signaturesAgain = await signaturesPerSecond(pem, 5, KID)
      const offAgain = await measure('POST /token, cache off', jsonPost(`http://127.0.0.1:${off.port}/token`, tokenBody), off.pid)
      push('tokenOff', offAgain.rps / signaturesAgain)
      push('tokenOffVsSignAndPost', offAgain.rps / (await measure('ceiling: sign + post (bare Fastify)', jsonPost(`http://127.0.0.1:${ceilingPort}/sign-and-post`, '{}'), ceilingPid)).rps)
      const onAgain = await measure('POST /token, cache on', jsonPost(`${base}/token`, tokenBody), service.pid)
      push('tokenOn', onAgain.rps / (await measure('reference: the /token answer, body validated (bare Fastify)', sameTokenOptions, ceilingPid)).rps)
      const healthAgain = await measure('GET /health', { url: `${base}/health` }, service.pid)
      push('tokenOnVsHealth', onAgain.rps / healthAgain.rps)
      push('health', healthAgain.rps / (await measure('ceiling: hello world (bare Fastify)', { url: `http://127.0.0.1:${ceilingPort}/hello` }, ceilingPid)).rps)
      push('healthOverhead', healthAgain.rps / (await measure('reference: the /health answer (bare Fastify)', sameHealthOptions, ceilingPid)).rps)
      const flowAgain = await measure('GET /api/auth-url + POST /api/complete-auth', flowOptions, service.pid)
      push('flow', flowAgain.rps / (await measure('reference: the same two requests and tenant round trip (bare Fastify)', flowReferenceOptions, ceilingPid)).rps)
      const singleAgain = await measure('POST /token, cache on, one app (X-API-Key)', { ...jsonPost(`${base}/token`, JSON.stringify({ public_key: KID, duration_seconds: 86399 })), headers: { 'content-type': 'application/json', 'x-api-key': API_KEY } }, service.pid)
      push('broker', (await measure('POST /token, broker: 50 apps, 200 session names, cached', brokerOptions, brokerService.pid)).rps / singleAgain.rps)
    }
    await off.child.stop()
    await brokerService.child.stop()
    const median = (values: number[]): number => {
      const sorted = [...values].sort((a, b) => a - b)
      const middle = Math.floor(sorted.length / 2)
      return sorted.length % 2 === 1 ? sorted[middle] as number : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2
    }

    // The same service process, so its RSS at the end is the RSS after the whole bench.
    process.stderr.write(`measuring memory: ${AUTH_URL_REQUESTS} GET /api/auth-url with the memory store\n`)
    const rssBefore = rssMb(service.pid)
    const flood = await autocannon({ url: `${base}/api/auth-url`, connections: CONNECTIONS, amount: AUTH_URL_REQUESTS })
    const rssAfter = rssMb(service.pid)
    const stored = await scrape(service.port, 'oauth_states_stored')
    const floodErrors = flood.errors + flood.timeouts + flood.non2xx
    const serviceFinalRss = Math.round(rssAfter)

    const ratio = (key: string): number => median(rounds[key] as number[])
    // The same comparison by the servers' own CPU cost per request: what the ratio would be if the server,
    // not the load generator sharing its cores, were the limit.
    const costRatio = (a: Measured, b: Measured): number | null =>
      a.cpuMicrosPerRequest === null || b.cpuMicrosPerRequest === null ? null : b.cpuMicrosPerRequest / Math.max(1, a.cpuMicrosPerRequest)
    const signingLimit: Measured = { name: 'RS256 signatures alone (jose, same key)', rps: signatures, p50: 0, p99: 0, errors: 0, peakRssMb: null, cpuPercent: null, cpuMicrosPerRequest: null, mainThreadMicrosPerRequest: null }
    const scenarios = [
      { scenario: 'POST /token, cache off, vs the RS256 signing limit', key: 'tokenOff', measured: tokenOff, ceiling: signingLimit, value: ratio('tokenOff'), target: '>= 0.75', ok: ratio('tokenOff') >= 0.75, limit: 'CPU: signing on the thread pool, the service, the load generator and the mock share 2 cores' },
      { scenario: 'POST /token, cache off: main-thread CPU per request (µs)', key: '', measured: tokenOff, ceiling: tokenOff, value: tokenOff.mainThreadMicrosPerRequest ?? NaN, target: '< 120 µs', ok: (tokenOff.mainThreadMicrosPerRequest ?? Infinity) < 120, limit: 'request parsing and validation, the exchange\'s HTTP round trip, the answer, log and metrics' },
      { scenario: 'POST /token, cache on, vs the same answer from bare Fastify', key: 'tokenOn', measured: tokenOn, ceiling: sameToken, value: ratio('tokenOn'), target: '>= 0.85', ok: ratio('tokenOn') >= 0.85, limit: 'request handling: validation, key check, cache lookup, serialization' },
      { scenario: 'GET /health vs hello world', key: 'health', measured: health, ceiling: hello, value: ratio('health'), target: '>= 0.90', ok: ratio('health') >= 0.90, limit: 'Fastify\'s own request cost plus the service\'s hooks' },
      { scenario: 'auth-url + complete-auth vs the same flow from bare Fastify', key: 'flow', measured: flow, ceiling: flowReference, value: ratio('flow'), target: '>= 0.80', ok: ratio('flow') >= 0.80, limit: 'two requests per flow, PKCE hashing, the tenant round trip' },
      { scenario: 'cached /token, broker (50 apps, 200 sessions) vs one app', key: 'broker', measured: brokerCached, ceiling: singleCached, value: ratio('broker'), target: '>= 0.90', ok: ratio('broker') >= 0.90, limit: 'the caller\'s checks and the cache key over several fields' },
      { scenario: 'POST /resend, added median latency (ms)', key: '', measured: resend, ceiling: direct, value: resend.p50 - direct.p50, target: '<= 1 ms', ok: resend.p50 - direct.p50 <= 1, limit: 'a second HTTP hop: parse, check, JSONPath, send, read, answer' },
      { scenario: 'POST /resend, json_parse over the same relay without commands (ms at p50)', key: '', measured: resend, ceiling: resendPlain, value: resend.p50 - resendPlain.p50, target: '<= 1 ms', ok: resend.p50 - resendPlain.p50 <= 1, limit: 'the hand-over to a worker thread and back' },
      { scenario: 'queued /resend: accepting over validating (ms at p50)', key: '', measured: queue.accept, ceiling: queue.validated, value: queue.accept.p50 - queue.validated.p50, target: '<= 2 ms', ok: queue.accept.p50 - queue.validated.p50 <= 2, limit: 'sealing the job, and its Redis round trips (the byte count, the job, the age index)' },
      { scenario: 'queued /resend: jobs accepted per second by one instance', key: '', measured: queue.acceptThroughput, ceiling: queue.acceptThroughput, value: queue.acceptThroughput.rps, target: '>= 2000', ok: queue.acceptThroughput.rps >= 2000, limit: 'BullMQ\'s add script in Redis, and the service beside the load generator on 2 cores' },
      { scenario: 'POST /resend with the seed\'s json_parse vs the bare relay doing JSON.parse inline', key: 'bareJsonParse', measured: bare.first[0] as Measured, ceiling: bare.first[1] as Measured, value: ratio('bareJsonParse'), target: '>= 0.8', ok: ratio('bareJsonParse') >= 0.8, limit: 'the policy, the body parsed twice (Fastify, then json_parse over the text), the envelope, log and metrics' },
      { scenario: 'POST /resend without commands vs the bare relay', key: 'barePlain', measured: bare.first[2] as Measured, ceiling: bare.first[3] as Measured, value: ratio('barePlain'), target: '>= 0.85', ok: ratio('barePlain') >= 0.85, limit: 'the destination policy, header checks, the connection guard, the envelope, log and metrics' },
      { scenario: 'POST /token, cache on, tracing on (always_on, OTLP to loopback) vs off', key: 'tracingToken', measured: tracing.tokenOn[0] as Measured, ceiling: tokenOn, value: ratio('tracingToken'), target: '>= 0.85', ok: ratio('tracingToken') >= 0.85, limit: 'two spans per request (the request, its handler), their export in batches' },
      { scenario: 'POST /resend (json_parse), tracing on vs off', key: 'tracingResend', measured: tracing.resendOn[0] as Measured, ceiling: tracing.resendOff[0] as Measured, value: ratio('tracingResend'), target: '>= 0.85', ok: ratio('tracingResend') >= 0.85, limit: 'four spans per request (the request, its handler, the attempt, the HTTP client span) and traceparent on the request out' },
      { scenario: 'queued delivery with fair shares, limits and breakers vs without (RESEND_DESTINATION_CONTROLS=off), no limits set', key: '', measured: queue.syncThroughput, ceiling: queue.syncThroughput, value: queue.deliveryRps / queue.deliveryRpsWithoutControls, target: '>= 0.9', ok: queue.deliveryRps / queue.deliveryRpsWithoutControls >= 0.9, limit: 'two more scripts in Redis per attempt: the admission (share, limit, breaker) and the settling' },
      { scenario: 'queued delivery vs the relay answering now, same body (throughput)', key: '', measured: queue.syncThroughput, ceiling: queue.syncThroughput, value: queue.deliveryRps / queue.syncThroughput.rps, target: '>= 0.9', ok: queue.deliveryRps / queue.syncThroughput.rps >= 0.9, limit: 'each job is taken, admitted, settled, kept and completed in Redis (five scripts or commands) beside the one request to the destination' }
    ]
    const references = [
      { scenario: 'POST /token, cache off, vs sign + post from bare Fastify', key: 'tokenOffVsSignAndPost', measured: tokenOff, ceiling: signAndPost },
      { scenario: 'POST /token, cache on, vs GET /health', key: 'tokenOnVsHealth', measured: tokenOn, ceiling: health },
      { scenario: 'GET /health vs the same answer from bare Fastify', key: 'healthOverhead', measured: health, ceiling: sameHealth }
    ].map((r) => ({ ...r, value: ratio(r.key) }))
    const all = [tokenOff, signAndPost, tokenOn, singleCached, brokerCached, health, hello, sameHealth, sameToken, resend, resendPlain, direct, resendThroughput, queue.accept, queue.validated, queue.acceptThroughput, queue.syncThroughput, flow, flowReference]
    const errorsOk = all.every((m) => m.errors === 0) && floodErrors === 0
    const memory = {
      requests: AUTH_URL_REQUESTS,
      rss_before_mb: Math.round(rssBefore),
      rss_after_mb: Math.round(rssAfter),
      growth_mb: Math.round(rssAfter - rssBefore),
      growth_ok: rssAfter - rssBefore < 60,
      states_stored: stored,
      max_entries_held: stored <= 10_000,
      errors: floodErrors
    }
    const peakServiceRss = Math.max(...[tokenOff, tokenOn, health, resend, resendThroughput, flow].map((m) => m.peakRssMb ?? 0), serviceFinalRss)

    const line = (cells: string[]): string => `| ${cells.join(' | ')} |`
    const rows = [
      line(['scenario', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'peak RSS MB', 'server CPU %', 'server CPU µs/req', 'main thread µs/req']),
      line(['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:']),
      ...all.map((m) =>
        line([m.name, String(Math.round(m.rps)), String(m.p50), String(m.p99), String(m.errors), m.peakRssMb === null ? '-' : String(m.peakRssMb),
          m.cpuPercent === null ? '-' : String(m.cpuPercent), m.cpuMicrosPerRequest === null ? '-' : String(m.cpuMicrosPerRequest),
          m.mainThreadMicrosPerRequest === null ? '-' : String(m.mainThreadMicrosPerRequest)]))
    ]
    const checks = [
      line(['target', `measured (median of ${ROUNDS} rounds)`, 'rounds', 'wanted', 'result', 'by server CPU per request']),
      line(['---', '---:', '---', '---', '---', '---:']),
      ...scenarios.map((s) => {
        const cost = s.key === '' || s.ceiling === signingLimit ? null : costRatio(s.measured, s.ceiling)
        const each = s.key === '' ? '-' : (rounds[s.key] as number[]).map((value) => value.toFixed(2)).join(', ')
        return line([s.scenario, s.value.toFixed(2), each, s.target, s.ok ? 'met' : 'FALLS SHORT', cost === null ? '-' : cost.toFixed(2)])
      }),
      line(['errors in every scenario', String(errorsOk ? 0 : 'some'), '-', '0', errorsOk ? 'met' : 'FALLS SHORT', '-']),
      line([`RSS growth after ${AUTH_URL_REQUESTS} auth-url`, `${memory.growth_mb} MB`, '-', '< 60 MB', memory.growth_ok ? 'met' : 'FALLS SHORT', '-']),
      line(['OAuth states kept (OAUTH_STATE_MAX_ENTRIES 10000)', String(stored), '-', '<= 10000', memory.max_entries_held ? 'met' : 'FALLS SHORT', '-']),
      line(['service RSS after the whole bench', `${serviceFinalRss} MB`, '-', '< 200 MB', serviceFinalRss < 200 ? 'met' : 'FALLS SHORT', '-'])
    ]
    const referenceRows = [
      line(['not a target: what the service adds', `ratio (median of ${ROUNDS} rounds)`, 'rounds', 'by server CPU per request']),
      line(['---', '---:', '---', '---:']),
      ...references.map((r) => line([r.scenario, r.value.toFixed(2), (rounds[r.key] as number[]).map((value) => value.toFixed(2)).join(', '), costRatio(r.measured, r.ceiling)?.toFixed(2) ?? '-']))
    ]
    const tokenShare = tokenOff.rps / signatures
    const summary = [
      `machine: ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.version}; ${CONNECTIONS} connections, ${WARMUP} s warm-up, ${DURATION} s per scenario, ${ROUNDS} rounds of each ratio (the first shown)`,
      '',
      ...rows,
      '',
      `RS256 signatures/s with the same key, nothing else running: ${Math.round(signatures)}; POST /token with the cache off reaches ${(tokenShare * 100).toFixed(0)}% of it.`,
      `Peak RSS of the service during the bench: ${peakServiceRss} MB.`,
      `Each queued job delivered cost the instance ${Math.round(queue.serviceCpuMicrosPerJob)} µs of CPU (a request answered now: ${Math.round(queue.serviceCpuMicrosNow)} µs), and Redis ${queue.redisPerJob.commands.toFixed(1)} commands and ${Math.round(queue.redisPerJob.cpuMicros)} µs of its CPU.`,
      '',
      ...checks,
      '',
      ...referenceRows
    ].join('\n')
    process.stdout.write(`\n${summary}\n`)

    const allOk = scenarios.every((s) => s.ok) && errorsOk && memory.growth_ok && memory.max_entries_held && serviceFinalRss < 200
    const shortfalls = scenarios.filter((s) => !s.ok).map((s) => s.scenario)
    if (!errorsOk) shortfalls.push('errors')
    if (!memory.growth_ok) shortfalls.push('RSS growth')
    if (!memory.max_entries_held) shortfalls.push('OAUTH_STATE_MAX_ENTRIES')
    if (serviceFinalRss >= 200) shortfalls.push('final RSS')
    process.stdout.write(allOk ? '\nEvery target is met.\n' : `\nFalls short: ${shortfalls.join('; ')}.\n`)

    mkdirSync(`${ROOT}/bench/results`, { recursive: true })
    const file = `${ROOT}/bench/results/${new Date().toISOString().replace(/[:.]/g, '-')}.json`
    writeFileSync(file, JSON.stringify({
      date: new Date().toISOString(),
      machine: { cores: cpus().length, model: cpus()[0]?.model, memory_gib: Math.round(totalmem() / 2 ** 30), node: process.version },
      settings: { connections: CONNECTIONS, warmup_s: WARMUP, duration_s: DURATION, rounds: ROUNDS },
      signatures_per_second: signatures,
      token_share_of_signatures: tokenShare,
      measured: all,
      references: references.map(({ scenario, key, value, measured, ceiling }) => ({ scenario, value, rounds: rounds[key], cost_ratio: costRatio(measured, ceiling) })),
      targets: scenarios.map(({ scenario, key, value, target, ok, limit, measured, ceiling }) => ({ scenario, value, rounds: rounds[key] ?? null, target, ok, limit, cost_ratio: costRatio(measured, ceiling) })),
      memory,
      peak_service_rss_mb: peakServiceRss,
      redis_per_delivered_job: queue.redisPerJob,
      service_cpu_us_per_delivered_job: queue.serviceCpuMicrosPerJob,
      final_service_rss_mb: serviceFinalRss,
      all_targets_met: allOk
    }, null, 2))
    process.stdout.write(`Written to ${file}\n`)
    process.exitCode = allOk ? 0 : 1
  } finally {
    await stopAll()
  }
}

await main()
