import { readFileSync } from 'node:fs'

// Read once at start; the same relative path holds from src/lib/http and dist/lib/http.
const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { name: string, version: string, license: string }

export const SERVICE_NAME: string = pkg.name
export const SERVICE_VERSION: string = pkg.version
export const SERVICE_LICENSE: string = pkg.license
/** Sent to every upstream, so that Coze, Augment and relay destinations can tell who calls them. */
export const USER_AGENT = `${SERVICE_NAME}/${SERVICE_VERSION}`
