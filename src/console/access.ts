import { createHash } from 'node:crypto'
import type { ConsoleAccess as CallerConsoleAccess } from '../lib/coze/index.js'
import { matchKeyDigest } from '../lib/http/index.js'

/**
 * Who may open the console, and the session a sign-in gives: CONSOLE_TOKEN signs in as the administrator; in
 * broker mode a caller with `console` signs in with its own key. A session names who signed in and until when;
 * the cookie that carries it is signed (@fastify/cookie), and it is read again on every request against the
 * configuration, so a caller whose access was taken away loses its session with the next start.
 */
export interface ConsoleViewer {
  /** The caller's name; null for the administrator of CONSOLE_TOKEN. */
  name: string | null
  /** Sees every caller's jobs and every app; otherwise only its own. */
  admin: boolean
  /** The Coze and Feishu apps it sees; null for all. */
  apps: ReadonlySet<string> | null
  feishuApps: ReadonlySet<string> | null
}

export interface ConsoleCaller {
  name: string
  console: CallerConsoleAccess
  apps: readonly string[]
  feishuApps: readonly string[]
}

export interface ConsoleAccess {
  /** The viewer a presented token or caller key signs in as, compared in constant time; null for none. */
  signIn (presented: string): ConsoleViewer | null
  /** The session's value, to be signed into the cookie. */
  session (viewer: ConsoleViewer, now: number): string
  /** The viewer of a session value whose signature was checked; null once expired or no longer allowed. */
  viewerOf (value: string, now: number): ConsoleViewer | null
}

export function createConsoleAccess (options: {
  token: string | undefined
  /** Broker mode: the caller a key belongs to (constant time), or null. */
  authenticate: ((key: string) => { name: string } | null) | null
  callers: readonly ConsoleCaller[]
  sessionMinutes: number
}): ConsoleAccess {
  // Compared as the caller keys are: SHA-256 digests, in constant time.
  const tokenDigests = options.token === undefined ? [] : [createHash('sha256').update(options.token).digest()]
  const allowed = new Map(options.callers.filter((caller) => caller.console !== false).map((caller) => [caller.name, caller]))
  const admin: ConsoleViewer = { name: null, admin: true, apps: null, feishuApps: null }
  const viewerOfCaller = (name: string): ConsoleViewer | null => {
    const caller = allowed.get(name)
    if (caller === undefined) return null
    return caller.console === 'admin'
      ? { name, admin: true, apps: null, feishuApps: null }
      : { name, admin: false, apps: new Set(caller.apps), feishuApps: new Set(caller.feishuApps) }
  }
  const lifetime = options.sessionMinutes * 60_000
  return {
    signIn (presented) {
      if (matchKeyDigest(tokenDigests, presented) === 0) return admin
      const caller = options.authenticate?.(presented) ?? null
      return caller === null ? null : viewerOfCaller(caller.name)
    },
    session (viewer, now) {
      return `${viewer.name ?? ''}.${now + lifetime}`
    },
    viewerOf (value, now) {
      const match = /^([a-z0-9-]{0,64})\.(\d{13})$/.exec(value)
      if (match === null) return null
      const expires = Number(match[2])
      // Expired, or further ahead than a session lasts (a clock moved back on one instance).
      if (expires <= now || expires > now + lifetime) return null
      const name = match[1] as string
      if (name === '') return tokenDigests.length === 0 ? null : admin
      return viewerOfCaller(name)
    }
  }
}
