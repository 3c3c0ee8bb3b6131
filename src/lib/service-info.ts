import { readFileSync } from 'node:fs'

// Read once at start; the same relative path holds from src/lib and dist/lib.
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { name: string, version: string }

export const SERVICE_NAME: string = pkg.name
export const SERVICE_VERSION: string = pkg.version
