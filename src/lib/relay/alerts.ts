import { createHmac } from 'node:crypto'
import { Agent } from 'undici'
import { readBodyLimited, USER_AGENT, withDeadline } from '../http/index.js'
import type { RedisClient } from '../redis/index.js'

/**
 * Alerts where the team already looks: a Feishu or Lark custom bot (RESEND_ALERT_WEBHOOK), told when a job fails
 * for good and when a destination's breaker opens or closes. Grouped: at most one message per destination per
 * RESEND_ALERT_INTERVAL across instances (a key in Redis decides who sends), with what happened meanwhile counted
 * in it. A webhook that fails is logged, and never touches a delivery.
 */

export type AlertEvent =
  | { kind: 'failed', host: string, id: string, destination: string, error: string, attempts: number, statusPath: string }
  | { kind: 'opened', host: string, failures: number, cooldownMs: number, error?: string | undefined }
  | { kind: 'closed', host: string }

export interface AlertsOptions {
  /** RESEND_ALERT_WEBHOOK: the bot's webhook, whose path is its secret (never logged). */
  webhook: URL
  /** RESEND_ALERT_SECRET: when the bot checks signatures. */
  secret?: string | undefined
  /** RESEND_ALERT_INTERVAL */
  intervalMs: number
  /** The shared client (its key prefix applies). */
  redis: RedisClient
  timeoutMs: number
  /** A message the bot did not take: why (never the webhook's path). */
  onFailure: (reason: string) => void
}

export interface Alerts {
  note (event: AlertEvent): void
  close (): Promise<void>
}

const TAG = '{resend-alerts}'
/** What one destination's pending counts may hold at most before the oldest details are dropped. */
const MAX_TEXT = 2000

/** Feishu's custom-bot signature: base64 of HMAC-SHA256 keyed with `timestamp + "\n" + secret`, over nothing. */
export function feishuBotSign (timestamp: number, secret: string): string {
  return createHmac('sha256', `${timestamp}\n${secret}`).update('').digest('base64')
}

/** The text of one grouped message, from a destination's pending counts (a Redis hash). */
export function alertText (host: string, pending: Record<string, string>, intervalMs: number): string {
  const minutes = Math.max(1, Math.round(intervalMs / 60_000))
  const lines = [`【重发投递告警】${host}`]
  const failed = Number(pending.failed ?? 0)
  if (Number(pending.opened ?? 0) > 0) lines.push(`目标已暂停：连续 ${pending.opened_failures ?? '?'} 次失败（${pending.opened_error ?? '未知'}），${Math.round(Number(pending.opened_cooldown ?? 0) / 1000)} 秒后试探`)
  if (failed > 0) {
    lines.push(`${minutes} 分钟内 ${failed} 个任务最终失败`)
    lines.push(`最近一个：${pending.last_error ?? '未知'}，尝试 ${pending.last_attempts ?? '?'} 次，目标 ${pending.last_destination ?? host}`)
    lines.push(`状态：GET ${pending.last_status ?? ''}`)
  }
  if (Number(pending.closed ?? 0) > 0) lines.push('目标已恢复：试探成功，投递继续')
  return lines.join('\n').slice(0, MAX_TEXT)
}

export function createAlerts (options: AlertsOptions): Alerts {
  const { redis } = options
  // Its own connections, closed with it (an aborted request may leave a spare one open: nodejs/undici#5845).
  const agent = new Agent({ connections: 4, keepAliveTimeout: 10_000 })
  const flushes = new Map<string, NodeJS.Timeout>()
  const sending = new Set<Promise<void>>()
  let closed = false

  async function post (text: string): Promise<void> {
    const body: Record<string, unknown> = { msg_type: 'text', content: { text } }
    if (options.secret !== undefined) {
      const timestamp = Math.floor(Date.now() / 1000)
      body.timestamp = String(timestamp)
      body.sign = feishuBotSign(timestamp, options.secret)
    }
    const where = options.webhook.host
    try {
      await withDeadline(options.timeoutMs, async (signal) => {
        const response = await agent.request({ origin: options.webhook.origin, path: options.webhook.pathname + options.webhook.search, method: 'POST', headers: { 'content-type': 'application/json', 'user-agent': USER_AGENT }, body: JSON.stringify(body), signal })
        const raw = await readBodyLimited(response.body, 65_536)
        let code: unknown
        try { code = (JSON.parse(raw.toString('utf8')) as { code?: unknown }).code } catch { code = undefined }
        if (response.statusCode !== 200 || code !== 0) throw new Error(`${where} answered ${response.statusCode}${code === undefined ? '' : ` with code ${String(code)}`}`)
      })
    } catch (err) {
      const { code, name, message } = err as NodeJS.ErrnoException
      options.onFailure(message.startsWith(where) ? message : `${where}: ${typeof code === 'string' ? code : name}`)
    }
  }

  /** Sends the destination's pending counts if this instance wins its interval; otherwise looks again at its end. */
  async function flush (host: string): Promise<void> {
    const won = await redis.set(`${TAG}:sent:${host}`, '1', 'PX', options.intervalMs, 'NX')
    if (won === null) {
      const left = await redis.pttl(`${TAG}:sent:${host}`)
      schedule(host, Math.max(50, left))
      return
    }
    const [[, pending]] = await redis.multi().hgetall(`${TAG}:pending:${host}`).del(`${TAG}:pending:${host}`).exec() as [[Error | null, Record<string, string>]]
    if (Object.keys(pending).length === 0) return
    await post(alertText(host, pending, options.intervalMs))
  }

  function schedule (host: string, ms: number): void {
    if (closed || flushes.has(host)) return
    flushes.set(host, setTimeout(() => {
      flushes.delete(host)
      track(flush(host))
    }, ms).unref())
  }

  function track (work: Promise<void>): void {
    const tracked = work.catch((err: unknown) => { options.onFailure(`Redis: ${(err as Error).message}`) }).finally(() => { sending.delete(tracked) })
    sending.add(tracked)
  }

  return {
    note (event) {
      if (closed) return
      const key = `${TAG}:pending:${event.host}`
      const write = redis.multi()
      write.hincrby(key, event.kind, 1)
      if (event.kind === 'failed') write.hset(key, 'last_error', event.error, 'last_attempts', event.attempts, 'last_destination', event.destination, 'last_status', `${event.statusPath}${event.id}`)
      if (event.kind === 'opened') write.hset(key, 'opened_failures', event.failures, 'opened_cooldown', event.cooldownMs, 'opened_error', event.error ?? '')
      // Pending counts outlive no interval by much: nobody left to send them, they lapse.
      write.pexpire(key, options.intervalMs * 3)
      track(write.exec().then(async () => { await flush(event.host) }))
    },
    async close () {
      closed = true
      for (const timer of flushes.values()) clearTimeout(timer)
      flushes.clear()
      await Promise.all([...sending])
      await agent.destroy()
    }
  }
}
