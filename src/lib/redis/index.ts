/**
 * Redis as the service uses it: one connection made at start (`connection.ts`), a breaker that makes a silent
 * Redis fail fast for every user at once (`breaker.ts`), and values sealed at rest (`sealed.ts`).
 */
export { guardRedis } from './breaker.js'
export { connectRedis, createRedisClient, redisSettings, type RedisClient, type RedisSettings } from './connection.js'
export { isRedisFull, probeRedis, redisReadiness, type Probe } from './probe.js'
export { createSealer } from './sealed.js'
