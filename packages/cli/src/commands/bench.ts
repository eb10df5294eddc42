import { Duration, Effect, Fiber, Layer, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { Statement, WritePool } from "effect-dbpool"
import { connectionFlags, pools } from "../connection.ts"
import { durationFlag } from "../duration.ts"
import * as Histogram from "../histogram.ts"
import { errorLine } from "../output.ts"
import { fail, stdout } from "../run.ts"
import { statusLine } from "../terminal.ts"

/** A point select every server runs, whatever its schema: one round trip, one row, no table. */
export const benchSql = "SELECT $1::int AS n"

/** How often the progress line is redrawn. */
const progressEvery = "500 millis"

/** What a run gives: the `--json` output, and the text summary's figures. */
export interface BenchSummary {
  readonly statement: string
  readonly server: string
  readonly concurrency: number
  readonly poolSize: number
  readonly durationMs: number
  readonly ops: number
  readonly opsPerSecond: number
  readonly errors: number
  readonly latencyMs: {
    readonly p50: number
    readonly p90: number
    readonly p99: number
    readonly max: number
  }
  readonly interrupted: boolean
}

const round = (value: number, digits: number): number => Number(value.toFixed(digits))

const ms = (millis: number): string => millis.toFixed(2)

const summaryText = (s: BenchSummary): string =>
  [
    `bench · ${s.statement} · server ${s.server} · concurrency ${s.concurrency} · pool size ${s.poolSize}` +
    ` · ${(s.durationMs / 1000).toFixed(1)}s${s.interrupted ? " (interrupted)" : ""}`,
    `ops         ${s.ops} (${Math.round(s.opsPerSecond)} ops/s)`,
    `errors      ${s.errors}`,
    `latency ms  p50 ${ms(s.latencyMs.p50)} · p90 ${ms(s.latencyMs.p90)} · p99 ${ms(s.latencyMs.p99)} · max ${ms(s.latencyMs.max)}`
  ].join("\n")

export const bench = Command.make("bench", {
  concurrency: Flag.Int("concurrency").pipe(
    Flag.withAlias("c"),
    Flag.withDescription("Statements in flight at once (each a fiber running one after another; default 8)"),
    Flag.filter((n) => n >= 1 && n <= 10_000, () => "an integer from 1 to 10000"),
    Flag.withDefault(8)
  ),
  duration: durationFlag("duration", "10s", "How long the load runs, after a short warm-up"),
  poolSize: Flag.Int("pool-size").pipe(
    Flag.withDescription(
      "Connections of the write pool, all opened before the load starts (default: the concurrency, at most 10); " +
        "with fewer connections than statements in flight, the pool pipelines statements on busy connections"
    ),
    Flag.filter((n) => n >= 1 && n <= 1_000, () => "an integer from 1 to 1000"),
    Flag.optional
  ),
  json: Flag.Boolean("json").pipe(Flag.withDescription("Print the final summary as one JSON object"), Flag.withDefault(false)),
  ...connectionFlags
}, (options) => {
  let server = "(unknown server)"
  const poolSize = Option.getOrElse(options.poolSize, () => Math.min(options.concurrency, 10))
  return Effect.gen(function*() {
    const pool = yield* WritePool
    const total = Histogram.make()
    // The progress line's p50/p99 are of its last half second (a live figure), the summary's of the whole run.
    const recent = Histogram.make()
    let errors = 0
    let lastError: unknown = undefined
    const statement = (n: number) => Statement.text(benchSql, [n])

    /** One statement, its latency recorded; an error or a wrong answer counted (never fails the worker). */
    const once = (n: number) =>
      Effect.gen(function*() {
        const started = performance.now()
        const result = yield* Effect.result(pool.run(statement(n)))
        const millis = performance.now() - started
        if (result._tag === "Failure") {
          errors++
          lastError = result.failure
        } else if (result.success[0]?.["n"] !== n) {
          // Pipelined statements share a connection: an answer to someone else's statement would be a pool bug.
          errors++
          lastError = new Error(`statement ${n} answered ${JSON.stringify(result.success[0]?.["n"])}`)
        } else {
          total.record(millis)
          recent.record(millis)
        }
      })

    // Warm-up, not measured: every connection opened and the statement prepared, so connect time is no latency.
    // Its failure (no server, a wrong password) ends the command with that error.
    yield* Effect.forEach(
      Array.from({ length: Math.max(options.concurrency, poolSize) * 2 }, (_, i) => i),
      (i) => pool.run(statement(i)),
      { concurrency: Math.max(options.concurrency, poolSize), discard: true }
    )

    const durationMs = Duration.toMillis(options.duration)
    const startedAt = performance.now()
    const deadline = startedAt + durationMs
    let endedAt: number | undefined = undefined
    const summary = (interrupted: boolean): BenchSummary => {
      const elapsed = (endedAt ?? performance.now()) - startedAt
      return {
        statement: benchSql,
        server,
        concurrency: options.concurrency,
        poolSize,
        durationMs: Math.round(elapsed),
        ops: total.count(),
        opsPerSecond: round(elapsed > 0 ? total.count() / (elapsed / 1000) : 0, 1),
        errors,
        latencyMs: {
          p50: round(total.percentile(50), 3),
          p90: round(total.percentile(90), 3),
          p99: round(total.percentile(99), 3),
          max: round(total.max(), 3)
        },
        interrupted
      }
    }
    const print = (s: BenchSummary) => stdout(options.json ? JSON.stringify(s) : summaryText(s))

    // Progress on stderr, redrawn in place on a terminal: stdout keeps only the summary (clean for --json in a pipe).
    const status = statusLine(process.stderr)
    let lastTick = startedAt
    const progress = Effect.gen(function*() {
      while (true) {
        yield* Effect.sleep(progressEvery)
        const now = performance.now()
        const rate = recent.count() / ((now - lastTick) / 1000)
        yield* status.show(
          `bench ${((now - startedAt) / 1000).toFixed(1)}s/${(durationMs / 1000).toFixed(1)}s · ` +
            `${Math.round(rate)} ops/s · p50 ${ms(recent.percentile(50))} ms · p99 ${ms(recent.percentile(99))} ms · ` +
            `errors ${errors} · ops ${total.count()}`
        )
        recent.reset()
        lastTick = now
      }
    })

    const worker = (first: number) =>
      Effect.gen(function*() {
        // Each worker its own numbers (first, first + concurrency, …): every answer is checked against its question.
        for (let n = first; performance.now() < deadline; n = (n + options.concurrency) % 1_000_000_000) {
          yield* once(n)
        }
      })

    const load = Effect.gen(function*() {
      const progressFiber = yield* Effect.forkChild(progress)
      yield* Effect.forEach(Array.from({ length: options.concurrency }, (_, i) => i), worker, {
        concurrency: "unbounded",
        discard: true
      })
      endedAt = performance.now()
      yield* Fiber.interrupt(progressFiber)
      yield* status.clear
    }).pipe(
      // Ctrl-C: the figures so far are still worth having (the exit code stays 130: the run was cut short).
      Effect.onInterrupt(() => status.clear.pipe(Effect.andThen(print(summary(true)))))
    )
    yield* load

    yield* print(summary(false))
    if (errors > 0) {
      return yield* fail(`${errors} statements failed or answered wrongly; the last: ${errorLine(lastError)}`)
    }
  }).pipe(
    Effect.provide(Layer.fresh(pools(options, (s) => Effect.sync(() => void (server = s)), {
      minSize: poolSize,
      maxSize: poolSize,
      readMaxSize: 1
    })))
  )
}).pipe(
  Command.withShortDescription("Run a point-select load with a live progress line and a latency summary"),
  Command.withDescription(
    `Run ${benchSql} (works on any server, no table needed) through the write pool (WritePool.run) from ` +
      "--concurrency fibers for --duration, after a short warm-up. A progress line on stderr is redrawn every half " +
      "second on a terminal (ops/s, p50 and p99 of the last half second, errors); the summary on stdout gives total " +
      "ops, ops/s, p50/p90/p99/max latency in ms (within 1%: a fixed-size histogram) and errors, or one JSON object " +
      "with --json. Every answer is checked against its parameter. Exit code 1 if any statement failed; Ctrl-C prints " +
      "the summary so far."
  ),
  Command.withExamples([
    { command: "dbpool bench", description: "8 fibers for 10 seconds on a pool of 8" },
    { command: "dbpool bench --concurrency 64 --pool-size 8 --duration 30s", description: "More statements in flight than connections: pipelined" },
    { command: "dbpool bench -c 4 --duration 2s --json", description: "The summary as JSON, for a script" },
    { command: "dbpool bench --embedded", description: "Against a throwaway embedded server" }
  ])
)
