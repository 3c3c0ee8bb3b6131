import { Type, type Static } from '@sinclair/typebox'
import { FEISHU_APP_NAME } from './feishu.js'
import { BULK_LIMIT, CommandsSchema, DEFAULT_METHOD, JOB_STATUSES, LIST_SCAN, MAX_REPORTED_PATHS, RESEND_METHODS } from '../lib/relay/index.js'

/**
 * Header names are RFC 9110 tokens; values are visible Latin-1 with spaces and tabs (no control characters).
 * TypeBox's Record turns the key schema into `patternProperties` only: without `additionalProperties: false`
 * a name outside the pattern would not be checked at all, nor would its value.
 */
export function ResendHeaders () {
  return Type.Record(
    Type.String({ pattern: '^[!#$%&\'*+.^_`|~0-9A-Za-z-]{1,256}$' }),
    Type.String({ maxLength: 16384, pattern: '^[\\t\\x20-\\x7e\\x80-\\xff]*$' }),
    { maxProperties: 64, additionalProperties: false, description: 'Headers sent upstream (hop-by-hop headers and Host are dropped). Names are HTTP tokens; values printable Latin-1.' }
  )
}

export const ResendBody = Type.Object({
  location: Type.String({
    minLength: 1,
    maxLength: 4096,
    pattern: '^[Hh][Tt][Tt][Pp][Ss]?://',
    description: 'Absolute http(s) URL to send to; it must pass RESEND_ALLOWED_HOSTS.'
  }),
  method: Type.Optional(Type.Union(RESEND_METHODS.map((method) => Type.Literal(method)), { default: DEFAULT_METHOD })),
  headers: Type.Optional(ResendHeaders()),
  params: Type.Optional(Type.Unknown({ description: 'Any JSON value, sent as the JSON body (not for GET).' })),
  commands: Type.Optional(CommandsSchema),
  max_attempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 5, default: 1, description: 'Retries only after a refused or reset connection, 429 or 503 (delivery "now").' })),
  delivery: Type.Optional(Type.Union([Type.Literal('now'), Type.Literal('queued')], { description: 'now (the default): sent while the caller waits. queued: stored, answered 202, and delivered on the retry schedule (also asked by Prefer: respond-async).' })),
  auth: Type.Optional(Type.Object({
    feishu_app: Type.String({ pattern: FEISHU_APP_NAME, description: 'A configured Feishu app: each attempt carries its tenant_access_token, fetched and refreshed by the service.' })
  }, { additionalProperties: false })),
  coze_api_key: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, description: 'The service key, when not sent as X-API-Key; never forwarded.' }))
}, {
  additionalProperties: false,
  examples: [{
    location: 'https://open.feishu.cn/open-apis/bitable/v1/apps/APP/tables/TABLE/records/batch_create',
    headers: { Authorization: 'Bearer t-xxx' },
    params: { records: [{ fields: '{"收支类型":"支出","款项金额":14.91}' }] },
    commands: { json_parse: ['$.params.records[*].fields'] }
  }]
})
export type ResendBody = Static<typeof ResendBody>

export const ResendData = Type.Object({
  status: Type.Integer({ description: 'The upstream HTTP status.' }),
  body: Type.Unknown({ description: 'The upstream body: parsed JSON when it says JSON, else text.' }),
  attempts: Type.Integer(),
  commands: Type.Optional(Type.Object({
    json_parse: Type.Optional(Type.Array(Type.Object({
      expression: Type.String(),
      parsed: Type.Integer({ description: 'Strings parsed at the locations it matched; a location is parsed once.' }),
      paths: Type.Array(Type.String(), { description: `Their normalized paths (RFC 9535), the first ${MAX_REPORTED_PATHS}.` })
    }), { description: 'Per expression, in order.' }))
  }, { description: 'What the commands did; present when commands were given.' }))
}, {
  examples: [{
    status: 200,
    body: { code: 0, msg: 'success' },
    attempts: 1,
    commands: { json_parse: [{ expression: '$.params.records[*].fields', parsed: 1, paths: ["$['params']['records'][0]['fields']"] }] }
  }]
})
export type ResendData = Static<typeof ResendData>

export const ApiKeyHeaders = Type.Object({
  'x-api-key': Type.Optional(Type.String({ maxLength: 1024 }))
})

const IDEMPOTENCY_KEY = { minLength: 1, maxLength: 255, pattern: '^[\\x21-\\x7e]+$' }

export const ResendHeadersIn = Type.Object({
  'x-api-key': Type.Optional(Type.String({ maxLength: 1024 })),
  prefer: Type.Optional(Type.String({ maxLength: 1024, description: 'respond-async (RFC 7240) asks for queued delivery.' })),
  'idempotency-key': Type.Optional(Type.String({ ...IDEMPOTENCY_KEY, description: 'Queued delivery: the same key and request (compared as data) give the same job while it is kept; another request is 422.' }))
})

const JOB_ID = '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$'

export const JobParams = Type.Object({
  id: Type.String({ pattern: JOB_ID, description: 'The job id POST /resend gave.' })
})

export const JobListQuery = Type.Object({
  status: Type.Optional(Type.Union(JOB_STATUSES.map((status) => Type.Literal(status)))),
  idempotency_key: Type.Optional(Type.String({ ...IDEMPOTENCY_KEY, description: 'The caller\'s job of this Idempotency-Key, when it is still kept.' })),
  limit: Type.Optional(Type.String({ pattern: '^(100|[1-9][0-9]?)$', description: 'At most this many jobs: 1 to 100 (default 20).' }))
}, { additionalProperties: false })

export const QueuedData = Type.Object({
  id: Type.String(),
  status: Type.String(),
  status_url: Type.String()
}, { examples: [{ id: '0b6f3c8e-5d0a-4f7e-9a51-2c1d7e3f9b20', status: 'queued', status_url: '/resend/jobs/0b6f3c8e-5d0a-4f7e-9a51-2c1d7e3f9b20' }] })

export const JobData = Type.Object({
  id: Type.String(),
  status: Type.Union(['queued', 'delivering', 'delivered', 'failed', 'cancelled'].map((status) => Type.Literal(status)), { description: 'cancelled only in the answer to DELETE.' }),
  attempts: Type.Integer(),
  created_at: Type.String({ format: 'date-time' }),
  next_attempt_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  destination: Type.String({ description: 'Host and path; never the query.' }),
  last_attempt: Type.Union([Type.Object({
    at: Type.String({ format: 'date-time' }),
    status: Type.Optional(Type.Integer({ description: 'The destination\'s HTTP status.' })),
    error: Type.Optional(Type.String({ description: 'Why it was not delivered: an error code, or feishu_<code>.' }))
  }), Type.Null()]),
  waiting_for: Type.Union([Type.Literal('destination_paused'), Type.Literal('destination_limit'), Type.Null()], { description: 'What holds a queued job back without spending an attempt: its destination paused (its breaker, or a rate limit it answered with), or at its RESEND_HOST_LIMITS entry.' }),
  history: Type.Optional(Type.Array(Type.Object({
    at: Type.String({ format: 'date-time' }),
    status: Type.Optional(Type.Integer()),
    error: Type.Optional(Type.String()),
    next_attempt_at: Type.Optional(Type.String({ format: 'date-time', description: 'When the next attempt was due, for an attempt followed by a wait.' })),
    instance: Type.String({ description: 'The host name of the instance that made it.' })
  }), { description: 'Its latest attempts, oldest first (at most 8): in the answer about one job, not in a listing.' })),
  answer: Type.Optional(Type.Object({ status: Type.Integer(), body: Type.Unknown() }, { description: 'The destination\'s answer: when delivered, or when it failed the job.' })),
  status_url: Type.String()
})

const Instant = Type.Union([Type.String({ format: 'date-time' }), Type.Null()])

export const DestinationData = Type.Object({
  host: Type.String(),
  state: Type.Union([Type.Literal('ok'), Type.Literal('paused'), Type.Literal('limited')], { description: 'paused: no delivery until paused_until; limited: at its RESEND_HOST_LIMITS entry now.' }),
  paused_until: Instant,
  paused_by: Type.Union([Type.Literal('breaker'), Type.Literal('rate_limited'), Type.Null()], { description: 'breaker: RESEND_BREAKER_FAILURES consecutive failures; rate_limited: the destination asked (Feishu 99991400, a 429 with a reset).' }),
  limit_per_second: Type.Union([Type.Number(), Type.Null()]),
  recent: Type.Object({ attempts: Type.Integer(), failed: Type.Integer(), failure_rate: Type.Number() }, { description: 'Attempts in this five-minute window and the one before, now and queued, from every instance.' }),
  consecutive_failures: Type.Integer(),
  last_error: Type.Union([Type.String(), Type.Null()]),
  last_attempt_at: Instant,
  waiting: Type.Integer({ description: 'Queued jobs ready to go and held back (their share, the limit, a pause); in broker mode the caller\'s own.' }),
  in_flight: Type.Integer({ description: 'Queued jobs being delivered now; in broker mode the caller\'s own.' })
})

export const DestinationListData = Type.Object({
  destinations: Type.Array(DestinationData, { description: 'Hosts with attempts in the last day, busiest first; in broker mode, those the caller\'s jobs wait for or are being delivered to.' })
})

const bulk = (status: 'failed' | 'queued', at: string) => Type.Object({
  status: Type.Literal(status, { description: `Only ${status} jobs are ${status === 'failed' ? 'put back' : 'cancelled'}.` }),
  destination: Type.Optional(Type.String({ minLength: 1, maxLength: 300, description: 'A host (open.feishu.cn, 127.0.0.1:8080), or a host and the start of a path, as a job\'s destination says.' })),
  since: Type.Optional(Type.String({ format: 'date-time', description: `Jobs ${at} at or after this instant.` })),
  until: Type.Optional(Type.String({ format: 'date-time', description: `Jobs ${at} before this instant.` })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: BULK_LIMIT, description: `At most this many jobs (1 to ${BULK_LIMIT}; default ${BULK_LIMIT}).` }))
}, { additionalProperties: false })

export const BulkRetryBody = bulk('failed', 'that failed')
export const BulkCancelBody = bulk('queued', 'created')

export const BulkData = Type.Object({
  count: Type.Integer(),
  ids: Type.Array(Type.String(), { description: 'The jobs touched, newest first within each partition: GET /resend/jobs/{id} follows each.' })
})

export const JobListData = Type.Object({
  jobs: Type.Array(JobData, { description: `Newest first. Each state is read newest first, at most ${LIST_SCAN} jobs, then filtered by caller.` })
})
