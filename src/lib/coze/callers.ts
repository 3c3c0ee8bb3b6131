import type { IncomingHttpHeaders } from 'node:http'
import { ServiceError, type ApiKeyVerifier } from '../http/index.js'
import type { Broker, BrokerCaller, BrokerRoute } from './broker.js'

/** Who is calling: a key of EXPECTED_COZE_API_KEY (single-app mode), a caller of the apps document, or a refusal. */
export type CallerDecision =
  | { shared: { key: string, index: number } }
  | { caller: BrokerCaller }
  | { refused: ServiceError }

/** X-API-Key, else `Authorization: Bearer`; undefined when neither is sent. */
export function headerKey (headers: IncomingHttpHeaders): string | undefined {
  // (Node joins a repeated X-API-Key into one string, "a, b": a key sent twice matches no key.)
  return headers['x-api-key'] as string | undefined ?? (headers.authorization?.startsWith('Bearer ') === true ? headers.authorization.slice(7) : undefined)
}

/** The body's coze_api_key (kept for callers of the original services). */
export function bodyKey (body: unknown): string {
  const presented = (body as { coze_api_key?: unknown } | undefined)?.coze_api_key
  return typeof presented === 'string' ? presented : ''
}

/**
 * Who may call a group of routes: in single-app mode a key of EXPECTED_COZE_API_KEY opens token and resend; in
 * broker mode a caller's key opens exactly the caller's routes.
 */
export function createCallerCheck (verifier: ApiKeyVerifier, broker: Broker | null): (route: BrokerRoute, key: string) => CallerDecision {
  return (route, key) => {
    if (broker === null) {
      if (!verifier.configured) return { refused: new ServiceError('NOT_CONFIGURED', { missing: 'EXPECTED_COZE_API_KEY' }) }
      const index = verifier.match(key)
      return index < 0 ? { refused: new ServiceError('UNAUTHORIZED') } : { shared: { key, index } }
    }
    const caller = broker.authenticate(key)
    if (caller === null) return { refused: new ServiceError('UNAUTHORIZED') }
    try {
      broker.authorizeRoute(caller, route)
    } catch (err) {
      return { refused: err as ServiceError }
    }
    return { caller }
  }
}
