import { checkDestination, parseAllowList, type PolicyEntry, ServiceError } from '../http/index.js'
import type { RedisClient } from '../redis/index.js'

/**
 * What stands between a job and its destination, shared by every instance in Redis: each host's limit
 * (RESEND_HOST_LIMITS), its breaker (RESEND_BREAKER_*), a pause its destination asked for (Feishu's rate limit, a
 * 429), and each flow's share of the workers. A flow is one caller's jobs to one host ("*" is the caller in
 * single-key mode): while other flows have jobs waiting, no flow holds more than its share of the deliveries in
 * flight, so that one backlog never holds every worker.
 *
 * The state of a host and of the flows to it lives under the host's queue partition (its hash tag), so that one
 * script decides each step on one Redis Cluster slot. A job waiting here spends no attempt; every hold it takes (a
 * lease, the breaker's probe) has an expiry, so an instance killed while holding one blocks nothing beyond it.
 */

/** A host's limit as RESEND_HOST_LIMITS writes it: the entry (matched as in RESEND_ALLOWED_HOSTS) and its rate. */
export interface HostLimit { entry: PolicyEntry, perSecond: number }

export interface DestinationsOptions {
  client: RedisClient
  /** The hash tag of a host's partition (`{<prefix>resend-i}`): where its state and its flows' live. */
  tagFor: (host: string) => string
  /** Every partition's tag, for the listing. */
  tags: string[]
  limits: HostLimit[]
  /** RESEND_BREAKER_FAILURES: consecutive failures (no connection, timeout, 5xx) that pause a host. */
  breakerFailures: number
  /** RESEND_BREAKER_COOLDOWN: the first pause; each failed probe doubles it, up to MAX_COOLDOWN_MS. */
  breakerCooldownMs: number
  /** How long a delivery may hold its lease (RESEND_JOB_LOCK_MS): past it the lease lapses. */
  leaseMs: number
  /** RESEND_TIMEOUT_MS: how long a probe of a paused host, or a request sent now, may hold the probe. */
  attemptMs: number
  /** RESEND_MAX_AGE: a job waiting longer than this is no longer counted as waiting. */
  maxAgeMs: number
  /** Told when a host's breaker opens (after `failures`) or closes (its probe answered). */
  onBreaker?: (host: string, state: 'opened' | 'closed', detail: { failures: number, cooldownMs: number, error?: string | undefined }) => void
}

/** paused: the destination asked for a pause; breaker: its breaker is open (or its probe out); limited: its limit; share: the flow's share. */
export type HoldReason = 'paused' | 'breaker' | 'limited' | 'share'

/** What a queued attempt may do now: go (it holds a lease until it settles), or wait until `at`, and why. */
export type Admission = { go: true, probe: boolean } | { go: false, at: number, reason: HoldReason }

/** How an attempt went, as the breaker counts it. */
export interface AttemptOutcome {
  /** `ok`: the host answered (any status below 500); `failed`: no answer, a timeout or a 5xx; `none`: not sent. */
  kind: 'ok' | 'failed' | 'none'
  /** The destination asked for a pause of the whole host (Feishu's rate limit, a 429 with a reset): until when. */
  pauseUntil?: number | undefined
  error?: string | undefined
}

/** Whose attempt settles: a queued job's (its lease is released; `nextAt`: when it is tried again), or one sent now. */
export interface Settling {
  id?: string
  owner?: string
  /** The attempt was the breaker's probe (Admission.probe). */
  probe: boolean
  nextAt?: number | undefined
}

export interface DestinationView {
  host: string
  state: 'ok' | 'paused' | 'limited'
  /** When a pause ends (the breaker's, or the destination's own), as an ISO date; null when not paused. */
  paused_until: string | null
  /** Why it is paused: `breaker` (consecutive failures) or `rate_limited` (the destination asked). */
  paused_by: 'breaker' | 'rate_limited' | null
  limit_per_second: number | null
  /** Attempts in the last RECENT_WINDOW_MS: answered, failed, and their failure rate. */
  recent: { attempts: number, failed: number, failure_rate: number }
  consecutive_failures: number
  last_error: string | null
  last_attempt_at: string | null
  /** Jobs of this host waiting for a slot now (for their share, the limit or a pause), across callers. */
  waiting: number
  in_flight: number
}

export interface Destinations {
  /** A job that may be sent from `at` on (accepted, put back, or waiting for its next attempt): it counts as waiting from then. */
  waiting (id: string, owner: string, host: string, at: number): Promise<void>
  /** Before each queued attempt. */
  admit (id: string, owner: string, host: string): Promise<Admission>
  /**
   * Before a request sent now: throws 429 RATE_LIMITED or 503 destination_paused, with when to come back; the
   * answer says whether it is the breaker's probe.
   */
  admitNow (host: string): Promise<{ probe: boolean }>
  /** After an attempt. */
  settle (host: string, outcome: AttemptOutcome, settling: Settling): Promise<void>
  /** A cancelled job no longer waits. */
  forget (id: string, owner: string, host: string): Promise<void>
  /**
   * Every host with attempts in the last day, busiest first; for one caller (broker mode), only the hosts its own
   * jobs wait for or are being delivered to, with its own counts of them.
   */
  list (owner: string | null): Promise<DestinationView[]>
}

export const MAX_COOLDOWN_MS = 600_000
/** The window of `recent` in the listing, and of its failure rate. */
export const RECENT_WINDOW_MS = 300_000
/** A host without an attempt for this long leaves the listing (and its counters are dropped). */
const FORGOTTEN_AFTER_MS = 86_400_000

// One script for every step. KEYS (one hash tag): 1 hosts (hash: "<host>\t<field>" -> value), 2 leases (zset:
// "<flow>\t<id>" -> expiry), 3 held (hash: flow -> leases), 4 waiting (zset: "<flow>\t<id>" -> since),
// 5 waiting counts (hash: flow -> jobs), 6 later (zset: "<flow>\t<id>" -> when it may be sent), 7 seen (zset: host
// -> last attempt). ARGV: 1 operation, 2 now, 3 host, 4 flow, 5 id, 6 RESEND_MAX_AGE (ms), then the operation's own.
const SCRIPT = `
local now = tonumber(ARGV[2])
local host, flow, id = ARGV[3], ARGV[4], ARGV[5]
local member = flow .. '\\t' .. id
local function field (name) return host .. '\\t' .. name end
local function num (name) return tonumber(redis.call('HGET', KEYS[1], field(name)) or '0') end
local function put (name, value) redis.call('HSET', KEYS[1], field(name), value) end
local function flowOf (m) return string.match(m, '^(.*)\\t[^\\t]*$') end
local function count (key, f, by)
  local left = redis.call('HINCRBY', key, f, by)
  if left <= 0 then redis.call('HDEL', key, f) end
end
local function unwait (m)
  if redis.call('ZREM', KEYS[4], m) == 1 then count(KEYS[5], flowOf(m), -1) end
end
local function wait (m, since)
  if redis.call('ZADD', KEYS[4], 'NX', since, m) == 1 then count(KEYS[5], flowOf(m), 1) end
end
-- Housekeeping, bounded per call: lapsed leases, jobs whose wait began, and waits older than a job may live.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[2], m)
  count(KEYS[3], flowOf(m), -1)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[6], m)
  wait(m, now)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[6]), 'LIMIT', 0, 50)) do unwait(m) end

local op = ARGV[1]
if op == 'waiting' then
  local at = tonumber(ARGV[7])
  if at <= now then wait(member, now) else redis.call('ZADD', KEYS[6], at, member) end
  return {1}
end
if op == 'forget' then
  unwait(member)
  redis.call('ZREM', KEYS[6], member)
  return {1}
end

local leaseMs, attemptMs, interval = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
if op == 'admit' or op == 'now' then
  -- A pause the destination asked for, then the breaker (open; half-open with its one probe out), then the limit.
  -- A job held back by its host waits for nothing else meanwhile: it counts as waiting again from \`at\`.
  local function hold (at, reason)
    if op == 'admit' then
      unwait(member)
      redis.call('ZADD', KEYS[6], at, member)
    end
    return {0, at, reason}
  end
  local paused = num('paused')
  if paused > now then return hold(paused, 'paused') end
  local open = num('open')
  if open > now then return hold(open, 'breaker') end
  local probe = nil
  if open > 0 then
    -- Half-open: one attempt (the probe) decides; the others look again within a second.
    local probing = num('probe')
    if probing > now then return hold(math.min(probing, now + 1000), 'breaker') end
    probe = now + (op == 'now' and attemptMs or leaseMs)
  end
  if interval > 0 then
    local tat = num('tat')
    if tat > now then return hold(tat, 'limited') end
  end
  if op == 'admit' then
    -- The share: the deliveries in flight, and this one, spread over the flows with jobs waiting, after the
    -- flows that wait for nothing more keep what they hold.
    local held = redis.call('HGETALL', KEYS[3])
    local counts = redis.call('HGETALL', KEYS[5])
    local waiting, holding, inFlight, mine = {}, {}, 1, 0
    for i = 1, #counts, 2 do if counts[i] ~= flow then waiting[counts[i]] = true end end
    for i = 1, #held, 2 do
      local n = tonumber(held[i + 1])
      inFlight = inFlight + n
      if held[i] == flow then mine = n elseif not waiting[held[i]] then inFlight = inFlight - n end
    end
    local flows = 1
    for _ in pairs(waiting) do flows = flows + 1 end
    if mine >= math.max(1, math.ceil(inFlight / flows)) then
      wait(member, now)
      return {0, now, 'share', tonumber(redis.call('HGET', KEYS[5], flow) or '0'), mine}
    end
    unwait(member)
    redis.call('ZADD', KEYS[2], now + leaseMs, member)
    redis.call('HINCRBY', KEYS[3], flow, 1)
  end
  if probe then put('probe', probe) end
  if interval > 0 then put('tat', math.max(num('tat'), now) + interval) end
  return {1, probe and 1 or 0}
end

if op == 'settle' then
  if id ~= '' and redis.call('ZREM', KEYS[2], member) == 1 then count(KEYS[3], flow, -1) end
  local kind, pauseUntil, err, probed, nextAt = ARGV[10], tonumber(ARGV[11]), ARGV[12], ARGV[17] == '1', tonumber(ARGV[18])
  -- A job tried again later counts as waiting from then.
  if id ~= '' and nextAt > 0 then redis.call('ZADD', KEYS[6], nextAt, member) end
  if probed then put('probe', 0) end
  if kind == 'none' then return {1} end
  redis.call('ZADD', KEYS[7], now, host)
  put('last_at', now)
  -- Attempts in the current window and the one before it: the listing's recent figures.
  local window = tonumber(ARGV[13])
  local started = num('window')
  if now - started >= window then
    if now - started >= 2 * window then put('prev_n', 0) put('prev_f', 0) else put('prev_n', num('n')) put('prev_f', num('f')) end
    put('window', now - (now - started) % window) put('n', 0) put('f', 0)
  end
  redis.call('HINCRBY', KEYS[1], field('n'), 1)
  if pauseUntil > now then put('paused', pauseUntil) end
  if kind == 'ok' then
    put('failures', 0)
    if num('open') > 0 then
      local failures = num('opened_after')
      put('open', 0) put('probe', 0) put('cooldown', 0)
      return {1, 'closed', failures, 0}
    end
    return {1}
  end
  redis.call('HINCRBY', KEYS[1], field('f'), 1)
  put('last_error', err)
  local failures = redis.call('HINCRBY', KEYS[1], field('failures'), 1)
  local base, max = tonumber(ARGV[14]), tonumber(ARGV[15])
  if num('open') > 0 then
    -- The probe failed: paused again, twice as long. (An attempt that began before the pause changes nothing.)
    if probed then
      local cooldown = math.min(math.max(num('cooldown'), base) * 2, max)
      put('cooldown', cooldown) put('open', now + cooldown)
    end
    return {1}
  end
  if failures >= tonumber(ARGV[16]) then
    put('cooldown', base) put('open', now + base) put('opened_after', failures)
    return {1, 'opened', failures, base}
  end
  return {1}
end

if op == 'list' then
  -- Hosts idle for a day are forgotten; the rest, with their fields and their flows' waits and leases.
  for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now - tonumber(ARGV[7]), 'LIMIT', 0, 100)) do
    redis.call('ZREM', KEYS[7], h)
    for _, name in ipairs({'paused', 'open', 'probe', 'tat', 'last_at', 'window', 'n', 'f', 'prev_n', 'prev_f', 'failures', 'last_error', 'cooldown', 'opened_after'}) do
      redis.call('HDEL', KEYS[1], h .. '\\t' .. name)
    end
  end
  return {redis.call('ZREVRANGE', KEYS[7], 0, 999), redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[5]), redis.call('HGETALL', KEYS[3])}
end
return redis.error_reply('unknown operation ' .. op)
`

type WithScript = RedisClient & { aibillDestinations: (...args: Array<string | number>) => Promise<unknown[]> }

/** RESEND_HOST_LIMITS: `ENTRY=N/s`, comma-separated; the entry as in RESEND_ALLOWED_HOSTS. */
export function parseHostLimits (text: string): HostLimit[] {
  return text.split(',').map((part) => part.trim()).filter((part) => part !== '').map((part) => {
    const match = /^(.+)=\s*(\d+(?:\.\d+)?)\s*\/\s*s$/.exec(part)
    const perSecond = Number(match?.[2])
    if (match === null || !(perSecond > 0) || perSecond > 100_000) throw new Error(`RESEND_HOST_LIMITS: invalid entry "${part}": write ENTRY=N/s (N from 0.001 to 100000), the entry as in RESEND_ALLOWED_HOSTS`)
    const [entry] = parseAllowList('RESEND_HOST_LIMITS', (match[1] as string).trim()) as [PolicyEntry]
    return { entry, perSecond }
  })
}

// The most specific entry wins: a host (or origin) over a suffix over "*".
const SPECIFICITY: Record<PolicyEntry['kind'], number> = { host: 0, suffix: 1, any: 2 }

/** The limit that applies to a host (host and port), per second, or undefined: remembered for 10,000 hosts. */
export function createLimitFinder (hostLimits: HostLimit[]): (host: string) => number | undefined {
  const limits = [...hostLimits].sort((a, b) => SPECIFICITY[a.entry.kind] - SPECIFICITY[b.entry.kind])
  const cache = new Map<string, number | undefined>()
  return function limitFor (host) {
    if (!cache.has(host)) {
      if (cache.size > 10_000) cache.clear()
      // The host as a URL of each scheme an entry may name: an entry limits the destinations it would allow.
      const found = limits.find(({ entry }) => ['https', 'http'].some((scheme) => checkDestination(`${scheme}://${host}/`, [entry]).allowed))
      cache.set(host, found?.perSecond)
    }
    return cache.get(host)
  }
}

export function createDestinations (options: DestinationsOptions): Destinations {
  const { client } = options
  client.defineCommand('aibillDestinations', { numberOfKeys: 7, lua: SCRIPT })
  const limitFor = createLimitFinder(options.limits)
  const keysOf = (tag: string): string[] => ['hosts', 'leases', 'held', 'waiting', 'waiting-counts', 'later', 'seen'].map((name) => `${tag}:dest:${name}`)
  const flowOf = (owner: string, host: string): string => `${owner}>${host}`
  async function run (host: string, op: string, flow = '', id = '', ...rest: Array<string | number>): Promise<unknown[]> {
    return await (client as WithScript).aibillDestinations(...keysOf(options.tagFor(host)), op, Date.now(), host, flow, id, options.maxAgeMs, ...rest)
  }
  const interval = (host: string): number => { const limit = limitFor(host); return limit === undefined ? 0 : 1000 / limit }
  const decide = async (op: 'admit' | 'now', host: string, flow = '', id = ''): Promise<unknown[]> =>
    await run(host, op, flow, id, options.leaseMs, options.attemptMs, interval(host))

  return {
    async waiting (id, owner, host, at) { await run(host, 'waiting', flowOf(owner, host), id, Math.round(at)) },
    async forget (id, owner, host) { await run(host, 'forget', flowOf(owner, host), id) },
    async admit (id, owner, host) {
      // (A hold for the share comes with the flow's waiting jobs and the deliveries it holds.)
      const [go, at, reason, waiting, holding] = await decide('admit', host, flowOf(owner, host), id) as [number, number, HoldReason, number, number]
      if (go === 1) return { go: true, probe: at === 1 }
      if (reason === 'share') {
        // Back when this flow's next slot may be free: its waiting jobs spread over a tenth of a second per job
        // and slot, between half a second and ten seconds, so that a long backlog is not turned over every moment
        // (each turn costs Redis a script) nor kept away long once the other flows are served.
        const spread = Math.min(10_000, Math.max(500, (waiting / Math.max(1, holding)) * 100))
        return { go: false, at: at + spread * (0.5 + Math.random()), reason }
      }
      // Jobs waiting for the same end of a pause or a limit's slot come back spread over a second, not at once.
      return { go: false, at: at + Math.random() * (reason === 'limited' ? Math.max(1000, interval(host) * 4) : 1000), reason }
    },
    async admitNow (host) {
      const [go, at, reason] = await decide('now', host) as [number, number, HoldReason]
      if (go === 1) return { probe: at === 1 }
      const retryAfterSeconds = Math.max(1, Math.ceil((at - Date.now()) / 1000))
      if (reason === 'limited') throw new ServiceError('RATE_LIMITED', { reason: 'destination_limit', host, limit: limitFor(host), retry_after_seconds: retryAfterSeconds, variable: 'RESEND_HOST_LIMITS' })
      if (reason === 'paused') throw new ServiceError('RATE_LIMITED', { reason: 'destination_rate_limited', host, until: new Date(at).toISOString(), retry_after_seconds: retryAfterSeconds })
      throw new ServiceError('SERVICE_UNAVAILABLE', { reason: 'destination_paused', host, until: new Date(at).toISOString(), retry_after_seconds: retryAfterSeconds })
    },
    async settle (host, outcome, { id = '', owner = '', probe, nextAt }) {
      const answer = await run(host, 'settle', id === '' ? '' : flowOf(owner, host), id, options.leaseMs, options.attemptMs, interval(host),
        outcome.kind, Math.round(outcome.pauseUntil ?? 0), outcome.error ?? '', RECENT_WINDOW_MS, options.breakerCooldownMs, MAX_COOLDOWN_MS,
        options.breakerFailures, probe ? 1 : 0, Math.round(nextAt ?? 0)) as [number, string?, number?, number?]
      if (answer[1] === 'opened' || answer[1] === 'closed') options.onBreaker?.(host, answer[1], { failures: answer[2] as number, cooldownMs: answer[3] as number, error: outcome.error })
    },
    async list (owner) {
      const now = Date.now()
      const views: DestinationView[] = []
      for (const tag of options.tags) {
        const [hosts, fields, counts, held] = await (client as WithScript).aibillDestinations(...keysOf(tag), 'list', now, '', '', '', options.maxAgeMs, FORGOTTEN_AFTER_MS) as [string[], string[], string[], string[]]
        const byField = new Map<string, string>()
        for (let i = 0; i < fields.length; i += 2) byField.set(fields[i] as string, fields[i + 1] as string)
        // Each flow is "<owner>><host>": the host's sums over every caller, or over one.
        const sumFor = (pairs: string[], host: string): number => {
          let sum = 0
          for (let i = 0; i < pairs.length; i += 2) {
            const flow = pairs[i] as string
            if (owner === null ? flow.endsWith(`>${host}`) : flow === flowOf(owner, host)) sum += Number(pairs[i + 1])
          }
          return sum
        }
        // The hosts with attempts, then those with jobs waiting or in flight that have none yet.
        const flowHosts = [...counts, ...held].filter((_value, index) => index % 2 === 0).map((flow) => flow.slice(flow.lastIndexOf('>') + 1))
        for (const host of new Set([...hosts, ...flowHosts])) {
          const waiting = sumFor(counts, host)
          const inFlight = sumFor(held, host)
          if (owner !== null && waiting + inFlight === 0) continue
          const value = (name: string): number => Number(byField.get(`${host}\t${name}`) ?? 0)
          const breakerUntil = value('open') > now ? value('open') : value('open') > 0 ? value('probe') : 0
          const pausedUntil = Math.max(value('paused'), breakerUntil)
          const inWindow = now - value('window') < RECENT_WINDOW_MS
          const attempts = (inWindow ? value('n') : 0) + value('prev_n')
          const failed = (inWindow ? value('f') : 0) + value('prev_f')
          const limit = limitFor(host) ?? null
          views.push({
            host,
            state: pausedUntil > now ? 'paused' : value('tat') > now ? 'limited' : 'ok',
            paused_until: pausedUntil > now ? new Date(pausedUntil).toISOString() : null,
            paused_by: pausedUntil <= now ? null : breakerUntil >= value('paused') ? 'breaker' : 'rate_limited',
            limit_per_second: limit,
            recent: { attempts, failed, failure_rate: attempts === 0 ? 0 : Math.round((failed / attempts) * 1000) / 1000 },
            consecutive_failures: value('failures'),
            last_error: byField.get(`${host}\tlast_error`) ?? null,
            last_attempt_at: value('last_at') > 0 ? new Date(value('last_at')).toISOString() : null,
            waiting,
            in_flight: inFlight
          })
        }
      }
      return views.sort((a, b) => b.recent.attempts - a.recent.attempts || a.host.localeCompare(b.host))
    }
  }
}

/** RESEND_DESTINATION_CONTROLS=off: first come, first served, and nothing held back or counted (to compare). */
export const NO_DESTINATION_CONTROLS: Destinations = {
  waiting: async () => {},
  forget: async () => {},
  admit: async () => ({ go: true, probe: false }),
  admitNow: async () => ({ probe: false }),
  settle: async () => {},
  list: async () => []
}
