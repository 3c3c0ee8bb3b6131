import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The nearest package.json above this file: the project's, from src, dist, or the bench's build. */
function packageJson (): { name: string, version: string, license: string } {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir)
  return JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name: string, version: string, license: string }
}

// Read once at start.
const pkg = packageJson()

export const SERVICE_NAME: string = pkg.name
export const SERVICE_VERSION: string = pkg.version
export const SERVICE_LICENSE: string = pkg.license
/** Sent to every upstream, so that Coze, Augment and relay destinations can tell who calls them. */
export const USER_AGENT = `${SERVICE_NAME}/${SERVICE_VERSION}`
