/**
 * Where single statements go: fill-first onto a busy connection while its
 * statements are fast (fewer backends woken), spread out when they are slow
 * (no long pile behind a slow statement). Observed through
 * `pg_backend_pid()` of each statement.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { sql, WritePool } from "effect-dbpool"
import { harness, poll } from "./support.ts"

const h = harness("placement")

/** Point selects (or `sleepMillis`-long statements) from `callers` fibers for `millis`; the backend of each statement completed in the last `tailMillis`. */
const load = (callers: number, millis: number, tailMillis: number, sleepMillis = 0) =>
  Effect.gen(function*() {
    const pool = yield* WritePool
    const tail: Array<number> = []
    const deadline = Date.now() + millis
    yield* Effect.forEach(
      Array.from({ length: callers }),
      () =>
        Effect.whileLoop({
          while: () => Date.now() < deadline,
          body: () =>
            sleepMillis > 0
              ? pool.run(sql`SELECT pg_backend_pid() AS pid, pg_sleep(${sleepMillis / 1000})`)
              : pool.run(sql`SELECT pg_backend_pid() AS pid FROM test_values WHERE id = ${1 + Math.floor(Math.random() * 1000)}`),
          step: (rows) => {
            if (Date.now() > deadline - tailMillis) tail.push(Number(rows[0]?.["pid"]))
          }
        }),
      { concurrency: "unbounded", discard: true }
    )
    return tail
  })

/** How the backends shared `tail`: how many there were, and the share of the busiest `top` of them. */
const spread = (tail: ReadonlyArray<number>, top = 1) => {
  const perBackend = new Map<number, number>()
  for (const pid of tail) perBackend.set(pid, (perBackend.get(pid) ?? 0) + 1)
  const busiest = [...perBackend.values()].sort((a, b) => b - a).slice(0, top).reduce((a, b) => a + b, 0)
  const share = busiest / tail.length
  return { backends: perBackend.size, share, says: `share of the busiest ${top} of ${perBackend.size} backends: ${share.toFixed(2)}` }
}

describe("placement of single statements", () => {
  it.live("fast statements fill one busy connection instead of waking all sixteen", () =>
    Effect.gen(function*() {
      const s = spread(yield* load(64, 1500, 500), 2)
      // Spread evenly, 64 callers keep all 16 backends equally busy: the busiest two would serve an eighth.
      // Filled up to 64 deep, one or two backends serve most of it (a pause on this machine can make statements look
      // slow for a moment, and placement then rightly spreads a few: the busiest one alone was seen at 0.48).
      assert.isAtLeast(s.share, 0.6, s.says)
    }).pipe(Effect.provide(h.pools({ minSize: 16, maxSize: 16 }))))

  it.live("fast statements from as many callers as connections share a backend too", () =>
    Effect.gen(function*() {
      // Never more callers than connections: no statement ever has to share, so only fill-first piles them.
      const s = spread(yield* load(16, 1500, 500))
      assert.isAtLeast(s.share, 0.6, s.says)
    }).pipe(Effect.provide(h.pools({ minSize: 16, maxSize: 16 }))))

  it.live("statements that cost the backend real time pile only as deep as drains within fastWithin, and spread", () =>
    Effect.gen(function*() {
      // Half a millisecond each: 32 callers on one backend would run them one at a time; about 14 drain within
      // the default 8 ms, so they spread over three backends or more, each running its own.
      const s = spread(yield* load(32, 1500, 700, 0.5))
      assert.isAtMost(s.share, 0.6, s.says)
      assert.isAtLeast(s.backends, 3, s.says)
    }).pipe(Effect.provide(h.pools({ minSize: 8, maxSize: 8 }))))

  it.live("a burst of slow statements arriving at a warm pool piles at most 16 deep behind one another, then spreads", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      // Warm: every connection has a history of fast statements.
      yield* load(64, 500, 0)
      const rows = yield* Effect.forEach(
        Array.from({ length: 40 }),
        () => pool.run(sql`SELECT pg_backend_pid() AS pid, pg_sleep(0.05)`),
        { concurrency: "unbounded" }
      )
      // All 40 arrive at once: the busiest backend's share of them is the deepest pile.
      const s = spread(rows.map((row) => Number(row[0]?.["pid"])))
      assert.isAtMost(Math.round(s.share * rows.length), 16, s.says)
      assert.isAtLeast(s.backends, 3, s.says)
    }).pipe(Effect.provide(h.pools({ minSize: 8, maxSize: 8 }))))

  it.live("slow statements on a cold pool spread over every connection", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const rows = yield* Effect.forEach(
        Array.from({ length: 8 }),
        () => pool.run(sql`SELECT pg_backend_pid() AS pid, pg_sleep(0.1)`),
        { concurrency: "unbounded" }
      )
      assert.strictEqual(new Set(rows.map((r) => Number(r[0]?.["pid"]))).size, 4)
    }).pipe(Effect.provide(h.pools({ minSize: 4, maxSize: 4 }))))

  /**
   * Starts `n` sleeping statements on an open pool and samples its stats until they all finished: the most
   * statements that ever waited for a connection, and the most connections ever in use.
   */
  const queued = (n: number) =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const open = yield* poll(pool.stats, (s) => s.idle === s.min)
      assert.strictEqual(open.idle, open.min, "the pool's connections are open before the statements start")
      const fiber = yield* Effect.forkChild(
        Effect.forEach(Array.from({ length: n }), () => pool.run(sql`SELECT pg_sleep(0.3)`), { concurrency: "unbounded" })
      )
      let pending = 0
      let used = 0
      while (fiber.pollUnsafe() === undefined) {
        const s = yield* pool.stats
        pending = Math.max(pending, s.pending)
        used = Math.max(used, s.used)
        yield* Effect.sleep("10 millis")
      }
      yield* Fiber.join(fiber)
      return { pending, used }
    })

  it.live("pipelining: false gives every statement a connection of its own", () =>
    Effect.gen(function*() {
      const most = yield* queued(12)
      assert.deepStrictEqual(most, { pending: 8, used: 4 })
    }).pipe(Effect.provide(h.pools({ minSize: 4, maxSize: 4, pipelining: false }))))

  it.live("maxDepth bounds the statements in flight on one connection", () =>
    Effect.gen(function*() {
      // 4 connections × 2 deep hold 8 statements; the other 4 wait.
      const most = yield* queued(12)
      assert.deepStrictEqual(most, { pending: 4, used: 4 })
    }).pipe(Effect.provide(h.pools({ minSize: 4, maxSize: 4, pipelining: { maxDepth: 2 } }))))

  it.live("by default a saturated pool queues no single statement: they are pipelined", () =>
    Effect.gen(function*() {
      const most = yield* queued(12)
      assert.deepStrictEqual(most, { pending: 0, used: 4 })
    }).pipe(Effect.provide(h.pools({ minSize: 4, maxSize: 4 }))))

  it.live("fillDepth: 0 spreads fast statements over every connection", () =>
    Effect.gen(function*() {
      const s = spread(yield* load(64, 1500, 500), 4)
      assert.strictEqual(s.backends, 16, s.says)
      assert.isAtMost(s.share, 0.45, s.says)
    }).pipe(Effect.provide(h.pools({ minSize: 16, maxSize: 16, pipelining: { fillDepth: 0 } }))))
})
