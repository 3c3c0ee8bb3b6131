import { Type, type Static } from '@sinclair/typebox'

export const MAX_DURATION_SECONDS = 86399

export const TokenBody = Type.Object({
  public_key: Type.String({
    minLength: 1,
    maxLength: 128,
    pattern: '^[A-Za-z0-9_\\-.=+/]+$',
    description: 'The public-key fingerprint shown on the Coze OAuth app page (the JWT header kid), not the public key itself.'
  }),
  coze_api_key: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, description: 'A key of EXPECTED_COZE_API_KEY, when not sent as X-API-Key (the header wins).' })),
  duration_seconds: Type.Optional(Type.Integer({
    minimum: 1,
    maximum: MAX_DURATION_SECONDS,
    default: MAX_DURATION_SECONDS,
    description: 'Lifetime of the access token Coze issues; 86399 is Coze\'s maximum.'
  })),
  session_name: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Coze per-user isolation (the session_name claim).' }))
}, {
  additionalProperties: false,
  examples: [{ public_key: '_v0VjcMlLdQc3tRTD3jC5Xz29TUnKQOhtuD5k-gpyf4', coze_api_key: 'your-service-key', duration_seconds: 3600 }]
})
export type TokenBody = Static<typeof TokenBody>

export const TokenData = Type.Object({
  access_token: Type.String(),
  expires_in: Type.Number({ description: 'Absolute Unix time in seconds at which the token expires (Coze\'s meaning).' }),
  token_type: Type.String()
}, { examples: [{ access_token: 'czs_xxx', expires_in: 1721135859, token_type: 'Bearer' }] })
export type TokenData = Static<typeof TokenData>
