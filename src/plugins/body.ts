import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyRequest {
    /** The JSON body as it arrived: the relay sends params from it, so numbers a parse would change stay exact. */
    bodyText: string | undefined
  }
  interface FastifyContextConfig {
    /** A route that takes no body: an empty one with Content-Type: application/json is no body (as curl sends). */
    bodiless?: boolean
  }
}
import { jsonDeeperThan, ServiceError } from '../lib/http/index.js'

/**
 * What a request body may be: JSON only (anything else is 415), at most BODY_LIMIT_BYTES, nested at most
 * BODY_MAX_DEPTH levels. Depth is checked on the text before parsing, so no later copy, walk or serializer
 * meets a document deeper than that.
 */
export default fp(async function body (fastify) {
  const { BODY_LIMIT_BYTES, BODY_MAX_DEPTH } = fastify.config
  fastify.addHook('onRoute', (route) => { route.bodyLimit ??= BODY_LIMIT_BYTES })
  fastify.removeContentTypeParser('text/plain')
  // Fastify's own parser (prototype poisoning refused), behind the depth check.
  const parseJson = fastify.getDefaultJsonParser('error', 'error')
  fastify.removeContentTypeParser('application/json')
  fastify.decorateRequest('bodyText', undefined)
  fastify.addContentTypeParser('application/json', { parseAs: 'string' }, (request, text, done) => {
    if (text === '' && request.routeOptions.config.bodiless === true) {
      done(null, undefined)
      return
    }
    if (jsonDeeperThan(text as string, BODY_MAX_DEPTH)) {
      done(new ServiceError('VALIDATION_FAILED', { field: 'body', reason: `the body nests deeper than ${BODY_MAX_DEPTH} levels`, limit: BODY_MAX_DEPTH }), undefined)
      return
    }
    request.bodyText = text as string
    parseJson(request, text as string, done)
  })
}, { name: 'body', fastify: '5.x', dependencies: ['config'] })
