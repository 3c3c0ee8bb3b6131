import { promises as dns, type LookupAddress, type LookupOptions } from 'node:dns'
import ipaddr from 'ipaddr.js'
import { Agent } from 'undici'

/**
 * Which URLs the service may contact on a caller's behalf (the resend relay, the Augment token exchange).
 * Entries: `host`, `*.suffix`, `host:port`, an explicit origin `http://host:port` / `https://host:port`, or `*`.
 */
export interface PolicyEntry {
  /** As written, for logs and messages. */
  source: string
  kind: 'any' | 'suffix' | 'host'
  /** Lower-case host name or IP literal (IPv6 without brackets); for `suffix`, the part after `*.`. */
  host: string
  protocol: 'https:' | 'http:'
  /** The port the entry names; undefined means the protocol's default only. */
  port: number | undefined
}

export class PolicyConfigError extends Error {
  constructor (variable: string, entry: string, why: string) {
    super(`${variable}: invalid entry "${entry}": ${why}`)
    this.name = 'PolicyConfigError'
  }
}

const HOST_NAME = /^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$/

function normalizeHost (host: string): string {
  const lower = host.toLowerCase().replace(/\.$/, '')
  return lower.startsWith('[') && lower.endsWith(']') ? lower.slice(1, -1) : lower
}

function parseEntry (variable: string, raw: string): PolicyEntry {
  const source = raw.trim()
  if (source === '*') return { source, kind: 'any', host: '*', protocol: 'https:', port: undefined }
  const explicit = /^(https?):\/\//i.exec(source)
  let url: URL
  try {
    url = new URL(explicit === null ? `https://${source.replace(/^\*\./, 'wildcard.')}` : source)
  } catch {
    throw new PolicyConfigError(variable, source, 'not a host, *.suffix, host:port or http(s)://host:port')
  }
  if (url.username !== '' || url.password !== '' || (url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== '') {
    throw new PolicyConfigError(variable, source, 'only a scheme, a host and a port are allowed')
  }
  const wildcard = explicit === null && source.startsWith('*.')
  const host = wildcard ? normalizeHost(url.hostname).replace(/^wildcard(\.|$)/, '') : normalizeHost(url.hostname)
  if (!ipaddr.isValid(host) && !HOST_NAME.test(host)) throw new PolicyConfigError(variable, source, 'not a valid host name')
  return {
    source,
    kind: wildcard ? 'suffix' : 'host',
    host,
    protocol: url.protocol as 'https:' | 'http:',
    port: url.port === '' ? undefined : Number(url.port)
  }
}

/** Parses a comma-separated allow-list; an invalid entry stops the start with a message naming the variable. */
export function parseAllowList (variable: string, list: string): PolicyEntry[] {
  return list.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '').map((entry) => parseEntry(variable, entry))
}

/** True only for globally routable unicast addresses; IPv4-mapped and other embedded forms are judged as IPv4. */
export function isPublicAddress (address: string): boolean {
  if (!ipaddr.isValid(address)) return false
  let parsed = ipaddr.parse(address)
  if (parsed.kind() === 'ipv6' && (parsed as ipaddr.IPv6).isIPv4MappedAddress()) parsed = (parsed as ipaddr.IPv6).toIPv4Address()
  return parsed.range() === 'unicast'
}

export type Refusal = 'scheme' | 'userinfo' | 'host' | 'port' | 'address' | 'url'

export type Decision =
  | { allowed: true, url: URL, host: string, allowPrivate: boolean }
  | { allowed: false, reason: Refusal }

function defaultPort (protocol: string): number {
  return protocol === 'https:' ? 443 : 80
}

function matches (entry: PolicyEntry, host: string): boolean {
  if (entry.kind === 'any') return true
  if (entry.kind === 'suffix') return host.endsWith(`.${entry.host}`)
  return host === entry.host
}

/**
 * Decides from the URL alone. The addresses a host name resolves to are checked again when connecting
 * (see createPolicyLookup), so a name cannot pass here and reach a private address there.
 */
export function checkDestination (target: string | URL, entries: PolicyEntry[]): Decision {
  let url: URL
  try {
    url = typeof target === 'string' ? new URL(target) : target
  } catch {
    return { allowed: false, reason: 'url' }
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return { allowed: false, reason: 'scheme' }
  if (url.username !== '' || url.password !== '') return { allowed: false, reason: 'userinfo' }
  const host = normalizeHost(url.hostname)
  const port = url.port === '' ? defaultPort(url.protocol) : Number(url.port)
  const candidates = entries.filter((entry) => matches(entry, host))
  if (candidates.length === 0) return { allowed: false, reason: 'host' }
  const schemeOk = candidates.filter((entry) => entry.protocol === url.protocol)
  if (schemeOk.length === 0) return { allowed: false, reason: 'scheme' }
  const entry = schemeOk.find((candidate) => (candidate.port ?? defaultPort(candidate.protocol)) === port)
  if (entry === undefined) return { allowed: false, reason: 'port' }
  // Only an entry that names this very host may reach a private address; wildcards never do.
  const allowPrivate = entry.kind === 'host'
  if (ipaddr.isValid(host) && !allowPrivate && !isPublicAddress(host)) return { allowed: false, reason: 'address' }
  return { allowed: true, url, host, allowPrivate }
}

export class DestinationRefusedError extends Error {
  readonly code = 'ERR_DESTINATION_NOT_ALLOWED'
  constructor (readonly host: string) {
    super(`${host} resolves to an address that is not public`)
    this.name = 'DestinationRefusedError'
  }
}

export type Resolver = (hostname: string) => Promise<LookupAddress[]>

export const systemResolver: Resolver = async (hostname) => await dns.lookup(hostname, { all: true, verbatim: true })

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void

/**
 * A `lookup` for net/tls.connect (through undici's connect options): the socket connects only to addresses
 * that passed the check here, which closes the gap DNS rebinding would use.
 */
export function createPolicyLookup (allowPrivate: boolean, resolver: Resolver = systemResolver) {
  return (hostname: string, options: LookupOptions, callback: LookupCallback): void => {
    resolver(hostname).then((addresses) => {
      if (addresses.length === 0) throw Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' })
      if (!allowPrivate && addresses.some(({ address }) => !isPublicAddress(address))) throw new DestinationRefusedError(hostname)
      const wanted = options.family === 4 || options.family === 6 ? addresses.filter(({ family }) => family === options.family) : addresses
      const usable = wanted.length > 0 ? wanted : addresses
      if (options.all === true) callback(null, usable)
      else callback(null, (usable[0] as LookupAddress).address, (usable[0] as LookupAddress).family)
    }).catch((err: NodeJS.ErrnoException) => { callback(err, '') })
  }
}

/** Whether a failure came from the connect-time address check. */
export function isDestinationRefusal (err: unknown): boolean {
  let current = err
  // A few levels suffice (undici wraps once or twice); the bound also stops a cause that points at itself.
  for (let depth = 0; depth < 5 && typeof current === 'object' && current !== null; depth++) {
    if (current instanceof DestinationRefusedError) return true
    current = (current as { cause?: unknown }).cause
  }
  return false
}

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
