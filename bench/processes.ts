import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { freePort } from '../test/fixtures/ports.js'

export { freePort }

/** The processes of the bench and the soak: the service, the mock upstreams, the ceilings. */

export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

export interface Child {
  process: ChildProcess
  stop: () => Promise<void>
}

/**
 * Starts a node process (with `flags`, and after `imports`, each given to --import), waits for the first line of its
 * stdout that is a JSON handshake, and drains the rest.
 */
export async function startNode (script: string, env: Record<string, string>, handshake: (line: string) => unknown, imports: string[] = [], flags: string[] = []): Promise<{ child: Child, value: unknown }> {
  const child = spawn(process.execPath, [...flags, ...imports.flatMap((file) => ['--import', `./${file}`]), script], { cwd: ROOT, env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'inherit'] })
  let buffer = ''
  const value = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`${script} did not start`)) }, 20_000)
    child.stdout?.on('data', (chunk: Buffer) => {
      buffer += chunk.toString()
      for (const line of buffer.split('\n')) {
        const found = handshake(line)
        if (found !== undefined) {
          clearTimeout(timer)
          buffer = ''
          resolve(found)
          return
        }
      }
    })
    child.on('exit', (code) => { reject(new Error(`${script} exited with ${String(code)}`)) })
  })
  child.stdout?.removeAllListeners('data')
  child.stdout?.resume()
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    await Promise.race([exited, sleep(5000).then(() => child.kill('SIGKILL'))])
  }
  return { child: { process: child, stop }, value }
}

export function jsonLine<T> (line: string, key: string): T | undefined {
  try {
    const value = JSON.parse(line) as Record<string, unknown>
    return key in value && !('level' in value) ? value as T : undefined
  } catch {
    return undefined
  }
}

/** Resident memory of a process now, from /proc (Linux), in MB. */
export function rssMb (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return kb / 1024
}

function statCpuMs (path: string): number {
  const fields = readFileSync(path, 'utf8').split(') ')[1]?.split(' ') ?? []
  return (Number(fields[11]) + Number(fields[12])) * 10
}

/** CPU time a process has used so far (user + system, every thread), in ms, from /proc. */
export function cpuMs (pid: number): number {
  return statCpuMs(`/proc/${pid}/stat`)
}

/** CPU time of a process's main thread (its event loop) so far, in ms: the thread pool's signing is not in it. */
export function mainThreadCpuMs (pid: number): number {
  return statCpuMs(`/proc/${pid}/task/${pid}/stat`)
}

