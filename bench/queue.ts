import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { measure, type Measured, sequentialLatency } from './measure.js'
import { cpuMs } from './processes.js'

/**
 * Queued delivery, measured: what accepting a job costs over validating it, how many jobs one instance accepts,
 * and how fast the queue delivers beside the relay answering while the caller waits.
 */

export interface QueueMeasurements {
  accept: Measured
  validated: Measured
  acceptThroughput: Measured
  syncThroughput: Measured
  /** Jobs delivered per second by one instance, RESEND_WORKERS = the bench's connections. */
  deliveryRps: number
  delivered: number
  /** The same, with RESEND_DESTINATION_CONTROLS=off (first come, first served, no shares, limits or breaker). */
  deliveryRpsWithoutControls: number
  /** What each delivered job cost Redis (controls on): commands it ran, and its CPU in µs. */
  redisPerJob: { commands: number, cpuMicros: number }
  /** What each delivered job cost the delivering instance: its CPU in µs (every thread), and the same for a request answered now. */
  serviceCpuMicrosPerJob: number
  serviceCpuMicrosNow: number
}

/** Commands Redis has run and CPU it has used (ms), from INFO: what a phase costs it, by difference. */
async function redisWork (redis: Redis): Promise<{ commands: number, cpuMs: number }> {
  const info = await redis.info()
  const field = (name: string): number => Number(new RegExp(`^${name}:(.*)$`, 'm').exec(info)?.[1])
  // (The INFO that reads this is one command of them.)
  return { commands: field('total_commands_processed'), cpuMs: 1000 * (field('used_cpu_user') + field('used_cpu_sys')) }
}

type StartService = (extra: Record<string, string>) => Promise<{ port: number, pid: number, child: { stop: () => Promise<void> } }>

async function counter (port: number, line: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
  return Number(text.split('\n').find((row) => row.startsWith(`${line} `))?.split(' ')[1] ?? 0)
}

export async function measureQueue (options: { startService: StartService, location: string, apiKey: string, redisUrl: string, connections: number, fields: string }): Promise<QueueMeasurements> {
  const { startService, location, apiKey } = options
  const prefix = `bench-${randomBytes(4).toString('hex')}:`
  const queueEnv = { RESEND_QUEUE: 'redis', RESEND_QUEUE_SECRET: randomBytes(32).toString('base64'), REDIS_URL: options.redisUrl, REDIS_KEY_PREFIX: prefix, RESEND_MAX_QUEUED: '100000000' }
  const redis = new Redis(options.redisUrl)
  try {
    // An instance that accepts and answers only (RESEND_WORKERS=0): acceptance alone is measured.
    const accepting = await startService({ ...queueEnv, RESEND_WORKERS: '0' })
    const url = `http://127.0.0.1:${accepting.port}/resend`
    const headers = { 'x-api-key': apiKey }
    const commands = { json_parse: ['$.params.records[*].fields'] }
    const queuedBody = JSON.stringify({ location, headers: { Authorization: 'Bearer t-bench' }, params: { records: [{ fields: options.fields }] }, commands, delivery: 'queued' })
    // The same request, refused by its last check (the expression matches no string): everything but storing.
    const refusedBody = JSON.stringify({ location, headers: { Authorization: 'Bearer t-bench' }, params: { records: [{ fields: JSON.parse(options.fields) as unknown }] }, commands, delivery: 'queued' })
    const accept = await sequentialLatency('POST /resend queued: accepted (one at a time)', url, queuedBody, headers, 3000, 202)
    const validated = await sequentialLatency('reference: the same, refused after its commands (one at a time)', url, refusedBody, headers, 3000, 400)
    const plainQueued = JSON.stringify({ location, headers: { Authorization: 'Bearer t-bench' }, params: { records: [{ fields: JSON.parse(options.fields) as unknown }] }, delivery: 'queued' })
    const acceptThroughput = await measure('POST /resend queued, accepted (RESEND_WORKERS=0)', { url, method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: plainQueued }, accepting.pid)
    await accepting.child.stop()

    // The relay answering while the caller waits, the same body: the ceiling of delivery.
    const syncUrl = `http://127.0.0.1:${accepting.port}/resend`
    const sync = await startService({})
    const syncThroughput = await measure('POST /resend now, the same body', { url: syncUrl.replace(String(accepting.port), String(sync.port)), method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ location, headers: { Authorization: 'Bearer t-bench' }, params: { records: [{ fields: JSON.parse(options.fields) as unknown }] } }) }, sync.pid)
    await sync.child.stop()

    /** Everything queued now, delivered by one instance with as many workers as the bench has connections. */
    async function deliverAll (label: string, extra: Record<string, string>): Promise<{ rps: number, delivered: number, redisPerJob: { commands: number, cpuMicros: number }, cpuMicros: number }> {
      const waiting = await redis.llen(`{${prefix}resend}:resend:wait`)
      const before = await redisWork(redis)
      // Timed from the first poll that finds deliveries to the last: the queue's pace, not the process's start.
      const delivering = await startService({ ...queueEnv, RESEND_WORKERS: String(options.connections), ...extra })
      const metric = 'resend_jobs_total{outcome="delivered"}'
      let delivered = await counter(delivering.port, metric)
      let first = { at: performance.now(), count: delivered }
      const cpuBefore = cpuMs(delivering.pid)
      const deadline = performance.now() + 600_000
      while (delivered < waiting && performance.now() < deadline) {
        await sleep(100)
        delivered = await counter(delivering.port, metric)
        if (first.count === 0) first = { at: performance.now(), count: delivered }
      }
      const rps = (delivered - first.count) / ((performance.now() - first.at) / 1000)
      // Everything Redis did meanwhile, the instance's start and its snapshots included, per job delivered.
      const after = await redisWork(redis)
      const redisPerJob = { commands: (after.commands - before.commands) / Math.max(1, delivered), cpuMicros: (1000 * (after.cpuMs - before.cpuMs)) / Math.max(1, delivered) }
      const cpuMicros = (1000 * (cpuMs(delivering.pid) - cpuBefore)) / Math.max(1, delivered)
      process.stderr.write(`  queued delivery, ${label}: ${delivered} of ${waiting} jobs, ${Math.round(rps)} jobs/s; a job cost the instance ${Math.round(cpuMicros)} µs of CPU, Redis ${redisPerJob.commands.toFixed(1)} commands and ${Math.round(redisPerJob.cpuMicros)} µs\n`)
      await delivering.child.stop()
      return { rps, delivered, redisPerJob, cpuMicros }
    }
    const withControls = await deliverAll('fair shares, limits and breakers on', {})
    // The same again, without them: as many jobs accepted, then delivered first come, first served.
    const again = await startService({ ...queueEnv, RESEND_WORKERS: '0' })
    const againUrl = `http://127.0.0.1:${again.port}/resend`
    for (let sent = 0; sent < withControls.delivered; sent += 100) {
      await Promise.all(Array.from({ length: Math.min(100, withControls.delivered - sent) }, async () => {
        await (await fetch(againUrl, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: plainQueued })).arrayBuffer()
      }))
    }
    await again.child.stop()
    const withoutControls = await deliverAll('RESEND_DESTINATION_CONTROLS=off', { RESEND_DESTINATION_CONTROLS: 'off' })
    return { accept, validated, acceptThroughput, syncThroughput, deliveryRps: withControls.rps, delivered: withControls.delivered, deliveryRpsWithoutControls: withoutControls.rps, redisPerJob: withControls.redisPerJob, serviceCpuMicrosPerJob: withControls.cpuMicros, serviceCpuMicrosNow: syncThroughput.cpuMicrosPerRequest ?? 0 }
  } finally {
    for (const pattern of [`${prefix}*`, `{${prefix}*`]) {
      let cursor = '0'
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
        if (keys.length > 0) await redis.del(...keys)
        cursor = next
      } while (cursor !== '0')
    }
    redis.disconnect()
  }
}
