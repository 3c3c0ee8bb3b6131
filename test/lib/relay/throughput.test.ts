import t from 'tap'
import { addSeries, perMinute, THROUGHPUT_MINUTES } from '../../../src/lib/relay/throughput.js'

const MINUTE = 60_000
const at = (minute: number, second = 0): number => minute * MINUTE + second * 1000
const metrics = (count: number, prevTS: number, prevCount: number, data: number[]) => ({ meta: { count, prevTS, prevCount }, data, count: data.length })

t.test('BullMQ\'s points as an hour, oldest first, ending with this minute', async (t) => {
  const now = at(1000, 30)
  t.same(perMinute(metrics(0, 0, 0, []), now), new Array(THROUGHPUT_MINUTES).fill(0), 'nothing recorded yet')
  // Jobs ended in minute 1000 (not yet written), and before it 4 in 999, none in 998, 2 in 997.
  const series = perMinute(metrics(10, at(1000, 5), 7, [4, 0, 2]), now)
  t.equal(series.length, THROUGHPUT_MINUTES)
  t.same(series.slice(-4), [2, 0, 4, 3])
  t.equal(series.slice(0, -4).reduce((sum, count) => sum + count, 0), 0)
  // Ten minutes later, with no job ended since: the pending count stays in its minute, and after it all is quiet.
  const later = perMinute(metrics(10, at(1000, 5), 7, [4, 0, 2]), at(1010, 1))
  t.same(later.slice(-14), [2, 0, 4, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
  // More than an hour quiet: nothing in the window.
  t.same(perMinute(metrics(10, at(1000, 5), 7, [4]), at(1100)), new Array(THROUGHPUT_MINUTES).fill(0))
  // A list shorter than the hour: the minutes before it are zeros.
  t.same(perMinute(metrics(1, at(1000), 0, []), at(1000)).slice(-2), [0, 1])
})

t.test('partitions add up minute by minute', async (t) => {
  const one = new Array(THROUGHPUT_MINUTES).fill(1)
  const two = new Array(THROUGHPUT_MINUTES).fill(2)
  t.same(addSeries([one, two]), new Array(THROUGHPUT_MINUTES).fill(3))
  t.same(addSeries([]), new Array(THROUGHPUT_MINUTES).fill(0))
})
