import t from 'tap'
import {
  DestinationRefusedError, checkDestination, createPolicyLookup, isDestinationRefusal, isPublicAddress, parseAllowList, systemResolver
} from '../../../src/lib/http/upstream-policy.js'

t.test('allow-list entries: host, *.suffix, host:port, explicit origins, *', async (t) => {
  t.same(parseAllowList('V', ' open.feishu.cn , *.Larksuite.com,,api.example.com:8443, http://127.0.0.1:9000 ,https://[::1]:8443,*'), [
    { source: 'open.feishu.cn', kind: 'host', host: 'open.feishu.cn', protocol: 'https:', port: undefined },
    { source: '*.Larksuite.com', kind: 'suffix', host: 'larksuite.com', protocol: 'https:', port: undefined },
    { source: 'api.example.com:8443', kind: 'host', host: 'api.example.com', protocol: 'https:', port: 8443 },
    { source: 'http://127.0.0.1:9000', kind: 'host', host: '127.0.0.1', protocol: 'http:', port: 9000 },
    { source: 'https://[::1]:8443', kind: 'host', host: '::1', protocol: 'https:', port: 8443 },
    { source: '*', kind: 'any', host: '*', protocol: 'https:', port: undefined }
  ])
  t.same(parseAllowList('V', ''), [])
  for (const bad of ['exa mple.com', 'https://x.example/path', 'https://u:p@x.example', 'x.example?q', 'bad_host!.com', 'http://', '*.']) {
    t.throws(() => parseAllowList('RESEND_ALLOWED_HOSTS', bad), { name: 'PolicyConfigError', message: /^RESEND_ALLOWED_HOSTS: invalid entry/ }, bad)
  }
})

t.test('checkDestination: scheme, user-info, host, port and address each refused for their reason', async (t) => {
  const list = parseAllowList('V', 'open.feishu.cn,*.larksuite.com,http://127.0.0.1:9000,10.0.0.5,*.augmentcode.com')
  const cases: Array<[string, string | true]> = [
    ['https://open.feishu.cn/open-apis/x', true],
    ['https://OPEN.FEISHU.CN./x', true],
    ['https://open.feishu.cn:443/x', true],
    ['https://a.b.larksuite.com/', true],
    ['http://127.0.0.1:9000/x', true],
    ['https://10.0.0.5/', true],
    ['https://d12.api.augmentcode.com/', true],
    ['https://larksuite.com/', 'host'],
    ['https://augmentcode.com.evil.example/', 'host'],
    ['http://open.feishu.cn/', 'scheme'],
    ['https://127.0.0.1:9000/', 'scheme'],
    ['ftp://open.feishu.cn/', 'scheme'],
    ['https://open.feishu.cn:8443/', 'port'],
    ['http://127.0.0.1/', 'port'],
    ['https://u@open.feishu.cn/', 'userinfo'],
    ['https://:p@open.feishu.cn/', 'userinfo'],
    ['http://[', 'url']
  ]
  for (const [url, expected] of cases) {
    const decision = checkDestination(url, list)
    t.equal(decision.allowed ? true : decision.reason, expected, url)
  }
  const any = parseAllowList('V', '*')
  t.match(checkDestination('https://93.184.216.34/', any), { allowed: true, allowPrivate: false })
  t.match(checkDestination(new URL('https://192.168.0.1/'), any), { allowed: false, reason: 'address' })
  t.match(checkDestination('https://[::ffff:10.0.0.1]/', any), { allowed: false, reason: 'address' })
  t.match(checkDestination('https://10.0.0.5/', list), { allowed: true, allowPrivate: true }, 'an exact entry may be private')
})

t.test('isPublicAddress: only global unicast, whatever the form', async (t) => {
  for (const address of ['93.184.216.34', '8.8.8.8', '2606:4700:4700::1111', '::ffff:8.8.8.8']) t.ok(isPublicAddress(address), address)
  for (const address of [
    '127.0.0.1', '10.1.2.3', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '224.0.0.1', '255.255.255.255',
    '192.0.2.1', '198.18.0.1', '240.0.0.1', '::1', '::', 'fd00::1', 'fe80::1', 'ff02::1', '::ffff:127.0.0.1', '::ffff:169.254.169.254',
    '64:ff9b::a00:1', '2002:a00:1::', '2001:db8::1', 'not-an-ip'
  ]) t.notOk(isPublicAddress(address), address)
})

t.test('the connect-time lookup refuses private answers and honours family and all', async (t) => {
  const resolver = async (host: string) => host === 'empty.test'
    ? []
    : host === 'v4.test' ? [{ address: '93.184.216.34', family: 4 }]
    : host === 'fail.test' ? await Promise.reject(Object.assign(new Error('nope'), { code: 'ENOTFOUND' })) : [{ address: '93.184.216.34', family: 4 }, { address: '2606:2800:220:1::1', family: 6 }, ...(host === 'mixed.test' ? [{ address: '10.0.0.1', family: 4 }] : [])]
  const lookup = (allowPrivate: boolean, host: string, options: Record<string, unknown>) => new Promise<unknown[]>((resolve) => {
    createPolicyLookup(allowPrivate, resolver)(host, options, (err, address, family) => { resolve([err?.code ?? err?.name ?? null, address, family]) })
  })
  t.same(await lookup(false, 'public.test', {}), [null, '93.184.216.34', 4])
  t.same(await lookup(false, 'public.test', { family: 6 }), [null, '2606:2800:220:1::1', 6])
  t.same(await lookup(false, 'public.test', { all: true }), [null, [{ address: '93.184.216.34', family: 4 }, { address: '2606:2800:220:1::1', family: 6 }], undefined])
  t.same(await lookup(false, 'mixed.test', {}), ['ERR_DESTINATION_NOT_ALLOWED', '', undefined], 'one private address among public ones is enough to refuse')
  t.same(await lookup(true, 'mixed.test', { family: 4, all: true }), [null, [{ address: '93.184.216.34', family: 4 }, { address: '10.0.0.1', family: 4 }], undefined])
  t.same(await lookup(false, 'empty.test', {}), ['ENOTFOUND', '', undefined])
  t.same(await lookup(false, 'v4.test', { family: 6 }), [null, '93.184.216.34', 4], 'no address of the asked family: the others are used')
  t.same(await lookup(false, 'fail.test', {}), ['ENOTFOUND', '', undefined], 'resolver failures pass through')
  const local = await systemResolver('localhost')
  t.ok(local.some(({ address }) => address === '127.0.0.1' || address === '::1'), 'the system resolver reads /etc/hosts for localhost')

  const refusal = new DestinationRefusedError('x.test')
  t.ok(isDestinationRefusal(new Error('wrapped', { cause: refusal })))
  const loop: Error & { cause?: unknown } = new Error('loop')
  loop.cause = loop
  t.notOk(isDestinationRefusal(loop), 'a cause that points at itself ends')
  t.notOk(isDestinationRefusal(null))
})
