/// <reference lib="dom" />
// The page functions below run in the browser.
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import puppeteer, { type Page } from 'puppeteer-core'
import t from 'tap'
import { API_KEY, build, REDIS_URL, redisKeyPrefix, registerSecret, sendJson, skipWithoutRedis, startUpstream, systemTool, tempDir } from '../helper.js'

// Debian's chromium: .ci/run and npm run setup:test-tools install it. Driven through puppeteer-core (DevTools).
const CHROMIUM = '/usr/bin/chromium'
const chromium = systemTool(CHROMIUM, 'chromium')
const redisSkip = await skipWithoutRedis()
const SECRET = randomBytes(32).toString('base64')
const CONSOLE_TOKEN = 'console-token-browser-0123456789-0123456789'
registerSecret(SECRET)
registerSecret(CONSOLE_TOKEN)
const SCREENSHOT = fileURLToPath(new URL('../../docs/console.png', import.meta.url))

/** Collects the CSP violations a page reports (the listener is put in by DevTools, outside the page's CSP). */
async function watchCsp (page: Page): Promise<() => Promise<string[]>> {
  await page.evaluateOnNewDocument(() => {
    const seen: string[] = []
    Object.defineProperty(window, '__violations', { value: seen })
    document.addEventListener('securitypolicyviolation', (event) => { seen.push(`${event.violatedDirective} ${event.blockedURI}`) })
  })
  return async () => await page.evaluate(() => [...(window as unknown as { __violations: string[] }).__violations])
}

t.test('the console in Chromium: sign in by keyboard, find the failed job, replay it, watch it delivered; no CSP violation', { skip: chromium.skip || redisSkip }, async (t) => {
  if (chromium.missing !== undefined) return t.fail(chromium.missing)
  const state = { status: 400 }
  const upstream = await startUpstream(t, (_request, res) => { sendJson(res, state.status, state.status === 200 ? { code: 0 } : { code: 1254000, msg: 'WrongRequestBody' }) })
  const { app } = await build(t, {
    EXPECTED_COZE_API_KEY: API_KEY,
    RESEND_ALLOWED_HOSTS: upstream.url,
    RESEND_QUEUE: 'redis',
    RESEND_QUEUE_SECRET: SECRET,
    REDIS_URL,
    REDIS_KEY_PREFIX: redisKeyPrefix(t, 'console-browser'),
    CONSOLE_TOKEN
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const origin = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const queued = await app.inject({ method: 'POST', url: '/resend', headers: { 'x-api-key': API_KEY }, payload: { location: `${upstream.url}/open-apis/bitable/v1/records`, params: { fields: { amount: 12 } }, delivery: 'queued' } })
  const id = queued.json().data.id as string
  for (let i = 0; i < 1200; i++) {
    if ((await app.inject({ url: `/resend/jobs/${id}`, headers: { 'x-api-key': API_KEY } })).json().data.status === 'failed') break
    await sleep(50)
  }

  const profile = await tempDir(t, 'aibill-chromium-')
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run']
  })
  t.teardown(async () => { await browser.close() })
  const page = await browser.newPage()
  await page.setViewport({ width: 1280, height: 860 })
  const violations = await watchCsp(page)
  const seen: string[] = []
  const visit = async () => {
    seen.push(await page.content())
    t.same(await violations(), [], `no CSP violation on ${new URL(page.url()).pathname}`)
  }

  // Sign in with the keyboard alone: the token field has the focus.
  await page.goto(`${origin}/console`)
  await visit()
  await page.keyboard.type('a-wrong-token-0123456789-0123456789')
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')])
  t.match(await page.$eval('[role=alert]', (node) => node.textContent), /does not open the console/)
  await page.type('#token', CONSOLE_TOKEN)
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')])
  t.equal(await page.$eval('h1', (node) => node.textContent), 'Now')
  await visit()
  const cookies = await browser.cookies()
  t.ok(cookies.some((cookie) => cookie.name === 'aibill_console' && cookie.httpOnly && cookie.sameSite === 'Strict'), 'an HttpOnly, SameSite=Strict session')
  t.equal(await page.evaluate(() => document.cookie), '', 'no cookie the page\'s script can read')

  // The failed job, through the filter.
  await Promise.all([page.waitForNavigation(), page.click('nav a[href="/console/jobs"]')])
  await page.select('#status', 'failed')
  await Promise.all([page.waitForNavigation(), page.click('form.filter button[type=submit]')])
  await visit()
  await Promise.all([page.waitForNavigation(), page.click(`a[href="/console/jobs/${id}"]`)])
  await visit()
  t.match(await page.$eval('ol.timeline', (node) => node.textContent), /HTTP 400 UPSTREAM_ERROR/)

  // Fixed: replay every failed job of the filter, after a confirmation that says how many.
  state.status = 200
  await page.goto(`${origin}/console/jobs?status=failed`)
  await Promise.all([page.waitForNavigation(), page.click('a.button[href^="/console/replay"]')])
  await visit()
  t.match(await page.$eval('main', (node) => node.textContent), /1 failed job +will be put back in the queue/)
  await Promise.all([page.waitForNavigation(), page.click('main form button[type=submit]')])
  t.match(await page.$eval('.notice', (node) => node.textContent), /1 failed job put back in the queue\./)
  await visit()

  // The job's page refreshes itself while visible: delivered, with both attempts.
  await page.goto(`${origin}/console/jobs/${id}`)
  await page.waitForFunction(() => document.querySelector('.state.delivered') !== null, { timeout: 90_000 })
  t.match(await page.$eval('ol.timeline', (node) => node.textContent), /HTTP 400 UPSTREAM_ERROR[\s\S]*HTTP 200 delivered/)
  await visit()

  // The operator's first screen, as docs/operations.md shows it.
  await page.goto(`${origin}/console`)
  // (The counts are read every few seconds; the page refreshes itself.)
  await page.waitForFunction(() => document.querySelector('.tile.delivered .count')?.textContent === '1' && /1 delivered/.test(document.querySelector('figcaption')?.textContent ?? ''), { timeout: 60_000 })
  await page.screenshot({ path: SCREENSHOT })
  await visit()

  // A phone: nothing wider than the screen; the keyboard reaches the sections.
  await page.setViewport({ width: 390, height: 844 })
  for (const path of ['/console', '/console/jobs', `/console/jobs/${id}`, '/console/destinations']) {
    await page.goto(`${origin}${path}`)
    t.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1), `${path}: fits a phone`)
  }
  await page.keyboard.press('Tab')
  await page.keyboard.press('Tab')
  t.equal(await page.evaluate(() => document.activeElement?.textContent), 'Now', 'Tab reaches the sections')
  t.ok(seen.every((html) => !html.includes(CONSOLE_TOKEN) && !html.includes(API_KEY)), 'no token or key in any page')

  // The watch itself: an inline script is refused and reported.
  await page.evaluate(() => {
    const script = document.createElement('script')
    script.textContent = 'window.injected = true'
    document.body.append(script)
  })
  await page.waitForFunction(() => (window as unknown as { __violations: string[] }).__violations.length > 0, { timeout: 10_000 })
  t.match(await violations(), [/^script-src/], 'an inline script would have been seen')
  t.equal(await page.evaluate(() => (window as unknown as { injected?: boolean }).injected), undefined, 'and did not run')
})
