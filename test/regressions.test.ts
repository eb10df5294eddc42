/**
 * Regression tests for faults found by code review of the slot table, the
 * connection, the pool and the listener. Each test fails (or runs into one of
 * its own bounded timeouts, reported as an assertion) on the code the fault
 * was found in, and checks what a user relies on, observed from Postgres
 * where it matters (pg_stat_activity, pg_locks).
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Logger, Option, Redacted, References, Scope, Stream } from "effect"
import { DbPool, Notifications, ReadPool, sql, WritePool } from "effect-dbpool"
import type { Connection, InteractionPool } from "effect-dbpool"
import * as Net from "node:net"
import postgres from "postgres"
import { inject } from "vitest"
import { databaseUrl, failOnEscapes, harness, otherHostName, outsideTransaction, poll } from "./support.ts"

const h = harness("regressions")

failOnEscapes()

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/** `self` within `millis`, or a test failure that says what did not finish (never a hang). */
const within = <A, E, R>(what: string, millis: number, self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  self.pipe(
    Effect.timeoutOption(millis),
    Effect.flatMap(Option.match({
      onNone: () => Effect.die(new Error(`${what}: did not complete within ${millis} ms (it hangs)`)),
      onSome: Effect.succeed
    }))
  )

/** The exit of `self` within `millis`; one that does not complete is a defect saying so (and is interrupted). */
const exitWithin = <A, E, R>(what: string, millis: number, self: Effect.Effect<A, E, R>): Effect.Effect<Exit.Exit<A, E>, never, R> =>
  Effect.exit(self).pipe(
    Effect.timeoutOption(millis),
    Effect.map(Option.getOrElse(() => Exit.die(new Error(`${what}: did not complete within ${millis} ms (it hangs)`))))
  )

const errorTag = (exit: Exit.Exit<unknown, unknown>): string | undefined => {
  if (Exit.isSuccess(exit)) return undefined
  const error = Cause.findErrorOption(exit.cause)
  if (Option.isSome(error)) {
    const e = error.value
    return typeof e === "object" && e !== null && "_tag" in e ? String(e._tag) : String(e)
  }
  return Cause.hasInterruptsOnly(exit.cause) ? "(interrupted)" : "(defect)"
}

const describeExit = (exit: Exit.Exit<unknown, unknown>): string =>
  Exit.isSuccess(exit) ? "success" : `${errorTag(exit)}: ${Cause.pretty(exit.cause).split("\n")[0]}`

/** Polls `get` until `ok`; fails the test with the last value after `millis`. */
const eventually = <A>(what: string, get: Effect.Effect<A>, ok: (a: A) => boolean, millis = 3000): Effect.Effect<A> =>
  Effect.flatMap(poll(get, ok, millis), (a) =>
    ok(a) ? Effect.succeed(a) : Effect.die(new Error(`timed out after ${millis} ms waiting for ${what}; last seen: ${JSON.stringify(a)}`)))

/**
 * Runs `body` with the file's pools, then releases the pool Layer with a
 * bound: a release that hangs fails the test instead of the runner.
 */
const withPools = <A, E>(
  config: Partial<DbPool.Config>,
  body: Effect.Effect<A, E, WritePool | ReadPool | Notifications.Notifications>
) =>
  Effect.scoped(Effect.gen(function*() {
    const scope = yield* Scope.make()
    // Closed below; this finalizer only matters when the test is interrupted first.
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const context = yield* Layer.buildWithScope(h.pools(config), scope)
    const exit = yield* Effect.exit(Effect.provideContext(body, context))
    const closing = yield* Effect.forkDetach(Scope.close(scope, Exit.void))
    const closed = yield* Effect.timeoutOption(Fiber.await(closing), "8 seconds")
    if (Exit.isSuccess(exit)) assert.isTrue(Option.isSome(closed), "releasing the pool Layer hung")
    return yield* exit
  }))

const pidOf = (rows: ReadonlyArray<{ readonly [column: string]: unknown }>): number => Number(rows[0]?.["pid"])

/** Waits until the pool reports `n` callers waiting (so that callers queue in a known order). */
const pendingIs = (pool: InteractionPool.InteractionPool, n: number) =>
  eventually(`${n} callers waiting`, pool.stats, (s) => s.pending === n, 2000)

// ---------------------------------------------------------------------------
// fault 1
// ---------------------------------------------------------------------------

describe("slots", () => {
  it.live("fault 1: a waiter refused without I/O does not hand the one connection out twice", () =>
    withPools({ maxSize: 1 }, Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.run(sql`SELECT 1`) // the one connection is open and idle
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(pool.interaction(() => Deferred.await(release)))
      yield* eventually("the holder to hold the connection", pool.stats, (s) => s.used === 1)

      const samples: Array<{ idle: number; used: number }> = []
      const sample = Effect.tap(pool.stats, (s) => Effect.sync(() => samples.push({ idle: s.idle, used: s.used })))
      const intervals: Array<{ tag: string; pid: number; start: number; end: number }> = []
      const worker = (tag: string) =>
        pool.interaction((conn) =>
          Effect.gen(function*() {
            const start = performance.now()
            yield* sample
            const first = pidOf(yield* conn.run(sql`SELECT pg_backend_pid() AS pid`))
            yield* Effect.sleep("40 millis")
            const second = pidOf(yield* conn.run(sql`SELECT pg_backend_pid() AS pid, pg_sleep(0.02)`))
            yield* sample
            intervals.push({ tag, pid: first, start, end: performance.now() })
            assert.strictEqual(second, first)
          })
        )
      // Waiters that finish without any I/O: refused before or right after they get the connection.
      const refusedBegin = pool.run(sql`BEGIN`)
      const refusedValue = pool.run(sql`SELECT ${new Map([[1, 2]])} AS x`)
      const queue: Array<readonly [string, Effect.Effect<unknown, unknown>]> = [
        ["begin-1", refusedBegin],
        ["worker-a", worker("a")],
        ["map-1", refusedValue],
        ["worker-b", worker("b")],
        ["begin-2", refusedBegin],
        ["worker-c", worker("c")],
        ["map-2", refusedValue],
        ["worker-d", worker("d")],
        ["noop", pool.interaction(() => Effect.void)],
        ["begin-3", refusedBegin],
        ["worker-e", worker("e")]
      ]
      const fibers: Array<readonly [string, Fiber.Fiber<unknown, unknown>]> = []
      for (const [tag, effect] of queue) {
        fibers.push([tag, yield* Effect.forkChild(effect)])
        // Each caller queues behind the holder, in a known order (one refused before it waits is simply done).
        yield* eventually(
          `${tag} to wait`,
          Effect.map(pool.stats, (s) => ({ pending: s.pending, running: fibers.filter(([, f]) => f.pollUnsafe() === undefined).length })),
          ({ pending, running }) => pending === running,
          2000
        )
      }
      const sampler = yield* Effect.forkChild(Effect.forever(Effect.andThen(sample, Effect.sleep("2 millis"))))
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      const exits = yield* within(
        "the queued callers",
        5000,
        Effect.forEach(fibers, ([tag, fiber]) => Effect.map(Fiber.await(fiber), (exit) => [tag, exit] as const))
      )
      yield* Fiber.interrupt(sampler)
      yield* sample

      const problems: Array<string> = []
      for (const [tag, exit] of exits) {
        const expected = tag.startsWith("worker") || tag === "noop" ? "success" : "InvalidInput"
        const got = Exit.isSuccess(exit) ? "success" : errorTag(exit)
        if (got !== expected) problems.push(`${tag}: expected ${expected}, got ${describeExit(exit)}`)
      }
      // Never two interactions on the one connection at the same time.
      for (const x of intervals) {
        for (const y of intervals) {
          if (x.tag < y.tag && x.pid === y.pid && x.start < y.end && y.start < x.end) {
            problems.push(`interactions ${x.tag} and ${y.tag} overlapped on backend ${x.pid}`)
          }
        }
      }
      // The counts stay sane throughout: never negative, never more idle than the pool's size.
      const bad = samples.filter((s) => s.used < 0 || s.idle < 0 || s.idle > 1 || s.idle + s.used > 1)
      problems.push(...bad.slice(0, 3).map((s) => `stats out of range: idle ${s.idle}, used ${s.used} (max 1)`))
      assert.deepStrictEqual(problems, [], "the one connection was handed out twice")
      assert.deepStrictEqual(
        yield* Effect.map(pool.stats, (s) => ({ idle: s.idle, used: s.used, pending: s.pending })),
        { idle: 1, used: 0, pending: 0 }
      )
      // And the pool still works, on one backend.
      assert.strictEqual((yield* h.sessions).length, 1)
      yield* within("a statement after the hand-outs", 3000, pool.run(sql`SELECT 1`))
    })))

  // ---------------------------------------------------------------------------
  // fault 2
  // ---------------------------------------------------------------------------

  it.live("fault 2: a statement interrupted in the same tick it was issued does not wedge its connection", () =>
    withPools({ maxSize: 1 }, Effect.gen(function*() {
      const pool = yield* WritePool
      const pid = pidOf(yield* pool.run(sql`SELECT pg_backend_pid() AS pid`))
      for (let i = 0; i < 5; i++) {
        const exit = yield* exitWithin(
          "Effect.all with a failing sibling",
          3000,
          Effect.all([pool.run(sql`SELECT 1`), Effect.fail("x" as const)], { concurrency: "unbounded" })
        )
        assert.strictEqual(errorTag(exit), "x", describeExit(exit))
        // The connection is usable afterwards: the next statements complete.
        const rows = yield* within(`the statement after same-tick interruption #${i + 1}`, 3000, pool.run(sql`SELECT pg_backend_pid() AS pid`))
        yield* within("a function interaction after it", 3000, pool.interaction((conn) => conn.run(sql`SELECT 1`)))
        const next = pidOf(rows)
        // Reused or replaced, but working; a replaced one must not linger on the server.
        if (next !== pid) yield* eventually("only the one backend left", h.sessions, (s) => s.length === 1, 2000)
      }
      yield* within("the statement at the end", 3000, pool.run(sql`SELECT 1`))
    })))

  // ---------------------------------------------------------------------------
  // fault 3
  // ---------------------------------------------------------------------------

  it.live("fault 3: releasing the pool Layer while connections are being opened leaves no backend behind", () =>
    Effect.gen(function*() {
      // A name of its own: a leaked backend must not make the other tests of this file fail.
      const appName = `${h.appName}-opening`
      const sessions = h.observe<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE application_name = $1", [appName])
      const leftAfterRelease = (what: string) =>
        Effect.gen(function*() {
          // Backends exit a moment after their client closes the socket.
          const left = yield* poll(sessions, (s) => s.length === 0, 1000)
          return left.length === 0 ? [] : [`${what}: ${left.length} backend(s) left`]
        })
      const leaks: Array<string> = []
      yield* Effect.gen(function*() {
        // minSize connections being opened when the Layer is released.
        for (const delay of [0, 1, 3, 10]) {
          const scope = yield* Scope.make()
          yield* Layer.buildWithScope(h.pools({ applicationName: appName, minSize: 4, maxSize: 4 }), scope)
          if (delay > 0) yield* Effect.sleep(Duration.millis(delay))
          yield* within("releasing the Layer", 5000, Scope.close(scope, Exit.void))
          leaks.push(...yield* leftAfterRelease(`minSize 4, released after ${delay} ms`))
        }
        // A statement that makes the pool open a connection; the Layer released during the connect.
        for (const delay of [0, 2, 5]) {
          const scope = yield* Scope.make()
          const context = yield* Layer.buildWithScope(h.pools({ applicationName: appName, maxSize: 2 }), scope)
          const pool = Context.get(context, WritePool)
          const fiber = yield* Effect.forkChild(pool.run(sql`SELECT 1`))
          if (delay > 0) yield* Effect.sleep(Duration.millis(delay))
          yield* within("releasing the Layer", 5000, Scope.close(scope, Exit.void))
          yield* within("the statement after release", 5000, Fiber.await(fiber))
          leaks.push(...yield* leftAfterRelease(`a statement connecting, released after ${delay} ms`))
        }
      }).pipe(
        // Whatever leaked is ended here, so it cannot outlive the test.
        Effect.ensuring(h.observe("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [appName]))
      )
      assert.deepStrictEqual(leaks, [], "backends of the pool outlived its Layer")
    }))
})

// ---------------------------------------------------------------------------
// faults 4 and 5: partial transactions
// ---------------------------------------------------------------------------

/** Rows this file writes to: far from the ids other files use. */
const ROW = { a: 9701, b: 9702, c: 9703 } as const

/** A value no seeded row has (seeded values are 0..1000). */
const mark = (id: number, n = 0) => -9_000_000 - id * 100 - n

const forUpdate = (id: number) => sql`SELECT id, val1 FROM test_values WHERE id = ${id} FOR UPDATE`
const update = (id: number, value: number) => sql`UPDATE test_values SET val1 = ${value} WHERE id = ${id}`
const xidAndPid = sql`SELECT pg_current_xact_id()::text AS xid, pg_backend_pid() AS pid`

/** Sessions of this file's pools idle inside a transaction, as the server sees them. */
const idleInTransaction = Effect.map(
  h.sessions,
  (s) => s.filter((x) => x.state === "idle in transaction" || x.state === "idle in transaction (aborted)")
)

/** Locks on test_values held by sessions of this file's pools. */
const tableLocks = h.observe<{ pid: number; locktype: string; mode: string; granted: boolean }>(
  `SELECT l.pid, l.locktype, l.mode, l.granted FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
   WHERE a.application_name = $1 AND l.relation = 'test_values'::regclass`,
  [h.appName]
)

/** Can another session lock the row right now? (NOWAIT: fails at once if someone holds it.) */
const rowLockable = (id: number) =>
  Effect.map(
    Effect.exit(h.observe("SELECT id FROM test_values WHERE id = $1 FOR UPDATE NOWAIT", [id])),
    Exit.isSuccess
  )

let channelCounter = 0
const channel = (name: string) => `regr_${name}_${process.pid}_${++channelCounter}`

describe("partial transactions", () => {
  it.live("fault 4: tx.run, tx.notify and tx.commit inside tx.interaction run in the same transaction instead of deadlocking", () =>
    h.withRows([ROW.a, ROW.b], () =>
      withPools({}, Effect.gen(function*() {
        const pool = yield* WritePool
        const n = yield* Notifications.Notifications
        const problems: Array<string> = []

        // tx.run inside a step: same connection, same transaction.
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(forUpdate(ROW.a))
          const exit = yield* exitWithin(
            "tx.run inside tx.interaction",
            2000,
            tx.interaction((conn) =>
              Effect.gen(function*() {
                const [viaConn] = yield* conn.run(xidAndPid)
                const [viaTx] = yield* tx.run(xidAndPid)
                return { viaConn, viaTx }
              })
            )
          )
          if (Exit.isFailure(exit)) return problems.push(`tx.run inside tx.interaction: ${describeExit(exit)}`)
          const { viaConn, viaTx } = exit.value
          assert.strictEqual(viaTx?.["pid"], tx.pid)
          assert.strictEqual(viaConn?.["pid"], tx.pid)
          assert.strictEqual(viaTx?.["xid"], viaConn?.["xid"], "tx.run inside the step ran in another transaction")
        }))

        // tx.notify inside a step: delivered at commit.
        const ch = channel("in_step")
        const subscribed = yield* Deferred.make<void>()
        const received = yield* Deferred.make<string>()
        const listener = yield* Effect.forkChild(n.listen(ch).pipe(
          Stream.runForEach((event) =>
            event._tag === "Subscribed" ? Deferred.succeed(subscribed, undefined) : Deferred.succeed(received, event.payload)
          )
        ))
        yield* within("Subscribed", 5000, Deferred.await(subscribed))
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          const exit = yield* exitWithin("tx.notify inside tx.interaction", 2000, tx.interaction(() => tx.notify(ch, "from the step")))
          if (Exit.isFailure(exit)) return problems.push(`tx.notify inside tx.interaction: ${describeExit(exit)}`)
          yield* within("commit after tx.notify", 3000, tx.commit)
          assert.strictEqual(yield* within("the notification", 3000, Deferred.await(received)), "from the step")
        }))
        yield* Fiber.interrupt(listener)

        // tx.commit inside a step: commits (or is refused with InvalidInput); never waits forever.
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          const exit = yield* exitWithin(
            "tx.commit inside tx.interaction",
            2000,
            tx.interaction((conn) => Effect.andThen(conn.run(update(ROW.b, mark(ROW.b))), tx.commit))
          )
          if (Exit.isFailure(exit)) {
            if (errorTag(exit) !== "InvalidInput") return problems.push(`tx.commit inside tx.interaction: ${describeExit(exit)}`)
            yield* within("tx.commit after the refused one", 3000, tx.commit)
          }
          // Committed, both rows, as seen from outside; the transaction is finished.
          assert.strictEqual(yield* h.val1(ROW.a), mark(ROW.a))
          assert.strictEqual(yield* h.val1(ROW.b), mark(ROW.b))
          const late = yield* exitWithin("a step after commit", 3000, tx.run(sql`SELECT 1`))
          assert.strictEqual(errorTag(late), "InvalidInput")
        }))
        assert.deepStrictEqual(problems, [], "a partial transaction deadlocked on itself")
      }))))

  it.live("fault 4: the Connection handle of a step refuses with InvalidInput once the step has ended", () =>
    h.withRows([ROW.c], (original) =>
      withPools({}, Effect.gen(function*() {
        const pool = yield* WritePool
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          let kept: Connection.Connection | undefined
          yield* tx.interaction((conn) =>
            Effect.sync(() => {
              kept = conn
            })
          )
          if (kept === undefined) return assert.fail("the step did not run")
          const handle = kept
          // Between steps: the step is over, its handle must not run outside the step lock.
          const between = yield* exitWithin("the handle between steps", 3000, handle.run(update(ROW.c, mark(ROW.c, 1))))
          assert.strictEqual(errorTag(between), "InvalidInput", `a handle used after its step: ${describeExit(between)}`)
          const notify = yield* exitWithin("notify on the handle between steps", 3000, handle.notify(channel("stale"), "x"))
          assert.strictEqual(errorTag(notify), "InvalidInput")
          const nested = yield* exitWithin("transaction on the handle between steps", 3000, handle.transaction((c) => c.run(sql`SELECT 1`)))
          assert.strictEqual(errorTag(nested), "InvalidInput")
          // Another step gets a handle that works; the old one stays refused.
          yield* tx.interaction((conn) => conn.run(sql`SELECT 1`))
          yield* tx.commit
          // After commit: the old handle must not run a statement outside any transaction.
          const afterCommit = yield* exitWithin("the handle after commit", 3000, handle.run(update(ROW.c, mark(ROW.c, 2))))
          assert.strictEqual(errorTag(afterCommit), "InvalidInput", `a handle used after commit: ${describeExit(afterCommit)}`)
        }))
        assert.strictEqual(yield* h.val1(ROW.c), original.get(ROW.c), "a refused statement changed the row")
      }))))

  it.live("fault 5: an interrupted tx.commit leaves no session idle in transaction and no row lock behind", () =>
    h.withRows([ROW.a], () =>
      withPools({ maxSize: 1 }, Effect.gen(function*() {
        const pool = yield* WritePool
        const problems: Array<string> = []
        const iterations = 36
        for (let i = 0; i < iterations; i++) {
          const value = mark(ROW.a, i)
          const how = ["timeout", "interrupt", "interrupt after yield"][i % 3]!
          const commitExit = yield* within(
            `iteration ${i} (${how})`,
            5000,
            Effect.scoped(Effect.gen(function*() {
              const tx = yield* pool.partialTransaction()
              yield* tx.run(forUpdate(ROW.a))
              yield* tx.run(update(ROW.a, value))
              if (how === "timeout") {
                return yield* Effect.exit(Effect.timeout(tx.commit, Duration.millis(Math.floor(i / 3) % 4)))
              }
              const fiber = yield* Effect.forkChild(tx.commit)
              if (how === "interrupt after yield") yield* Effect.yieldNow
              yield* Fiber.interrupt(fiber)
              return yield* Fiber.await(fiber)
            }))
          )
          // Seen from outside once the scope is closed: nothing idle in a transaction, no lock, a definite outcome.
          const stuck = yield* poll(idleInTransaction, (s) => s.length === 0, 1000)
          if (stuck.length > 0) problems.push(`iteration ${i} (${how}): ${stuck.length} session(s) idle in transaction`)
          const locks = yield* tableLocks
          if (locks.length > 0) problems.push(`iteration ${i} (${how}): locks on test_values left: ${JSON.stringify(locks)}`)
          if (!(yield* rowLockable(ROW.a))) problems.push(`iteration ${i} (${how}): the row is still locked`)
          const seen = yield* h.val1(ROW.a)
          if (Exit.isSuccess(commitExit) && seen !== value) {
            problems.push(`iteration ${i} (${how}): commit succeeded but the row shows ${seen}, not ${value}`)
          }
          // The pool's connection works for the next caller.
          const next = yield* exitWithin(`the statement after iteration ${i}`, 3000, pool.run(sql`SELECT 1`))
          if (Exit.isFailure(next)) problems.push(`iteration ${i} (${how}): the next statement failed: ${describeExit(next)}`)
          if (problems.length > 0) break
        }
        assert.deepStrictEqual(problems, [])
      }))))
})

describe("commit", () => {
  // A COMMIT that takes a while on the server: a deferred constraint trigger sleeps 300 ms when it fires.
  const setup = [
    "DROP TABLE IF EXISTS regress_slow_commit",
    "CREATE TABLE regress_slow_commit (id int PRIMARY KEY, v int NOT NULL)",
    "INSERT INTO regress_slow_commit VALUES (1, 0)",
    "CREATE OR REPLACE FUNCTION regress_slow_commit_sleep() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$",
    "CREATE CONSTRAINT TRIGGER regress_slow_commit_sleep AFTER UPDATE ON regress_slow_commit DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION regress_slow_commit_sleep()"
  ]
  const teardown = ["DROP TABLE IF EXISTS regress_slow_commit", "DROP FUNCTION IF EXISTS regress_slow_commit_sleep()"]

  it.live("fault 5: a COMMIT that was sent is awaited when its fiber is interrupted; the commit stands and the connection stays clean", () =>
    Effect.gen(function*() {
      for (const text of setup) yield* h.observe(text)
      yield* withPools({ maxSize: 1 }, Effect.gen(function*() {
        const pool = yield* WritePool
        for (const [i, how] of (["partial transaction", "transaction"] as const).entries()) {
          const value = i + 1
          const committing = yield* Effect.forkChild(
            how === "partial transaction"
              ? Effect.scoped(Effect.gen(function*() {
                const tx = yield* pool.partialTransaction()
                yield* tx.run(sql`UPDATE regress_slow_commit SET v = ${value} WHERE id = 1`)
                yield* tx.commit
              }))
              : pool.transaction((conn) => conn.run(sql`UPDATE regress_slow_commit SET v = ${value} WHERE id = 1`))
          )
          // Interrupted while the server runs the deferred trigger inside COMMIT.
          yield* eventually(
            `${how}: COMMIT running on the server`,
            h.observe<{ query: string }>("SELECT query FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'", [h.appName]),
            (rows) => rows.some((r) => r.query === "COMMIT")
          )
          yield* within(`${how}: the interrupted commit`, 5000, Fiber.interrupt(committing))
          const exit = yield* Fiber.await(committing)
          const rows = yield* h.observe<{ v: number }>("SELECT v FROM regress_slow_commit WHERE id = 1")
          assert.strictEqual(rows[0]?.v, value, `${how}: the COMMIT that was sent took effect (exit: ${describeExit(exit)})`)
          assert.deepStrictEqual(yield* idleInTransaction, [], `${how}: no session idle in transaction`)
          assert.isTrue(yield* within(`${how}: the next holder`, 3000, outsideTransaction), `${how}: the next holder is outside any transaction`)
        }
      }))
    }).pipe(Effect.ensuring(Effect.forEach(teardown, (text) => h.observe(text), { discard: true }))))
})

// ---------------------------------------------------------------------------
// fault 6: shared waiters behind an exclusive waiter that leaves
// ---------------------------------------------------------------------------

describe("waiting", () => {
  it.live("fault 6: single statements queued behind an exclusive waiter join the shared connection once that waiter leaves", () =>
    withPools({ maxSize: 1, acquireTimeout: "300 millis" }, Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.run(sql`SELECT 1`)
      const problems: Array<string> = []
      for (const how of ["interrupted", "Effect.timeout", "acquireTimeout"] as const) {
        // A long single statement holds the one connection, shared: more single statements may pipeline on it.
        const sleepMillis = how === "acquireTimeout" ? 800 : 700
        const sleeper = yield* Effect.forkChild(Effect.gen(function*() {
          yield* pool.run(sql`SELECT pg_sleep(${sleepMillis / 1000}::float8)`)
          return performance.now()
        }))
        yield* eventually("the sleeping statement to hold the connection", pool.stats, (s) => s.used === 1, 2000)
        const started = performance.now()
        // An exclusive waiter at the head of the queue: nobody may join the shared connection meanwhile.
        const exclusive = yield* Effect.forkChild(
          how === "Effect.timeout"
            ? Effect.timeout(pool.interaction((conn) => conn.run(sql`SELECT 1`)), "50 millis")
            : pool.interaction((conn) => conn.run(sql`SELECT 1`))
        )
        yield* pendingIs(pool, 1)
        // acquireTimeout 300 ms: the exclusive waiter times out at ~300 ms; these, queued at ~150 ms, would at ~450 ms.
        if (how === "acquireTimeout") yield* Effect.sleep("150 millis")
        const singles = yield* Effect.forEach([1, 2, 3], (i) =>
          Effect.forkChild(Effect.gen(function*() {
            const exit = yield* Effect.exit(pool.run(sql`SELECT ${i}::int AS i`))
            return { exit, at: performance.now() }
          })))
        yield* pendingIs(pool, 4)
        if (how === "interrupted") {
          yield* Effect.sleep("50 millis")
          yield* Fiber.interrupt(exclusive)
        }
        const exclusiveExit = yield* exitWithin("the exclusive waiter", 2000, Fiber.join(exclusive))
        const gone = performance.now()
        if (how === "acquireTimeout") assert.strictEqual(errorTag(exclusiveExit), "PoolTimeout", `${how}: the exclusive waiter: ${describeExit(exclusiveExit)}`)
        else assert.isTrue(Exit.isFailure(exclusiveExit), `${how}: the exclusive waiter: ${describeExit(exclusiveExit)}`)
        // The queued single statements get their place at once, not at the next release.
        const waiting = yield* poll(Effect.map(pool.stats, (s) => s.pending), (p) => p === 0, 150)
        if (waiting !== 0) problems.push(`${how}: ${waiting} single statements still waiting 150 ms after the exclusive waiter left`)
        const exits = yield* Effect.forEach(singles, (fiber) => exitWithin("a queued single statement", 3000, Fiber.join(fiber)))
        const sleptUntil = yield* within("the sleeping statement", 3000, Fiber.join(sleeper))
        exits.forEach((exit, k) => {
          if (Exit.isFailure(exit)) return problems.push(`${how}: queued statement ${k + 1}: ${describeExit(exit)}`)
          const { exit: result, at } = exit.value
          if (Exit.isFailure(result)) {
            problems.push(
              `${how}: queued statement ${k + 1} failed at ${Math.round(at - started)} ms (the exclusive waiter left at ${
                Math.round(gone - started)
              } ms, the connection was free at ${Math.round(sleptUntil - started)} ms): ${describeExit(result)}`
            )
          } else assert.strictEqual(result.value[0]?.["i"], k + 1)
        })
      }
      assert.deepStrictEqual(problems, [])
    })))
})

// ---------------------------------------------------------------------------
// fault 7: the listener
// ---------------------------------------------------------------------------

/** A port with nothing listening on it (a moment ago). */
const freePort = Effect.callback<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

const withPort = (port: number): Redacted.Redacted<string> => {
  const url = new URL(Redacted.value(databaseUrl))
  url.port = String(port)
  return Redacted.make(url.toString())
}

interface LogLine {
  readonly level: string
  /** The message, its cause and its annotations as text (errors with their messages). */
  readonly text: string
}

const asText = (value: unknown): string =>
  value instanceof Error
    ? `${value.name}: ${value.message} ${value.cause === undefined ? "" : asText(value.cause)}`
    : typeof value === "string"
    ? value
    : JSON.stringify(value) ?? String(value)

/** A logger that keeps every line with its cause and annotations. */
const captureLogs = () => {
  const lines: Array<LogLine> = []
  const logger = Logger.make((options) => {
    const messages: ReadonlyArray<unknown> = Array.isArray(options.message) ? options.message : [options.message]
    const annotations = options.fiber.getRef(References.CurrentLogAnnotations)
    lines.push({
      level: options.logLevel,
      text: [
        ...messages.map(asText),
        Cause.pretty(options.cause),
        ...Object.entries(annotations).map(([k, v]) => `${k}=${asText(v)}`)
      ].join(" ")
    })
  })
  return { lines, layer: Logger.layer([logger]) }
}

describe("listener", () => {
  it.live("fault 7: after a reconnect no notification reaches a subscriber before its Subscribed { resubscribed: true }", () =>
    withPools({}, Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      // The notifications go to the first channel; the LISTENs of the others widen the window in which the
      // first is listened to again but the subscriber has not been told yet.
      const channels = Array.from({ length: 40 }, (_, i) => channel(`order_${i}`))
      const target = channels[0]!
      type Seen = { readonly _tag: "Subscribed"; readonly resubscribed: boolean } | { readonly _tag: "Notification"; readonly seq: number }
      const seen: Array<Seen> = []
      const ready = yield* Effect.forEach(channels, () => Deferred.make<void>())
      yield* Effect.forEach(channels, (ch, i) =>
        Effect.forkChild(n.listen(ch, { bufferSize: 1_000_000 }).pipe(
          Stream.runForEach((event) =>
            Effect.sync(() => {
              if (ch === target) {
                seen.push(event._tag === "Subscribed"
                  ? { _tag: "Subscribed", resubscribed: event.resubscribed }
                  : { _tag: "Notification", seq: Number(event.payload) })
              }
            }).pipe(Effect.andThen(event._tag === "Subscribed" ? Deferred.succeed(ready[i]!, undefined) : Effect.void))
          )
        )))
      yield* within("every channel subscribed", 5000, Effect.forEach(ready, Deferred.await))

      // Senders outside the pool, NOTIFYing continuously with an increasing sequence number.
      const spam = postgres(Redacted.value(databaseUrl), { max: 6, onnotice: () => {}, connection: { application_name: `${h.appName}-sender` } })
      let seq = 0
      let stop = false
      const sender = async () => {
        while (!stop) {
          const s = ++seq
          await spam`SELECT pg_notify(${target}, ${String(s)})`
        }
      }
      const senders = Promise.all(Array.from({ length: 6 }, sender))
      const rounds: Array<{ goneAt: number; resubscribedAt: number }> = []
      yield* Effect.gen(function*() {
        for (let round = 0; round < 3; round++) {
          yield* Effect.sleep("100 millis")
          const pid = yield* n.listenerPid
          if (pid === undefined) return assert.fail("the listening connection is not connected")
          const [killed] = yield* h.observe<{ ok: boolean }>("SELECT pg_terminate_backend($1) AS ok", [pid])
          assert.isTrue(killed?.ok)
          // Watched closely (no sleep: the reconnect takes a few milliseconds only): once the server no longer
          // lists the backend, anything sent from then on can only come through the new listening connection.
          const deadline = Date.now() + 3000
          while ((yield* h.observe("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [pid])).length > 0) {
            if (Date.now() > deadline) return assert.fail(`the listening backend ${pid} did not exit`)
          }
          const goneAt = seq
          const count = () => seen.filter((e) => e._tag === "Subscribed" && e.resubscribed).length
          yield* eventually("Subscribed { resubscribed: true }", Effect.sync(count), (c) => c === round + 1, 5000)
          rounds.push({ goneAt, resubscribedAt: seq })
        }
        yield* Effect.sleep("100 millis")
      }).pipe(Effect.ensuring(Effect.promise(async () => {
        stop = true
        await senders.catch(() => undefined)
        await spam.end({ timeout: 1 })
      })))

      // In each round, the notifications between the previous Subscribed and this resubscription.
      const early: Array<string> = []
      let round = -1
      let afterLast = 0
      for (const e of seen) {
        if (e._tag === "Subscribed") {
          round = e.resubscribed ? round + 1 : round
          continue
        }
        const next = rounds[round + 1]
        if (next !== undefined && e.seq > next.goneAt) {
          early.push(`round ${round + 2}: notification ${e.seq} (sent after the old backend was gone at ${next.goneAt}) before Subscribed`)
        }
        if (round === rounds.length - 1) afterLast++
      }
      const perRound = rounds.map((_, k) => early.filter((e) => e.startsWith(`round ${k + 1}:`)).length)
      assert.deepStrictEqual(
        early.slice(0, 5),
        [],
        `${early.length} notifications (per reconnect: ${perRound.join(", ")}) reached the subscriber before its Subscribed { resubscribed: true }`
      )
      assert.isAbove(afterLast, 0, "delivery resumed after the last resubscription")
    })))

  it.live("fault 7: failed attempts to (re)connect the listening connection are logged, without the password", () => {
    const { lines, layer } = captureLogs()
    return Effect.gen(function*() {
      const port = yield* freePort
      const body = Effect.gen(function*() {
        const n = yield* Notifications.Notifications
        const subscriber = yield* Effect.forkChild(Stream.runDrain(n.listen(channel("unreachable"))))
        const warned = (l: LogLine) => (l.level === "Warn" || l.level === "Error") && /listen/i.test(l.text) && /connect/i.test(l.text)
        yield* poll(Effect.sync(() => lines.some(warned)), (ok) => ok, 1500)
        yield* Fiber.interrupt(subscriber)
        assert.isTrue(
          lines.some(warned),
          `no warning about the listening connection failing to connect within 1.5 s; logged: ${JSON.stringify(lines.map((l) => [l.level, l.text.slice(0, 200)]))}`
        )
        const password = new URL(inject("databaseUrl")).password
        assert.isAbove(password.length, 0)
        assert.notInclude(lines.map((l) => l.text).join("\n"), password)
      })
      yield* withPools({ url: withPort(port), connectTimeout: "1 second" }, body)
    }).pipe(Effect.provide(layer))
  })
})

// ---------------------------------------------------------------------------
// fault 8: statement_timeout racing an interruption
// ---------------------------------------------------------------------------

describe("cancel requests", () => {
  /** Blocks the event loop, as a busy process does: nothing is read from any socket meanwhile. */
  const busyWait = (millis: number) => {
    const until = performance.now() + millis
    while (performance.now() < until) {
      // spin
    }
  }

  it.live("fault 8: a statement_timeout racing an interruption never cancels the next holder's statement", () =>
    Effect.gen(function*() {
      const stray: Array<string> = []
      // The race made certain: the server times the statement out (statement_timeout 80 ms, set for the
      // session at connect) while the client's event loop is busy, and the interruption comes before the
      // client has read that error. The 57014 it then reads is the server's own, not the answer to the
      // cancel request, which is still on its way and must not hit whoever holds the connection next.
      // The next holder's 15 ms statement runs under the same session timeout: the 65 ms between them is
      // there so that a loaded machine does not time it out on its own (25 ms left 10, and a CI run hit it).
      const withTimeout = Redacted.make(`${Redacted.value(databaseUrl)}?statement_timeout=80`)
      yield* withPools({ maxSize: 1, url: withTimeout }, Effect.gen(function*() {
        const pool = yield* WritePool
        for (let i = 0; i < 20; i++) {
          const sleeping = yield* Effect.forkChild(pool.run(sql`SELECT pg_sleep(1)`))
          yield* Effect.sleep("5 millis")
          yield* Effect.sync(() => {
            busyWait(90)
            sleeping.interruptUnsafe()
          })
          yield* exitWithin(`the interrupted statement ${i}`, 8000, Fiber.join(sleeping))
          const next = yield* exitWithin(`the next holder's statement ${i}`, 3000, pool.run(sql`SELECT pg_sleep(0.015)`))
          if (Exit.isFailure(next)) stray.push(`busy loop, iteration ${i}: ${describeExit(next)}`)
        }
      }))
      // The race as it comes: statement_timeout 20 ms, the interruption at 17..23 ms.
      yield* withPools({ maxSize: 1 }, Effect.gen(function*() {
        const pool = yield* WritePool
        for (let i = 0; i < 30; i++) {
          const interruptAt = 17 + (i % 7)
          yield* exitWithin(
            `the timed-out transaction ${i}`,
            8000,
            pool.transaction((conn) =>
              Effect.gen(function*() {
                yield* conn.run(sql`SET LOCAL statement_timeout = '20ms'`)
                yield* conn.run(sql`SELECT pg_sleep(1)`)
              })
            ).pipe(Effect.timeout(Duration.millis(interruptAt)))
          )
          const next = yield* exitWithin(`the next holder's statement ${i}`, 3000, pool.run(sql`SELECT pg_sleep(0.05)`))
          if (Exit.isFailure(next)) stray.push(`transaction interrupted at ${interruptAt} ms, iteration ${i}: ${describeExit(next)}`)
        }
      }))
      assert.deepStrictEqual(stray.slice(0, 5), [], `${stray.length} of 50 next holders failed`)
    }))

  /** Waits until the server runs a statement of this file's pools whose text includes `text`. */
  const running = (text: string) =>
    eventually(`"${text}" running`, h.sessions, (ss) => ss.some((s) => s.state === "active" && s.query.includes(text)))
  /** The statement is inside pg_sleep (past parsing and planning, inside any exception block around it). */
  const inSleep = (text: string) =>
    eventually(
      `"${text}" sleeping`,
      h.observe<{ n: number }>("SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND strpos(query, $1) > 0", [text]),
      (rows) => rows[0]?.n === 1
    )

  it.live("fault 11: a connection in doubt stays in doubt: a later cancel that lands does not make it reusable", () =>
    withPools({ maxSize: 1 }, Effect.gen(function*() {
      const pool = yield* WritePool
      const pid = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          const [row] = yield* conn.run(sql`SELECT pg_backend_pid() AS pid`)
          // This statement swallows the cancel and succeeds: nothing proves the cancel request landed, so one
          // may still land later (the connection is in doubt).
          const swallowing = yield* Effect.forkChild(
            conn.run(sql`DO $$ BEGIN PERFORM pg_sleep(0.5); EXCEPTION WHEN query_canceled THEN NULL; END $$`)
          )
          // Sleeping, not merely active: a cancel landing before the block is entered would prove itself (57014).
          yield* inSleep("pg_sleep(0.5)")
          yield* Fiber.interrupt(swallowing)
          // This one's cancel lands, which proves nothing about the earlier one.
          const sleeping = yield* Effect.forkChild(conn.run(sql`SELECT pg_sleep(5)`))
          yield* running("pg_sleep(5)")
          yield* Fiber.interrupt(sleeping)
          return Number(row?.["pid"])
        })
      )
      const [after] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid`)
      assert.notStrictEqual(Number(after?.["pid"]), pid, "the connection in doubt was retired, not handed out again")
    })))

  it.live("fault 12: a statement left running by a fiber that outlived its interaction is not handed to the next holder", () =>
    withPools({ maxSize: 1 }, Effect.gen(function*() {
      const pool = yield* WritePool
      const { left, pid } = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          const [row] = yield* conn.run(sql`SELECT pg_backend_pid() AS pid`)
          // Detached: it outlives the interaction, with its statement still running on the connection.
          const left = yield* Effect.forkDetach(conn.run(sql`SELECT pg_sleep(0.5)`))
          yield* running("pg_sleep(0.5)")
          return { left, pid: Number(row?.["pid"]) }
        })
      )
      // The next holder gets a connection of its own, not a place in the queue behind (or under a cancel of) that one.
      const [after] = yield* within("the next statement", 3000, pool.run(sql`SELECT pg_backend_pid() AS pid`))
      assert.notStrictEqual(Number(after?.["pid"]), pid, "the connection with a statement left running was closed, not reused")
      // The left statement ends with a typed error (its connection was closed under it), not a hang.
      const exit = yield* exitWithin("the left statement", 5000, Fiber.join(left))
      assert.strictEqual(errorTag(exit), "ConnectionLost", describeExit(exit))
      yield* eventually("the old backend gone", h.sessions, (ss) => !ss.some((s) => s.pid === pid))
    })))
})

describe("results", () => {
  it.live("a statement that fails after sending rows leaves no holes in the next result on that connection", () =>
    withPools({ maxSize: 1 }, Effect.gen(function*() {
      const pool = yield* WritePool
      // Rows 1 and 2 are sent before row 3 divides by zero.
      const failed = yield* Effect.flip(pool.run(sql`SELECT 1 / (3 - x) AS v FROM generate_series(1, 5) AS x`))
      assert.strictEqual(failed._tag, "DatabaseError")
      assert.deepStrictEqual(yield* pool.run(sql`SELECT 1 AS one`), [{ one: 1 }])
      assert.deepStrictEqual(yield* pool.interaction((conn) => conn.run(sql`SELECT ${"a"}::text AS x UNION ALL SELECT ${"b"}::text`)), [{ x: "a" }, { x: "b" }])
    })))
})

describe("connects", () => {
  it.live("fault 10: a connect that fails before any I/O (a password effect failing at once) fails typed; the pool never spins on it", () =>
    Effect.gen(function*() {
      // Fails without waiting for anything, so the connect attempt ends inside the call that starts it.
      const password = Effect.fail(new Error("the secret store is unreachable"))
      // With the start-up check (the default) the Layer itself fails.
      const built = yield* exitWithin("building the pool Layer", 10_000, Effect.scoped(Layer.build(h.pools({ minSize: 2, password, checkOnStart: true }))))
      assert.strictEqual(errorTag(built), "ConnectFailed", describeExit(built))
      // Without it the Layer builds, each caller fails typed, and timers still fire in between (nothing spins).
      yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(h.pools({ minSize: 2, password, checkOnStart: false }))
        const pool = Context.get(context, WritePool)
        for (let i = 0; i < 3; i++) {
          const exit = yield* exitWithin("a statement", 10_000, pool.run(sql`SELECT 1`))
          assert.strictEqual(errorTag(exit), "ConnectFailed", describeExit(exit))
          // A timer fires (nothing spins); each caller's wait also started minSize top-ups, each failing at once.
          yield* Effect.sleep("60 millis")
        }
        assert.deepInclude(yield* pool.stats, { idle: 0, used: 0, pending: 0 })
      }))
      assert.deepStrictEqual(yield* h.sessions, [])
    }))
})

describe("sizes", () => {
  it.live("fault 9: stats.serverMax says how many backends the Layer may open on the pool's server", () =>
    Effect.gen(function*() {
      // No readUrl: both pools and the listening connection on one server.
      yield* withPools({ maxSize: 16 }, Effect.gen(function*() {
        const write = yield* (yield* WritePool).stats
        const read = yield* (yield* ReadPool).stats
        assert.strictEqual(write.max, 16)
        assert.strictEqual(read.max, 16)
        assert.strictEqual(write.serverMax, 33, "write: 16 + 16 read + 1 listening")
        assert.strictEqual(read.serverMax, 33, "read: the same server as the write pool")
        assert.deepStrictEqual(yield* h.sessions, [], "nothing was opened to find that out")
      }))
      // A read server of its own.
      yield* withPools({ maxSize: 16, readUrl: otherHostName(), readMaxSize: 5 }, Effect.gen(function*() {
        const write = yield* (yield* WritePool).stats
        const read = yield* (yield* ReadPool).stats
        assert.strictEqual(write.serverMax, 17, "write: 16 + 1 listening")
        assert.strictEqual(read.serverMax, 5, "read: its own max")
        assert.deepStrictEqual(yield* h.sessions, [], "nothing was opened to find that out")
      }))
    }))

  it.live("fault 9: the read pool opens no connection until it is used, even with minSize set", () =>
    withPools({ minSize: 2, maxSize: 4 }, Effect.gen(function*() {
      const write = yield* WritePool
      const read = yield* ReadPool
      yield* eventually("the write pool's minSize connections", write.stats, (s) => s.idle === 2)
      yield* Effect.sleep("300 millis")
      const before = yield* h.sessions
      assert.strictEqual(before.length, 2, `backends before any read: ${JSON.stringify(before)}`)
      const r = yield* read.stats
      assert.deepStrictEqual({ idle: r.idle, used: r.used }, { idle: 0, used: 0 })
      yield* read.run(sql`SELECT 1`)
      assert.strictEqual((yield* h.sessions).length, 3, "the read pool opened its first connection when used")
    })))
})
