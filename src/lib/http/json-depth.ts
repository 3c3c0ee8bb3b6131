/** The nesting depth that request bodies, upstream answers and parsed command values may reach (BODY_MAX_DEPTH). */
export const DEFAULT_MAX_JSON_DEPTH = 64

/**
 * Whether JSON text nests arrays and objects deeper than `max`, read in one pass over the text without parsing
 * it: what is too deep is refused before it costs a parse, a copy or a recursive serializer its stack.
 * (Brackets inside strings do not count; the text need not be valid JSON, the parser judges that afterwards.)
 */
export function jsonDeeperThan (text: string, max: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++ // backslash: the next character is escaped
      else if (c === 0x22) inString = false
    } else if (c === 0x22) {
      inString = true
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true
    } else if (c === 0x5d || c === 0x7d) {
      depth--
    }
  }
  return false
}
