/**
 * HTML written by template: every value put in is escaped, unless it is HTML made here already. No value can
 * open a tag, an attribute or a script, so a destination, an error text or a job id shows as the text it is.
 */
export class Html {
  constructor (readonly text: string) {}
  toString (): string { return this.text }
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }

export const escapeHtml = (value: string): string => value.replace(/[&<>"']/g, (char) => ESCAPES[char] as string)

type Value = Html | string | number | null | undefined | false | readonly Value[]

function piece (value: Value): string {
  if (value instanceof Html) return value.text
  if (Array.isArray(value)) return value.map(piece).join('')
  if (value === null || value === undefined || value === false) return ''
  return escapeHtml(String(value))
}

export function html (strings: TemplateStringsArray, ...values: Value[]): Html {
  return new Html(strings.reduce((out, part, index) => out + part + (index < values.length ? piece(values[index] as Value) : ''), ''))
}
