import { Command } from 'ioredis'
import type { RedisClient } from './connection.js'

export interface RedisBreakerOptions {
  /** Command timeouts in a row after which Redis counts as down. */
  failures?: number
  /** The first pause before Redis is tried again; it doubles while the trial fails, up to maxBackoffMs. */
  backoffMs?: number
  maxBackoffMs?: number
  /** Told when Redis starts and stops counting as down. */
  onChange?: (open: boolean) => void
}

export interface RedisBreaker {
  /** Whether Redis counts as down: every command fails at once, without being sent. */
  readonly open: boolean
  /** Ends the trial timer. */
  close (): void
}

/** The error a command gets while the breaker is open: a failure of Redis, which each user meets with its fallback. */
export class RedisUnavailableError extends Error {
  constructor () {
    super('Redis counts as down (its commands timed out); tried again shortly')
    this.name = 'RedisUnavailableError'
  }
}

const isTimeout = (err: unknown): boolean => (err as Error | undefined)?.message === 'Command timed out'

/**
 * A circuit breaker in front of every command of one ioredis client, so that the token cache, the OAuth states and
 * the rate limiter all see the same truth. A Redis that stops answering without closing its connection would
 * otherwise cost every command its full timeout, for as long as it stays silent. After `failures` timeouts in a
 * row, commands fail at once for a back-off period; then one PING is sent, and its answer closes the breaker.
 */
export function guardRedis (client: RedisClient, options: RedisBreakerOptions = {}): RedisBreaker {
  const { failures = 3, backoffMs = 500, maxBackoffMs = 4000 } = options
  let timeouts = 0
  let open = false
  let backoff = backoffMs
  let trial: NodeJS.Timeout | undefined
  let closed = false
  const send = client.sendCommand.bind(client)

  const setOpen = (value: boolean): void => {
    if (open !== value) options.onChange?.(value)
    open = value
  }
  const scheduleTrial = (): void => {
    if (closed) return
    trial = setTimeout(() => {
      // The trial goes around the breaker: it is the one command allowed while open.
      const ping = new Command('ping', [])
      void send(ping)
      ping.promise.then(() => {
        timeouts = 0
        backoff = backoffMs
        setOpen(false)
      }, () => {
        backoff = Math.min(backoff * 2, maxBackoffMs)
        scheduleTrial()
      })
    }, backoff)
    trial.unref()
  }

  // A new connection is a new start; and while it is made, its own handshake (AUTH, SELECT, INFO) must pass.
  client.on('ready', () => {
    timeouts = 0
    backoff = backoffMs
    clearTimeout(trial)
    setOpen(false)
  })

  // (A cluster passes the node a command is for as a third argument: everything after the command goes on as it is.)
  client.sendCommand = (command: Command, ...rest: unknown[]) => {
    if (open && client.status === 'ready') {
      command.reject(new RedisUnavailableError())
      return command.promise
    }
    const result = (send as (command: Command, ...rest: unknown[]) => unknown)(command, ...rest)
    command.promise.then(() => { timeouts = 0 }, (err: unknown) => {
      if (!isTimeout(err) || open) return
      if (++timeouts >= failures) {
        setOpen(true)
        scheduleTrial()
      }
    })
    return result
  }

  return {
    get open () { return open },
    close () {
      closed = true
      clearTimeout(trial)
    }
  }
}
