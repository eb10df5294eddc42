/**
 * Closed-loop load: `concurrency` callers, each issuing one operation after
 * another until the deadline; every latency is recorded.
 */
import { Effect } from "effect"

export interface Sample {
  readonly ops: number
  readonly seconds: number
  readonly latenciesMs: Float64Array
}

export const randomId = (rows: number) => 1 + Math.floor(Math.random() * rows)

class Recorder {
  private latencies = new Float64Array(1 << 16)
  count = 0
  record(ms: number) {
    if (this.count === this.latencies.length) {
      const bigger = new Float64Array(this.latencies.length * 2)
      bigger.set(this.latencies)
      this.latencies = bigger
    }
    this.latencies[this.count++] = ms
  }
  done(seconds: number): Sample {
    return { ops: this.count, seconds, latenciesMs: this.latencies.subarray(0, this.count) }
  }
}

/** Promise-style clients. */
export const runPromiseLoad = async (
  op: () => Promise<unknown>,
  concurrency: number,
  durationMs: number
): Promise<Sample> => {
  const recorder = new Recorder()
  const start = performance.now()
  const deadline = start + durationMs
  const worker = async () => {
    while (performance.now() < deadline) {
      const t = performance.now()
      await op()
      recorder.record(performance.now() - t)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  return recorder.done((performance.now() - start) / 1000)
}

/** Effect-style clients: the callers are fibers. */
export const runEffectLoad = <E, R>(
  op: () => Effect.Effect<unknown, E, R>,
  concurrency: number,
  durationMs: number
): Effect.Effect<Sample, E, R> =>
  Effect.suspend(() => {
    const recorder = new Recorder()
    const start = performance.now()
    const deadline = start + durationMs
    const worker = Effect.whileLoop({
      while: () => performance.now() < deadline,
      body: () => {
        const t = performance.now()
        return Effect.map(op(), () => recorder.record(performance.now() - t))
      },
      step: () => {}
    })
    return Effect.map(
      Effect.forEach(Array.from({ length: concurrency }), () => worker, { concurrency, discard: true }),
      () => recorder.done((performance.now() - start) / 1000)
    )
  })

export const percentile = (sorted: Float64Array, p: number): number =>
  sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
