/**
 * The pool reads time from Effect's Clock only: acquire timeouts, the idle
 * timeout and the max lifetime follow a TestClock, so hours of pool time pass
 * in milliseconds — against the real server, observed in pg_stat_activity.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber } from "effect"
import { sql, WritePool } from "effect-dbpool"
import { TestClock } from "effect/testing"
import { harness } from "./support.ts"

const h = harness("clock")

/** Waits on real time (the test's own clock is the TestClock) until `ok` holds, for at most 5 s. */
const until = <A>(get: Effect.Effect<A>, ok: (a: A) => boolean): Effect.Effect<A> =>
  TestClock.withLive(Effect.gen(function*() {
    const deadline = Date.now() + 5000
    let a = yield* get
    while (!ok(a) && Date.now() < deadline) {
      yield* Effect.sleep("10 millis")
      a = yield* get
    }
    return a
  }))

const pidOf = (rows: ReadonlyArray<{ readonly [k: string]: unknown }>) => Number(rows[0]?.["pid"])

describe("pool time comes from the Clock", () => {
  it.effect("an acquire timeout of an hour fires when the TestClock is moved on by an hour", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const release = yield* Deferred.make<void>()
      const holder = yield* pool.interaction(() => Deferred.await(release)).pipe(Effect.forkChild)
      yield* until(pool.stats, (s) => s.used === 1)
      const waiter = yield* Effect.flip(pool.run(sql`SELECT 1`)).pipe(Effect.forkChild)
      yield* until(pool.stats, (s) => s.pending === 1)
      const started = Date.now()
      yield* TestClock.adjust("59 minutes")
      assert.strictEqual((yield* pool.stats).pending, 1, "still waiting before the hour is up")
      yield* TestClock.adjust("1 minute")
      const error = yield* TestClock.withLive(Effect.timeout(Fiber.join(waiter), "3 seconds"))
      assert.strictEqual(error._tag, "PoolTimeout")
      assert.isBelow(Date.now() - started, 1000, "an hour of pool time, not of real time")
      assert.strictEqual((yield* pool.stats).pending, 0)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
    }).pipe(Effect.provide(h.pools({ maxSize: 1, acquireTimeout: "1 hour" }))))

  it.effect("an idle timeout of ten minutes closes the backend when the TestClock passes it", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.run(sql`SELECT 1`)
      assert.strictEqual((yield* until(h.sessions, (s) => s.length === 1)).length, 1)
      yield* TestClock.adjust("9 minutes")
      assert.strictEqual((yield* pool.stats).idle, 1, "kept before the idle timeout")
      yield* TestClock.adjust("2 minutes")
      const left = yield* until(h.sessions, (s) => s.length === 0)
      assert.deepStrictEqual(left, [], "the server no longer has the idle backend")
      assert.strictEqual((yield* pool.stats).idle, 0)
    }).pipe(Effect.provide(h.pools({ maxSize: 2, idleTimeout: "10 minutes" }))))

  it.effect("a max lifetime of an hour retires the connection once the TestClock passes it", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const first = pidOf(yield* pool.run(sql`SELECT pg_backend_pid() AS pid`))
      yield* TestClock.adjust("50 minutes")
      // Max lifetime has up to 10% jitter: 50 minutes is inside every connection's life.
      assert.strictEqual(pidOf(yield* pool.run(sql`SELECT pg_backend_pid() AS pid`)), first)
      yield* TestClock.adjust("11 minutes")
      const second = pidOf(yield* pool.run(sql`SELECT pg_backend_pid() AS pid`))
      assert.notStrictEqual(second, first, "a new backend after the lifetime")
      const pids = (yield* until(h.sessions, (s) => s.length === 1)).map((s) => s.pid)
      assert.deepStrictEqual(pids, [second], "the expired backend ended")
    }).pipe(Effect.provide(h.pools({ maxSize: 1, maxLifetime: "1 hour", idleTimeout: "1 day" }))))
})
