import { readFileSync } from 'node:fs'
import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { readConfigDocument } from '../lib/ops/index.js'
import { ConfigError } from '../lib/http/index.js'

export const FEISHU_APP_NAME = '^[a-z0-9][a-z0-9-]{0,63}$'
export const DEFAULT_FEISHU_BASE = 'https://open.feishu.cn'

export const FeishuApp = Type.Object({
  app_id: Type.String({ pattern: '^[A-Za-z0-9_-]{1,128}$', description: 'The Feishu app\'s App ID (cli_...).' }),
  app_secret_env: Type.Optional(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', description: 'The variable that holds its App Secret.' })),
  app_secret_file: Type.Optional(Type.String({ minLength: 1, description: 'A file that holds its App Secret.' })),
  base: Type.Optional(Type.String({ pattern: '^https?://[^/?#\\s]+/?$', description: `The Open Platform's origin: ${DEFAULT_FEISHU_BASE} (default) or https://open.larksuite.com.` }))
}, { additionalProperties: false })

/** Feishu apps by name: FEISHU_APPS_FILE, FEISHU_APPS, or `feishu_apps` in the apps document. */
export const FeishuApps = Type.Record(Type.String({ pattern: FEISHU_APP_NAME }), FeishuApp, { additionalProperties: false, maxProperties: 256 })
export type FeishuApps = Static<typeof FeishuApps>
const checkApps = TypeCompiler.Compile(FeishuApps)

/** A Feishu app whose tenant_access_token the service fetches itself. */
export interface FeishuAppSetup {
  name: string
  appId: string
  secret: string
  base: URL
}

/**
 * The Feishu apps, with their secrets read: from FEISHU_APPS_FILE or FEISHU_APPS, or from the apps document
 * (`inDocument`). Errors name the source and the field, never a secret.
 */
export function loadFeishuApps (
  variables: { FEISHU_APPS_FILE?: string | undefined, FEISHU_APPS?: string | undefined },
  inDocument: { apps: FeishuApps | undefined, source: string } | null,
  environment: Readonly<Record<string, unknown>>
): FeishuAppSetup[] {
  // (An empty variable is unset: loadConfig left it out.)
  const { FEISHU_APPS_FILE: file, FEISHU_APPS: inline } = variables
  if (file !== undefined && inline !== undefined) throw new ConfigError('FEISHU_APPS_FILE and FEISHU_APPS are both set: use one')
  const fromVariable = file !== undefined || inline !== undefined
  if (fromVariable && inDocument?.apps !== undefined) throw new ConfigError(`${inDocument.source} has feishu_apps and ${file !== undefined ? 'FEISHU_APPS_FILE' : 'FEISHU_APPS'} is set: use one`)
  let apps: unknown
  let source: string
  if (fromVariable) {
    source = file !== undefined ? `FEISHU_APPS_FILE (${file})` : 'FEISHU_APPS'
    apps = readConfigDocument(source, file, inline)
    const issue = checkApps.Errors(apps).First()
    if (issue !== undefined) throw new ConfigError(`${source}: ${issue.path.replace(/^\//, '').replace(/\//g, '.') || '(the document)'} ${issue.message.toLowerCase()}`)
  } else if (inDocument?.apps !== undefined) {
    source = `${inDocument.source}: feishu_apps`
    apps = inDocument.apps
  } else {
    return []
  }
  return Object.entries(apps as FeishuApps).map(([name, app]) => {
    const field = `${source}: ${name}`
    let secret: string
    if ((app.app_secret_env === undefined) === (app.app_secret_file === undefined)) throw new ConfigError(`${field} needs exactly one of app_secret_env and app_secret_file`)
    if (app.app_secret_env !== undefined) {
      const value = environment[app.app_secret_env]
      if (typeof value !== 'string' || value.trim() === '') throw new ConfigError(`${field}.app_secret_env names ${app.app_secret_env}, which is not set`)
      secret = value.trim()
    } else {
      try {
        secret = readFileSync(app.app_secret_file as string, 'utf8').trim()
      } catch (err) {
        throw new ConfigError(`${field}.app_secret_file (${String(app.app_secret_file)}) cannot be read (${String((err as NodeJS.ErrnoException).code)})`)
      }
      if (secret === '') throw new ConfigError(`${field}.app_secret_file (${String(app.app_secret_file)}) is empty`)
    }
    return { name, appId: app.app_id, secret, base: new URL(app.base ?? DEFAULT_FEISHU_BASE) }
  })
}
