import { readFileSync } from 'node:fs'
import { extname } from 'node:path'
import { parseDocument } from 'yaml'
import { ConfigError } from '../http/index.js'

/**
 * A configuration document from a file (JSON, or YAML by its extension) or from a variable's inline JSON. An
 * error names the source and where in the text, never a value.
 */
export function readConfigDocument (source: string, file: string | undefined, inline: string | undefined): unknown {
  let text: string
  try {
    text = file !== undefined ? readFileSync(file, 'utf8') : inline as string
  } catch (err) {
    throw new ConfigError(`${source} cannot be read (${String((err as NodeJS.ErrnoException).code)})`)
  }
  if (file !== undefined && /^\.ya?ml$/i.test(extname(file))) {
    const parsed = parseDocument(text)
    const [error] = parsed.errors
    if (error !== undefined) throw new ConfigError(`${source} is not valid YAML: ${error.code} at line ${String(error.linePos?.[0].line)}, column ${String(error.linePos?.[0].col)}`)
    return parsed.toJS({ maxAliasCount: 0 })
  }
  try {
    return JSON.parse(text)
  } catch (err) {
    // V8's message says where (position, and line and column on newer Node); it may quote a few characters.
    throw new ConfigError(`${source} is not valid JSON: ${(err as Error).message}`)
  }
}
