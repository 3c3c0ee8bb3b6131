/**
 * A dependency check: resolves to `ok` or a word saying what is wrong, perhaps followed by `: why`. A throw or a
 * hang past the timeout is `down`. Ready: `ok`; `degraded: ...` (working with less than it should: each instance
 * on its own cache, or queued delivery refused while delivery now goes on); `off: ...` (an optional feature not
 * configured, saying what it lacks). Not ready: `down: ...` and `not_configured: ...`.
 */
export type ReadinessCheck = () => Promise<string>

export interface Readiness {
  add (name: string, check: ReadinessCheck): void
  /** Runs every check at once; ready when every one is ok, degraded (working, with less than it should) or off. */
  check (): Promise<{ ready: boolean, checks: Record<string, string> }>
}

/** The status of a served route that needs configuration: ok, or the variables it lacks. */
export function configurationStatus (missing: string[]): string {
  return missing.length === 0 ? 'ok' : `not_configured: ${missing.join(', ')}`
}

export function createReadiness (timeoutMs: number): Readiness {
  const checks = new Map<string, ReadinessCheck>()
  async function run (check: ReadinessCheck): Promise<string> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<string>((resolve) => { timer = setTimeout(resolve, timeoutMs, 'down') })
    try {
      return await Promise.race([check().catch(() => 'down'), timeout])
    } finally {
      clearTimeout(timer)
    }
  }
  return {
    add (name, check) { checks.set(name, check) },
    async check () {
      const entries = await Promise.all([...checks].map(async ([name, check]) => [name, await run(check)] as const))
      return { ready: entries.every(([, status]) => status === 'ok' || /^(degraded|off)\b/.test(status)), checks: Object.fromEntries(entries) }
    }
  }
}
