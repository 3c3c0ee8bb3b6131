import { type BrokerApp, type BrokerCaller, type BrokerRoute, type ConsoleAccess, brokerTokenUrl, wholeMatch } from './broker.js'
import { createSigner, importRsaPrivateKey, readPrivateKeyPem } from './jwt.js'
import { ConfigError } from '../http/index.js'

/** A key as the document names it, with its PEM when it comes from a variable. */
export interface KeySetup { kid: string, pem?: string | undefined, file?: string | undefined, origin: string }

/** The apps-and-callers document with what it names looked up in the environment (schemas/broker.ts reads it). */
export interface BrokerSetup {
  apps: Array<{ name: string, appId: string, apiBase: URL, jwtAudience?: string | undefined, accountId?: string | undefined, enterpriseId?: string | undefined, defaultDuration: number, maxDuration: number, keys: KeySetup[] }>
  callers: Array<{ name: string, digest: Buffer, apps: string[], routes: string[], sessionName?: string | undefined, scope?: { permissions: string[], botIds?: string[] | undefined } | undefined, device: boolean, feishuApps: string[], maxQueuedBytes?: number | undefined, console: ConsoleAccess }>
}

/** Imports every key once, at start; a key that does not import stops the start naming the app and the key. */
export async function importApps (setup: BrokerSetup): Promise<BrokerApp[]> {
  return await Promise.all(setup.apps.map(async (app) => ({
    name: app.name,
    appId: app.appId,
    audience: app.jwtAudience ?? app.apiBase.hostname,
    tokenUrl: brokerTokenUrl(app),
    defaultDuration: app.defaultDuration,
    maxDuration: app.maxDuration,
    keys: await Promise.all(app.keys.map(async (key, index) => {
      const label = `apps.${app.name}.keys.${index} (${key.origin})`
      const pem = key.pem ?? await readPrivateKeyPem({ file: key.file, fileName: `apps.${app.name}.keys.${index}.private_key_file` }).catch((err: Error) => { throw new ConfigError(err.message) })
      return { kid: key.kid, signer: createSigner(await importRsaPrivateKey(pem as string, label)) }
    }))
  })))
}

/** The callers as the broker checks them: sets, and their session_name patterns compiled. */
export function brokerCallers (setup: BrokerSetup): BrokerCaller[] {
  return setup.callers.map((caller) => ({
    name: caller.name,
    digest: caller.digest,
    apps: new Set(caller.apps),
    routes: new Set(caller.routes as BrokerRoute[]),
    sessionName: caller.sessionName === undefined ? undefined : wholeMatch(caller.sessionName),
    scope: caller.scope === undefined ? undefined : { permissions: new Set(caller.scope.permissions), botIds: caller.scope.botIds === undefined ? undefined : new Set(caller.scope.botIds) },
    device: caller.device,
    feishuApps: new Set(caller.feishuApps),
    maxQueuedBytes: caller.maxQueuedBytes,
    console: caller.console
  }))
}
