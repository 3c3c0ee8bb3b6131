import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import fp from 'fastify-plugin'
import { SERVICE_LICENSE, SERVICE_NAME, SERVICE_VERSION } from '../lib/http/index.js'

/** The OpenAPI 3 document, built from the routes' TypeBox schemas; the UI at /docs, the JSON at /docs/json. */
export default fp(async function docs (fastify) {
  if (!fastify.config.DOCS_ENABLED) return
  await fastify.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: SERVICE_NAME,
        version: SERVICE_VERSION,
        description: 'Coze access tokens, a safe resend relay, and Augment OAuth PKCE sign-in. Every answer is {success, data, message}.',
        license: { name: SERVICE_LICENSE, url: `https://spdx.org/licenses/${SERVICE_LICENSE}.html` }
      },
      // The instance that serves this document: the page works on whatever host and port it is reached by.
      servers: [{ url: '/', description: 'This instance' }],
      tags: [
        { name: 'probes', description: 'Liveness and readiness' },
        { name: 'coze', description: 'Coze OAuth JWT exchange' },
        { name: 'resend', description: 'Replay a failed request to an allowed destination' },
        { name: 'augment', description: 'Augment Code OAuth with PKCE' }
      ],
      components: {
        securitySchemes: { apiKey: { type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'A key of EXPECTED_COZE_API_KEY.' } }
      }
    },
    refResolver: {
      // Shared schemas (all added with an $id) keep it as their name in components.schemas.
      buildLocalReference: (json) => String(json.$id)
    }
  })
  // The page and its assets are not API requests: left out of the request metrics.
  await fastify.register(async function docsPage (page) {
    page.addHook('onRoute', (route) => { route.config = { ...route.config, disableMetrics: true } })
    await page.register(swaggerUi, {
      routePrefix: '/docs',
      uiConfig: { docExpansion: 'list', deepLinking: true },
      // The UI's own routes are not part of the API.
      uiHooks: {},
      staticCSP: true,
      // The page is served over plain HTTP on a task's own address too: upgrade-insecure-requests would turn every
      // asset into an https request there and leave the page blank. Swagger UI sets style attributes, which a
      // style hash cannot allow (and 'unsafe-inline' is ignored beside one), so styles are 'self' and inline.
      transformStaticCSP: (header) => header
        .replace(/\s*upgrade-insecure-requests;?/, '')
        .replace(/style-src [^;]*;/, "style-src 'self' 'unsafe-inline';")
    })
  })
}, { name: 'docs', fastify: '5.x', dependencies: ['config'] })
