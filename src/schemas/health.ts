import { Type, type Static } from '@sinclair/typebox'

export const HealthData = Type.Object({
  status: Type.Literal('ok'),
  service: Type.String(),
  version: Type.String(),
  timestamp: Type.String({ description: 'ISO 8601' })
}, { examples: [{ status: 'ok', service: 'aibill-token-service', version: '1.0.0', timestamp: '2026-01-01T00:00:00.000Z' }] })
export type HealthData = Static<typeof HealthData>

export const CheckStatus = Type.String({ pattern: '^(ok|degraded|down|not_configured: .+)$', description: 'ok; degraded (working without something: still ready); down; or not_configured: the variables a served route lacks' })
export type CheckStatus = Static<typeof CheckStatus>

export const ReadyData = Type.Object({
  status: Type.Literal('ready'),
  checks: Type.Record(Type.String(), CheckStatus)
}, { examples: [{ status: 'ready', checks: { token: 'ok', resend: 'ok', state_store: 'ok' } }] })
export type ReadyData = Static<typeof ReadyData>
