/**
 * POST /token, in the order a request meets it: single-app mode signs (`jwt.ts`) and exchanges (`client.ts`);
 * broker mode reads its apps and callers (`broker-setup.ts`), checks what a caller may ask (`broker.ts`), and both
 * modes reuse tokens through `token-store.ts` (memory, or one sealed cache in Redis for every instance).
 */
export { brokerCallers, type BrokerSetup, importApps } from './broker-setup.js'
export { type Broker, type BrokerCaller, type BrokerRoute, type ConsoleAccess, brokerTokenUrl, createBroker, wholeMatch } from './broker.js'
export { bodyKey, type CallerDecision, createCallerCheck, headerKey } from './callers.js'
export { type CozeClient, createCozeClient } from './client.js'
export { createSigner, importRsaPrivateKey, keyLabel, PrivateKeyError, readPrivateKeyPem, type Signer } from './jwt.js'
export { createMemoryTokenStore, createRedisTokenStore, type TokenStore } from './token-store.js'
