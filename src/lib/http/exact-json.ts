import { randomBytes } from 'node:crypto'
import { LosslessNumber, isSafeNumber, parse, stringify } from 'lossless-json'

// Digits of one number, with or without a decimal point between them: 16 of them may not survive a double.
const LOSSY_NUMBER = /(?:\d\.?){16}|[eE][+-]?\d{3}/

/**
 * Whether JSON text may hold a number that JSON.parse would change: 16 significant digits or more (an id beyond
 * 2^53), or an exponent of three digits (1e400 is Infinity to a double). It errs toward yes: digits inside
 * strings count too, and only cost the exact path.
 */
export function mayLoseNumbers (text: string): boolean {
  return LOSSY_NUMBER.test(text)
}

/** A number kept as a double where that is exact, else as its text (lossless-json's LosslessNumber). */
const exactNumber = (text: string): unknown => (isSafeNumber(text) ? Number(text) : new LosslessNumber(text))

/** JSON.parse, except that a number a double cannot hold exactly keeps its text. Throws SyntaxError. */
export function parseExact (text: string): unknown {
  return parse(text, null, exactNumber)
}

/** JSON.stringify, writing the numbers parseExact kept as text as that text. */
export function stringifyExact (value: unknown): string | undefined {
  return stringify(value as Parameters<typeof stringify>[0])
}

/** JSON text passed on as it is: a destination's answer whose numbers JSON.parse would change. */
export class RawJson {
  constructor (readonly text: string) {}
}

const PLACEHOLDER = `aibill-raw-json-${randomBytes(16).toString('hex')}-`
const PLACEHOLDERS = new RegExp(`"${PLACEHOLDER}(\\d+)"`, 'g')

/** JSON.stringify, with every RawJson inside written as its own text. */
export function stringifyWithRaw (value: unknown): string {
  const raws: string[] = []
  const text = JSON.stringify(value, (_key, inner: unknown) => {
    if (!(inner instanceof RawJson)) return inner
    raws.push(inner.text)
    return `${PLACEHOLDER}${raws.length - 1}`
  })
  return raws.length === 0 ? text : text.replace(PLACEHOLDERS, (_match, index: string) => raws[Number(index)] as string)
}
