import t from 'tap'
import { createConsoleAccess } from '../../src/console/access.js'
import { escapeHtml, html, Html } from '../../src/console/html.js'
import { age } from '../../src/console/pages.js'

t.test('html escapes every value it is given, and only HTML it made passes as is', async (t) => {
  const hostile = '<script>alert("x")</script>&\''
  t.equal(html`<p title="${hostile}">${hostile}</p>`.text, '<p title="&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;">&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;</p>')
  t.equal(html`<ul>${['<a>', html`<li>b</li>`]}</ul>`.text, '<ul>&lt;a&gt;<li>b</li></ul>')
  t.equal(html`${null}${undefined}${false}${0}`.text, '0')
  t.equal(String(new Html('<b>')), '<b>')
  t.equal(escapeHtml('plain'), 'plain')
})

t.test('ages in words', async (t) => {
  t.equal(age(42), '42 s')
  t.equal(age(300), '5 min')
  t.equal(age(3 * 3600), '3 h')
})

t.test('who signs in: the token as administrator, a console caller by its key; sessions end and are checked again', async (t) => {
  const callers = [
    { name: 'a', console: 'own' as const, apps: ['bills'], feishuApps: ['ledger'] },
    { name: 'chief', console: 'admin' as const, apps: [], feishuApps: [] },
    { name: 'plain', console: false as const, apps: [], feishuApps: [] }
  ]
  const keys: Record<string, string> = { 'key-a': 'a', 'key-chief': 'chief', 'key-plain': 'plain' }
  const access = createConsoleAccess({ token: 'the-console-token-0123456789-0123456789', authenticate: (key) => (keys[key] === undefined ? null : { name: keys[key] as string }), callers, sessionMinutes: 60 })
  t.same(access.signIn('the-console-token-0123456789-0123456789'), { name: null, admin: true, apps: null, feishuApps: null })
  t.same(access.signIn('key-a'), { name: 'a', admin: false, apps: new Set(['bills']), feishuApps: new Set(['ledger']) })
  t.same(access.signIn('key-chief'), { name: 'chief', admin: true, apps: null, feishuApps: null })
  t.equal(access.signIn('key-plain'), null, 'a caller without console')
  t.equal(access.signIn('the-console-token'), null, 'a prefix of the token')
  t.equal(access.signIn(''), null)
  const now = 1_796_000_000_000
  const session = access.session({ name: 'a', admin: false, apps: null, feishuApps: null }, now)
  t.equal(session, `a.${now + 3_600_000}`)
  t.same(access.viewerOf(session, now + 1000)?.name, 'a')
  t.equal(access.viewerOf(session, now + 3_600_000), null, 'expired')
  t.equal(access.viewerOf(`a.${now + 3_600_001}`, now), null, 'longer than a session lasts')
  t.equal(access.viewerOf(`plain.${now + 1000}`, now), null, 'no longer allowed')
  t.equal(access.viewerOf(`A.${now + 1000}`, now), null)
  t.equal(access.viewerOf('a.12', now), null)

  const callersOnly = createConsoleAccess({ token: undefined, authenticate: null, callers, sessionMinutes: 1 })
  t.equal(callersOnly.signIn('anything'), null)
  t.equal(callersOnly.viewerOf(`.${now + 1000}`, now), null, 'no administrator without a token')
})
