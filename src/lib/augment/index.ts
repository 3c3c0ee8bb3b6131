/**
 * The Augment sign-in: PKCE pairs and the authorize link (`pkce.ts`), the states that wait for the code
 * (`state-store.ts`, memory or Redis), and the exchange at the user's tenant (`sign-in.ts`).
 */
export { type AugmentSignIn, createAugmentSignIn } from './sign-in.js'
export { STATE_KEY_PREFIX, createMemoryStateStore, createRedisStateStore, type StateStore } from './state-store.js'
