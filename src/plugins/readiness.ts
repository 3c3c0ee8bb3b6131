import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyInstance {
    readiness: Readiness
  }
}

/** `ok`, `down`, or `not_configured: VARIABLE, ...` naming what a served route lacks. */
export type CheckStatus = 'ok' | 'down' | `not_configured: ${string}`

/** The status of a route that needs configuration: ok, or what is missing. */
export function configurationStatus (missing: string[]): CheckStatus {
  return missing.length === 0 ? 'ok' : `not_configured: ${missing.join(', ')}`
}

/** A dependency check: resolves to its status; a throw or a hang past the timeout counts as down. */
export type ReadinessCheck = () => Promise<CheckStatus>

export interface Readiness {
  add (name: string, check: ReadinessCheck): void
  /** Runs every check at once; ready when every one is ok. */
  check (): Promise<{ ready: boolean, checks: Record<string, CheckStatus> }>
}

export function createReadiness (timeoutMs: number): Readiness {
  const checks = new Map<string, ReadinessCheck>()
  async function run (check: ReadinessCheck): Promise<CheckStatus> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<CheckStatus>((resolve) => { timer = setTimeout(resolve, timeoutMs, 'down') })
    try {
      return await Promise.race([check().catch(() => 'down' as const), timeout])
    } finally {
      clearTimeout(timer)
    }
  }
  return {
    add (name, check) { checks.set(name, check) },
    async check () {
      const entries = await Promise.all([...checks].map(async ([name, check]) => [name, await run(check)] as const))
      return { ready: entries.every(([, status]) => status === 'ok'), checks: Object.fromEntries(entries) }
    }
  }
}

/** Where each plugin registers the dependencies /ready reports on. */
export default fp(async function readiness (fastify) {
  fastify.decorate('readiness', createReadiness(2000))
}, { name: 'readiness', fastify: '5.x' })
