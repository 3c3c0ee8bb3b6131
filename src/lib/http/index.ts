/**
 * HTTP as every system meets it: the connection guard in front of the server, the envelope and its error codes
 * with their zh/en messages, the caller keys, exact JSON, and calls to upstreams within the destination policy.
 * Read `errors.ts` (the codes), then `error-answers.ts` (how anything thrown becomes an answer). It imports no
 * other system.
 */
export { type ApiKeyVerifier, createApiKeyVerifier, matchKeyDigest } from './api-keys.js'
export { type ConnectionLimits, createGuardedServer, DEFAULT_CONNECTION_LIMITS, GUARD_EVENT, type GuardReason } from './connection-guard.js'
export { errorEnvelope, successEnvelope } from './envelope.js'
export { answerClientError, sendError } from './error-answers.js'
export { ConfigError, ERROR_STATUS, type ErrorCode, isServiceError, outcomeOf, ServiceError } from './errors.js'
export { mayLoseNumbers, parseExact, RawJson, stringifyExact, stringifyWithRaw } from './exact-json.js'
export { DEFAULT_MAX_JSON_DEPTH, jsonDeeperThan } from './json-depth.js'
export { messageFor, pickLocale, type SuccessText } from './messages.js'
export { SERVICE_LICENSE, SERVICE_NAME, SERVICE_VERSION, USER_AGENT } from './service-info.js'
export { checkDestination, createPolicyAgents, isDestinationRefusal, parseAllowList, type PolicyEntry, type Resolver } from './upstream-policy.js'
export { exchangeJson, readBodyLimited, ResponseTooLargeError, transportError, withDeadline } from './upstream.js'
