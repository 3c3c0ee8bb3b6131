#!/usr/bin/env node
import { realpathSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'
import { brokerTokenUrl, createCozeClient, createSigner, importRsaPrivateKey, keyLabel, PrivateKeyError, readPrivateKeyPem } from '../lib/coze/index.js'
import { isServiceError } from '../lib/http/index.js'
import { ConfigSchema, loadConfig } from '../schemas/config.js'
import { MAX_DURATION_SECONDS } from '../schemas/token.js'

const DEFAULT_URL = ConfigSchema.properties.COZE_API_URL.default as string

export const HELP = `Usage: coze-jwt --kid KID [options]

Signs the RS256 JWT of a Coze OAuth service application and prints it; with --exchange, also exchanges it at
Coze and prints Coze's answer as JSON. The key comes from --key FILE, JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE
(the environment, or .env in the current folder), or, with --app, from the apps document.

Options:
  --app NAME           an app of COZE_APPS_FILE or COZE_APPS: its app id, API, token URL and first key
  --kid KID            public-key fingerprint from the Coze OAuth app page (the JWT header kid); required
                       unless --app gives it
  --app-id ID          the OAuth app id (the JWT iss); default COZE_APP_ID; required
  --aud HOST           the JWT aud; default COZE_JWT_AUDIENCE, else the host of the URL (api.coze.cn)
  --ttl SECONDS        lifetime of the JWT; default COZE_JWT_TTL_SECONDS or 600
  --session-name S     the session_name claim (per-user isolation)
  --key FILE           PEM file of the private key (PKCS#8 or PKCS#1)
  --exchange           exchange the JWT for an access token and print Coze's answer
  --duration SECONDS   access token lifetime for --exchange, 1..86399; default 86399
  --url URL            Coze token endpoint; default COZE_API_URL or ${DEFAULT_URL}
  -h, --help           this text

Exit codes: 0 done, 1 a missing or bad key or a failed exchange, 2 a usage error.
`

export interface CliIo {
  env: Record<string, string | undefined>
  stdout: (text: string) => void
  stderr: (text: string) => void
  cwd?: string
}

class UsageError extends Error {}

function positiveInteger (name: string, value: string, max: number): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > max) throw new UsageError(`${name} must be a whole number from 1 to ${max}`)
  return Number(value)
}

/** The command's whole behaviour, with its environment and output passed in (so tests run it in process). */
export async function runCozeJwt (argv: string[], io: CliIo): Promise<number> {
  let args
  try {
    args = parseArgs({
      args: argv,
      strict: true,
      options: {
        kid: { type: 'string' },
        app: { type: 'string' },
        'app-id': { type: 'string' },
        aud: { type: 'string' },
        ttl: { type: 'string' },
        'session-name': { type: 'string' },
        key: { type: 'string' },
        exchange: { type: 'boolean', default: false },
        duration: { type: 'string' },
        url: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false }
      }
    }).values
  } catch (err) {
    io.stderr(`coze-jwt: ${(err as Error).message}\n\n${HELP}`)
    return 2
  }
  if (args.help) {
    io.stdout(HELP)
    return 0
  }

  try {
    // The service's own configuration, read as the service reads it; flags win over it.
    const { config, broker } = loadConfig({ env: io.env, dotenvPath: join(io.cwd ?? process.cwd(), '.env') })
    let app: NonNullable<typeof broker>['apps'][number] | undefined
    if (args.app !== undefined) {
      if (broker === null) throw new UsageError('--app needs COZE_APPS_FILE or COZE_APPS')
      app = broker.apps.find((candidate) => candidate.name === args.app)
      if (app === undefined) throw new UsageError(`--app: no app ${args.app} in the document`)
    }
    const kid = args.kid ?? app?.keys[0]?.kid
    if (kid === undefined || kid === '') throw new UsageError('--kid is required')
    const appId = args['app-id'] ?? app?.appId ?? config.COZE_APP_ID
    if (appId === undefined || appId === '') throw new UsageError('--app-id (or COZE_APP_ID) is required')
    const url = args.url ?? (app === undefined ? config.COZE_API_URL : brokerTokenUrl(app).href)
    if (!URL.canParse(url) || !/^https?:$/.test(new URL(url).protocol)) throw new UsageError('--url must be an http(s) URL')
    const ttlSeconds = args.ttl === undefined ? config.COZE_JWT_TTL_SECONDS : positiveInteger('--ttl', args.ttl, 86400)
    const duration = positiveInteger('--duration', args.duration ?? String(MAX_DURATION_SECONDS), MAX_DURATION_SECONDS)

    const appKey = app?.keys[0]
    const source = args.key !== undefined
      ? { file: args.key, fileName: '--key' }
      : appKey !== undefined
        ? { pem: appKey.pem, file: appKey.file, pemName: appKey.origin, fileName: 'private_key_file' }
        : { pem: config.JWT_PRIVATE_KEY, file: config.JWT_PRIVATE_KEY_FILE }
    const pem = await readPrivateKeyPem(source)
    if (pem === undefined) throw new PrivateKeyError('no private key: pass --key FILE or set JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE')
    const signer = createSigner(await importRsaPrivateKey(pem, keyLabel(source)))
    const jwt = await signer.signCozeJwt({
      kid,
      iss: appId,
      aud: args.aud ?? (config.COZE_JWT_AUDIENCE ?? new URL(url).hostname),
      ttlSeconds,
      sessionName: args['session-name']
    })
    if (!args.exchange) {
      io.stdout(`${jwt}\n`)
      return 0
    }
    const client = createCozeClient({ url, timeoutMs: config.COZE_TIMEOUT_MS, signer, issuer: { appId }, audience: '', jwtTtlSeconds: ttlSeconds, reuseSeconds: 0 })
    try {
      io.stdout(`${JSON.stringify((await client.exchangeCozeToken(jwt, duration)).token)}\n`)
    } finally {
      await client.close()
    }
    return 0
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`coze-jwt: ${err.message}\n\n${HELP}`)
      return 2
    }
    if (isServiceError(err)) {
      const { upstream_status: status, error_code: code, error_message: message, hint } = err.details
      const parts = [err.code, status === undefined ? undefined : `HTTP ${String(status)}`, code, message].filter((part) => part !== undefined)
      io.stderr(`coze-jwt: exchange failed: ${parts.join(' ')}${hint === undefined ? '' : `\n  hint: ${String(hint)}`}\n`)
      return 1
    }
    io.stderr(`coze-jwt: ${(err as Error).message}\n`)
    return 1
  }
}

// Run when started as a command (npm links bins, so the path is resolved first), not when imported.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  process.exitCode = await runCozeJwt(process.argv.slice(2), {
    env: process.env,
    stdout: (text) => { process.stdout.write(text) },
    stderr: (text) => { process.stderr.write(text) }
  })
}
