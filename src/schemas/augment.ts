import { Type, type Static } from '@sinclair/typebox'

export const AuthUrlQuery = Type.Object({
  user_id: Type.Optional(Type.String({ maxLength: 128, description: 'Who asks; only logged.' }))
})
export type AuthUrlQuery = Static<typeof AuthUrlQuery>

export const AuthUrlData = Type.Object({
  authorize_url: Type.String({ description: 'Open it to sign in at Augment.' }),
  state: Type.String({ description: 'Send it back with the code to POST /api/complete-auth.' })
}, {
  examples: [{
    authorize_url: 'https://auth.augmentcode.com/authorize?response_type=code&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&client_id=v&state=0uXl1a2b3c4d5e6f7g8h9i&prompt=login',
    state: '0uXl1a2b3c4d5e6f7g8h9i'
  }]
})

export const CompleteAuthBody = Type.Object({
  code: Type.String({ maxLength: 2048, description: 'The code from the JSON Augment shows after sign-in.' }),
  state: Type.String({ maxLength: 512, description: 'The state from GET /api/auth-url (also in Augment\'s JSON).' }),
  tenant_url: Type.String({ maxLength: 2048, description: 'The tenant_url from Augment\'s JSON, e.g. https://d12.api.augmentcode.com/.' })
}, {
  additionalProperties: false,
  examples: [{ code: '_000baec407c57c4bf9xxxxxxxxxxxxxx', state: '0uXl1a2b3c4d5e6f7g8h9i', tenant_url: 'https://d12.api.augmentcode.com/' }]
})
export type CompleteAuthBody = Static<typeof CompleteAuthBody>

export const CompleteAuthData = Type.Object({
  status: Type.Literal('success'),
  token: Type.String({ description: 'The Augment access token.' }),
  tenant_url: Type.String(),
  token_info: Type.Object({
    id: Type.String({ description: 'UUID v4 of this issuance.' }),
    created_at: Type.String({ description: 'ISO 8601' })
  })
}, {
  examples: [{
    status: 'success',
    token: 'eyJhbGciOi...',
    tenant_url: 'https://d12.api.augmentcode.com/',
    token_info: { id: '550e8400-e29b-41d4-a716-446655440000', created_at: '2026-01-01T12:00:00.000Z' }
  }]
})
