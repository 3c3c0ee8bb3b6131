import fp from 'fastify-plugin'
import { createSigner, importRsaPrivateKey, keyLabel, readPrivateKeyPem, type Signer } from '../lib/coze/index.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Null when no private key is configured: POST /token then answers NOT_CONFIGURED. */
    signer: Signer | null
  }
}

/** Imports the private key once, at start; a key that does not parse stops the start. */
export default fp(async function signer (fastify) {
  const { config } = fastify
  const source = { pem: config.JWT_PRIVATE_KEY, file: config.JWT_PRIVATE_KEY_FILE }
  const pem = await readPrivateKeyPem(source)
  if (pem === undefined) {
    // In broker mode the apps document names the keys.
    if (fastify.brokerSetup === null) fastify.log.warn('no JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE: POST /token answers 503 NOT_CONFIGURED')
    fastify.decorate('signer', null)
    return
  }
  fastify.decorate('signer', createSigner(await importRsaPrivateKey(pem, keyLabel(source))))
}, { name: 'signer', fastify: '5.x', dependencies: ['config'] })
