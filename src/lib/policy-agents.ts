import { Agent } from 'undici'
import { createPolicyLookup, type Resolver } from './upstream-policy.js'

export interface PolicyAgents {
  /** Connections for one decision of the upstream policy: private addresses only when the entry named the host. */
  dispatcherFor (allowPrivate: boolean): Agent
  close (): Promise<void>
}

export interface PolicyAgentsOptions {
  timeoutMs: number
  resolver?: Resolver | undefined
  connections?: number
}

/**
 * Two connection pools whose sockets connect only to addresses the policy's lookup accepted: one for wildcard
 * entries (public addresses only), one for entries naming their exact host. Keeping them apart means a
 * connection opened under one rule is never reused under the other.
 */
export function createPolicyAgents ({ timeoutMs, resolver, connections = 32 }: PolicyAgentsOptions): PolicyAgents {
  const agentFor = (allowPrivate: boolean): Agent => new Agent({
    connections,
    keepAliveTimeout: 10_000,
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    connect: { timeout: Math.min(timeoutMs, 10_000), lookup: createPolicyLookup(allowPrivate, resolver) }
  })
  const publicOnly = agentFor(false)
  const exactHost = agentFor(true)
  return {
    dispatcherFor: (allowPrivate) => (allowPrivate ? exactHost : publicOnly),
    async close () { await Promise.all([publicOnly.close(), exactHost.close()]) }
  }
}
