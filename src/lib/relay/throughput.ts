import type { Metrics } from 'bullmq'

/** Minutes the console's chart covers: BullMQ keeps one data point a minute, this many (MetricsTime.ONE_HOUR). */
export const THROUGHPUT_MINUTES = 60

/**
 * BullMQ's per-minute counts of one partition as a series of THROUGHPUT_MINUTES, oldest first, ending with the
 * minute of `now`. BullMQ writes a minute's count when the first job of a later minute ends: until then it is
 * `count - prevCount` in the meta, for the minute of `prevTS`; the list holds the minutes before that one, the
 * latest first (quiet minutes as zeros); minutes after `prevTS` saw no job end.
 */
export function perMinute (metrics: Metrics, now: number): number[] {
  const current = Math.floor(now / 60000)
  const latest = Math.floor(metrics.meta.prevTS / 60000)
  return Array.from({ length: THROUGHPUT_MINUTES }, (_unused, index) => {
    const minute = current - (THROUGHPUT_MINUTES - 1) + index
    if (metrics.meta.prevTS === 0 || minute > latest) return 0
    if (minute === latest) return metrics.meta.count - metrics.meta.prevCount
    return metrics.data[latest - 1 - minute] ?? 0
  })
}

/** Several partitions' series, added minute by minute. */
export const addSeries = (series: number[][]): number[] =>
  Array.from({ length: THROUGHPUT_MINUTES }, (_unused, index) => series.reduce((sum, one) => sum + (one[index] as number), 0))
