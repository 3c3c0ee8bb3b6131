import type { FastifyInstance, LightMyRequestResponse } from 'fastify'

/** A browser's share of a console session over inject: it keeps cookies by name and reads each page's CSRF token. */
export class ConsoleClient {
  readonly cookies = new Map<string, string>()
  csrf = ''
  constructor (readonly app: FastifyInstance, readonly headers: Record<string, string> = {}) {}

  private keep (res: LightMyRequestResponse): LightMyRequestResponse {
    for (const cookie of res.cookies as Array<{ name: string, value: string, maxAge?: number, expires?: Date }>) {
      if (cookie.maxAge === 0 || (cookie.expires !== undefined && cookie.expires.getTime() <= Date.now())) this.cookies.delete(cookie.name)
      else this.cookies.set(cookie.name, cookie.value)
    }
    const token = /name="_csrf" value="([^"]+)"/.exec(res.body)?.[1]
    if (token !== undefined) this.csrf = token
    return res
  }

  private cookieHeader (): Record<string, string> {
    return this.cookies.size === 0 ? {} : { cookie: [...this.cookies].map(([name, value]) => `${name}=${value}`).join('; ') }
  }

  async get (url: string, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
    return this.keep(await this.app.inject({ method: 'GET', url, headers: { ...this.headers, ...this.cookieHeader(), ...headers } }))
  }

  /** A form as a browser posts it, with the CSRF token of the last page unless the form says otherwise. */
  async post (url: string, form: Record<string, string> = {}, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
    const body = new URLSearchParams({ _csrf: this.csrf, ...form }).toString()
    return this.keep(await this.app.inject({ method: 'POST', url, payload: body, headers: { ...this.headers, ...this.cookieHeader(), 'content-type': 'application/x-www-form-urlencoded', 'sec-fetch-site': 'same-origin', ...headers } }))
  }

  /** Opens the sign-in page and signs in: the answer to the sign-in. */
  async signIn (token: string): Promise<LightMyRequestResponse> {
    await this.get('/console')
    return await this.post('/console/sign-in', { token })
  }
}
