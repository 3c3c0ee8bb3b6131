import t from 'tap'
import { ANSWER_SHOWN_CHARS, appsContent, destinationsContent, jobContent, jobsContent, nowContent } from '../../src/console/pages.js'
import { historyOf } from '../../src/lib/relay/views.js'
import type { JobView } from '../../src/lib/relay/index.js'

const job = (fields: Partial<JobView> = {}): JobView => ({
  id: '00000000-0000-4000-8000-000000000001', status: 'queued', attempts: 0, created_at: '2026-12-06T10:00:00.000Z', next_attempt_at: null, destination: 'h.example/x', last_attempt: null, waiting_for: null, status_url: '/resend/jobs/1', ...fields
})

t.test('the job page: what holds it, no attempt yet, older attempts left out, a long answer cut', async (t) => {
  const waiting = jobContent(job({ waiting_for: 'destination_paused' }), undefined, 'csrf').text
  t.match(waiting, /queued<\/span> \(destination_paused\)/)
  t.match(waiting, /No attempt yet\./)
  t.match(waiting, /action="\/console\/jobs\/[^"]+\/cancel"/)
  t.notMatch(waiting, /\/retry"/)
  const many = jobContent(job({ status: 'failed', attempts: 12, history: [{ at: '2026-12-06T10:00:01.000Z', error: 'TIMEOUT', instance: '' }], answer: { status: 400, body: 'x' } }), 'y'.repeat(ANSWER_SHOWN_CHARS + 10), 'csrf').text
  t.match(many, /TIMEOUT <span class="muted">on an earlier version<\/span>/)
  t.match(many, /The 1 latest of 12 attempts\./)
  t.match(many, new RegExp(`<pre>y{${ANSWER_SHOWN_CHARS}}… \\(cut\\)</pre>`))
  t.match(many, /\/retry"/)
})

t.test('the listings: a job not tried yet, a paused destination, the oldest waiting job, an app failure without a logid', async (t) => {
  t.match(jobsContent([job()], { status: undefined, destination: undefined, caller: undefined }, []).text, /<td>0<\/td>\n<td>—<\/td>/)
  t.match(jobsContent([job({ attempts: 1, last_attempt: { at: '2026-12-06T10:00:01.000Z', error: 'TIMEOUT' } })], { status: undefined, destination: undefined, caller: undefined }, []).text, /<td>1<\/td>\n<td> TIMEOUT<\/td>/)
  const paused = destinationsContent([{ host: 'h.example', state: 'paused', paused_until: '2026-12-06T10:05:00.000Z', paused_by: 'breaker', limit_per_second: null, recent: { attempts: 5, failed: 5, failure_rate: 1 }, consecutive_failures: 5, last_error: 'UPSTREAM_ERROR', last_attempt_at: null, waiting: 2, in_flight: 0 }]).text
  t.match(paused, /paused<\/span> until <time datetime="2026-12-06T10:05:00.000Z">2026-12-06 10:05:00Z<\/time> \(breaker\)/)
  t.match(paused, /<td>100 %<\/td><td>UPSTREAM_ERROR<\/td>/)
  t.match(destinationsContent([]).text, /No destination has been tried lately/)
  t.match(nowContent({ counts: { queued: 1, delivering: 0, delivered: 0, failed: 0 }, oldestSeconds: 330, throughput: { delivered: new Array(60).fill(0), failed: new Array(60).fill(0) } }).text, /<span class="count">6 min<\/span> oldest waiting/)
  t.match(nowContent({ counts: { queued: 1, delivering: 0, delivered: 0, failed: 0 }, oldestSeconds: 4, throughput: null }).text, /<span class="count">4 s<\/span> oldest waiting[\s\S]*Your jobs: the newest 1000 of each status\./)
  const apps = appsContent([], [{ name: 'ledger', appId: 'cli_1', origin: 'https://open.feishu.cn', activity: { counts: { feishu_99991663: 2 }, last_ok_at: null, last_failure: { at: 0, code: 'feishu_99991663' } } }], 60_000).text
  t.match(apps, /No Coze app is configured/)
  t.match(apps, /not by this instance<\/span><\/td>\n<td>2<\/td><td>feishu_99991663 60 s ago<\/td>/)
})

t.test('a job delivered by a version that did not name its instance', async (t) => {
  const fields = { id: '1', name: '["o","h/x","",""]', timestamp: 0, progress: 0, returnvalue: JSON.stringify({ attempts: 1, last: { at: 1000, status: 200 } }), failedReason: '', finishedOn: 1000 }
  t.same(historyOf(fields, 'delivered'), [{ at: '1970-01-01T00:00:01.000Z', status: 200, instance: '' }])
  t.same(historyOf(fields, 'failed'), [])
})
