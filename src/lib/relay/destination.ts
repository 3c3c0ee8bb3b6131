import { checkDestination, type PolicyEntry, ServiceError } from '../http/index.js'

/** The destination policy (RESEND_ALLOWED_HOSTS), as a caller meets it: allowed, or refused saying why. */

// What each rule of the policy means to the caller who met it.
const REFUSALS: Record<string, { reason: string, detail: string }> = {
  host: { reason: 'host', detail: 'the host is not in RESEND_ALLOWED_HOSTS' },
  scheme: { reason: 'scheme', detail: 'only https, unless RESEND_ALLOWED_HOSTS names the destination as an http:// origin' },
  port: { reason: 'port', detail: 'the port is not allowed: RESEND_ALLOWED_HOSTS allows the scheme\'s port, or the port an entry names' },
  address: { reason: 'address', detail: 'the host is an address that is not public: RESEND_ALLOWED_HOSTS must name that exact address to allow it' },
  resolved: { reason: 'address', detail: 'the host resolves to an address that is not public: RESEND_ALLOWED_HOSTS must name that exact host to allow it' },
  userinfo: { reason: 'userinfo', detail: 'a user name or password in the URL is not allowed' }
}

export function destinationRefused (rule: string): ServiceError {
  const refusal = REFUSALS[rule] as { reason: string, detail: string }
  return new ServiceError('DESTINATION_NOT_ALLOWED', { ...refusal, variable: 'RESEND_ALLOWED_HOSTS' })
}

/** Where the request may go, or the refusal that names the rule it broke. */
export function allowedDestination (location: string, allowList: PolicyEntry[]): { url: URL, host: string, allowPrivate: boolean } {
  const decision = checkDestination(location, allowList)
  if (!decision.allowed) {
    if (decision.reason === 'url') throw new ServiceError('VALIDATION_FAILED', { field: 'location', reason: 'location must be an absolute http(s) URL' })
    throw destinationRefused(decision.reason)
  }
  return { url: decision.url, host: decision.host, allowPrivate: decision.allowPrivate }
}
