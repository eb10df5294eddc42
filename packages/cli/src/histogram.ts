/**
 * A latency histogram of fixed size: log-spaced buckets 1% apart from 1 µs
 * to over an hour, so a benchmark of any length keeps the same few
 * kilobytes (an array of every latency would grow by millions of entries),
 * and a percentile read from it is within 1% of the true value.
 */

/** Each bucket's upper bound is this factor times the previous one's. */
const GROWTH = 1.01
const LOG_GROWTH = Math.log(GROWTH)
/** 1.01^2200 µs is about 1.3 hours: a slower statement lands in the last bucket (its exact value is still the max). */
const BUCKETS = 2200

export interface Histogram {
  /** Records one latency, in milliseconds. */
  readonly record: (millis: number) => void
  /** Latencies recorded. */
  readonly count: () => number
  /** The latency at or below which `p` percent of the recorded ones are (ms), 0 when empty. */
  readonly percentile: (p: number) => number
  /** The largest latency recorded, exact (ms), 0 when empty. */
  readonly max: () => number
  /** Forgets everything recorded (for the per-interval figures of a progress line). */
  readonly reset: () => void
}

/** The bucket of a latency in microseconds: 0 holds everything up to 1 µs. */
const bucketOf = (micros: number): number =>
  micros <= 1 ? 0 : Math.min(BUCKETS - 1, Math.ceil(Math.log(micros) / LOG_GROWTH))

/** The upper bound of a bucket, in milliseconds. */
const upperBoundMillis = (bucket: number): number => Math.pow(GROWTH, bucket) / 1000

export const make = (): Histogram => {
  const counts = new Float64Array(BUCKETS)
  let total = 0
  let largest = 0
  return {
    record: (millis) => {
      counts[bucketOf(millis * 1000)]! += 1
      total += 1
      if (millis > largest) largest = millis
    },
    count: () => total,
    percentile: (p) => {
      if (total === 0) return 0
      // The rank of the p-th percentile (nearest-rank method), at least the first latency.
      const rank = Math.max(1, Math.ceil((p / 100) * total))
      let seen = 0
      for (let bucket = 0; bucket < BUCKETS; bucket++) {
        seen += counts[bucket]!
        // A bucket's upper bound can exceed the largest latency itself (it is up to 1% above): never report more.
        if (seen >= rank) return Math.min(upperBoundMillis(bucket), largest)
      }
      return largest
    },
    max: () => largest,
    reset: () => {
      counts.fill(0)
      total = 0
      largest = 0
    }
  }
}
