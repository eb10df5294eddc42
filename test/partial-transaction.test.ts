/**
 * `pool.partialTransaction()` against the real server: a transaction held
 * open in a scope, its steps run whenever the program likes, with row locks
 * checked in `pg_locks` and by other connections; rollback when the scope
 * closes without commit; serialised steps; a backend terminated under it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Data, Deferred, Effect, Exit, Fiber } from "effect"
import { sql, WritePool } from "effect-dbpool"
import { afterAll, afterEach, expect } from "vitest"
import { harness, outsideTransaction, poll } from "./support.ts"

const h = harness("partial-transaction")

// A driver failure that escapes the library (postgres.js's "Cannot read properties of null" on a dead socket,
// a rejected promise nobody awaits) must not happen: every one is recorded and fails the test it happened in.
const escaped: Array<{ kind: string; error: unknown }> = []
const onUncaughtException = (error: unknown) => {
  escaped.push({ kind: "uncaughtException", error })
}
const onUnhandledRejection = (error: unknown) => {
  escaped.push({ kind: "unhandledRejection", error })
}
process.on("uncaughtException", onUncaughtException)
process.on("unhandledRejection", onUnhandledRejection)
afterEach(() => {
  const seen = escaped.splice(0)
  expect(seen.map((e) => `${e.kind}: ${String(e.error)}`)).toEqual([])
})
afterAll(() => {
  process.off("uncaughtException", onUncaughtException)
  process.off("unhandledRejection", onUnhandledRejection)
})

class Boom extends Data.TaggedError("Boom")<{ readonly reason: string }> {}

/** Rows this file writes to: far from ids other files are likely to use. */
const ROW = { a: 9301, b: 9302, c: 9303 } as const

/** A value no seeded row has (seeded values are 0..1000). */
const mark = (id: number) => -8_000_000 - id

/** The error `self` fails with; a success is a defect, so the test fails saying what it got. */
const failure = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<E, never, R> =>
  Effect.flip(self).pipe(Effect.mapError((a) => new Error(`expected a failure, got a success: ${JSON.stringify(a)}`)), Effect.orDie)

const { val1, withRows } = h

interface Lock {
  readonly locktype: string
  readonly relation: string | null
  readonly mode: string
  readonly granted: boolean
}

/** The locks a backend holds or waits for, as the server reports them. */
const locksOf = (pid: number) =>
  h.observe<Lock>("SELECT locktype, relation::regclass::text AS relation, mode, granted FROM pg_locks WHERE pid = $1", [pid])

/** Does the backend hold a row lock on test_values (the table's RowShareLock and its own transaction id)? */
const holdsRowLock = (locks: ReadonlyArray<Lock>): boolean =>
  locks.some((l) => l.locktype === "relation" && l.relation === "test_values" && l.mode === "RowShareLock" && l.granted) &&
  locks.some((l) => l.locktype === "transactionid" && l.mode === "ExclusiveLock" && l.granted)

/** The server-side state of one backend (`idle`, `idle in transaction`, …), undefined if gone. */
const stateOf = (pid: number): Effect.Effect<string | null | undefined> =>
  Effect.map(h.observe<{ state: string | null }>("SELECT state FROM pg_stat_activity WHERE pid = $1", [pid]), (rows) => rows[0]?.state)

const forUpdate = (id: number) => sql`SELECT id, val1 FROM test_values WHERE id = ${id} FOR UPDATE`
const nowait = (id: number) => sql`SELECT id FROM test_values WHERE id = ${id} FOR UPDATE NOWAIT`
const update = (id: number, value: number) => sql`UPDATE test_values SET val1 = ${value} WHERE id = ${id}`

/** Tries to take the row lock at once from another pool connection. */
const tryLock = (id: number) =>
  Effect.gen(function*() {
    const pool = yield* WritePool
    return yield* Effect.exit(pool.run(nowait(id)))
  })

const lockRefused = (exit: Exit.Exit<unknown, { readonly _tag: string }>): boolean =>
  Exit.isFailure(exit) && Exit.findErrorOption(exit).pipe((o) => o._tag === "Some" && o.value._tag === "LockNotAvailable")

const lockTaken = (exit: Exit.Exit<ReadonlyArray<unknown>, unknown>): boolean => Exit.isSuccess(exit) && exit.value.length === 1


describe("partial transactions", () => {
  it.live("a row lock taken in one step is held across other work until the step that commits", () =>
    withRows([ROW.a, ROW.b], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const pid = yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          const [locked] = yield* tx.run(forUpdate(ROW.a))
          assert.strictEqual(locked?.["id"], ROW.a)
          const [own] = yield* tx.run(sql`SELECT pg_backend_pid() AS pid`)
          assert.strictEqual(own?.["pid"], tx.pid)

          // The server shows the lock held by tx.pid, and another connection cannot take it.
          assert.isTrue(holdsRowLock(yield* locksOf(tx.pid)), JSON.stringify(yield* locksOf(tx.pid)))
          assert.strictEqual(yield* stateOf(tx.pid), "idle in transaction")
          const refused = yield* failure(pool.run(nowait(ROW.a)))
          assert.strictEqual(refused._tag, "LockNotAvailable")
          assert.strictEqual("sqlState" in refused ? refused.sqlState : undefined, "55P03")

          // Anything in between: other interactions, other fibers, sleeps.
          const [other] = yield* pool.run(sql`SELECT val1 FROM test_values WHERE id = ${ROW.b}`)
          assert.strictEqual(other?.["val1"], original.get(ROW.b))
          const fiber = yield* Effect.forkChild(Effect.gen(function*() {
            yield* Effect.sleep("50 millis")
            yield* pool.transaction((conn) => conn.run(update(ROW.b, mark(ROW.b))))
            return yield* tryLock(ROW.a)
          }))
          yield* Effect.sleep("300 millis")
          assert.isTrue(lockRefused(yield* Fiber.join(fiber)), "still locked, seen from another fiber")
          assert.strictEqual(yield* val1(ROW.b), mark(ROW.b))
          assert.isTrue(holdsRowLock(yield* locksOf(tx.pid)))

          // The second step relies on the lock, and commits.
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a), "not visible before commit")
          yield* tx.commit
          assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
          assert.isFalse(holdsRowLock(yield* locksOf(tx.pid)), "commit released the lock")

          // A finished partial transaction refuses further steps.
          const late = yield* failure(tx.run(sql`SELECT 1`))
          assert.strictEqual(late._tag, "InvalidInput")
          return tx.pid
        }))
        // After the scope: no locks left, NOWAIT succeeds, the connection is back idle outside a transaction.
        assert.deepStrictEqual(yield* locksOf(pid), [])
        assert.isTrue(lockTaken(yield* tryLock(ROW.a)))
        assert.strictEqual(yield* stateOf(pid), "idle")
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
      }).pipe(Effect.provide(h.pools()))))

  it.live("closing the scope without commit rolls back and releases the locks", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const pid = yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(forUpdate(ROW.a))
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          assert.isTrue(lockRefused(yield* tryLock(ROW.a)))
          return tx.pid
        }))
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.deepStrictEqual(yield* locksOf(pid), [])
        assert.isTrue(lockTaken(yield* tryLock(ROW.a)))
        assert.notStrictEqual(yield* stateOf(pid), "idle in transaction")
      }).pipe(Effect.provide(h.pools()))))

  it.live("the connection comes back clean: on a one-connection pool the next run is outside any transaction", () =>
    withRows([ROW.a, ROW.b], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const pid = yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          yield* tx.run(sql`CREATE TEMP TABLE partial_scratch (x int) ON COMMIT DROP`)
          return tx.pid
        }))
        // The same connection, not in the abandoned transaction: it does not see its update…
        const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid, val1 FROM test_values WHERE id = ${ROW.a}`)
        assert.strictEqual(row?.["pid"], pid, "the connection was reused")
        assert.strictEqual(row?.["val1"], original.get(ROW.a))
        // …its statements run in their own transactions…
        assert.isTrue(yield* outsideTransaction)
        assert.strictEqual(yield* stateOf(pid), "idle")
        // …and a later commit on it does not commit the abandoned update.
        yield* pool.transaction((conn) => conn.run(update(ROW.b, mark(ROW.b))))
        assert.strictEqual(yield* val1(ROW.b), mark(ROW.b))
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        const scratch = yield* pool.run(sql`SELECT to_regclass('pg_temp.partial_scratch')::text AS t`)
        assert.strictEqual(scratch[0]?.["t"], null)
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))

  it.live("a scope closed by a failure or by interruption rolls back too", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const error = yield* failure(Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          return yield* new Boom({ reason: "between steps" })
        })))
        assert.strictEqual(error._tag, "Boom")
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.isTrue(lockTaken(yield* tryLock(ROW.a)))

        const holding = yield* Deferred.make<number>()
        const fiber = yield* Effect.forkChild(Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          yield* Deferred.succeed(holding, tx.pid)
          yield* Effect.never
        })))
        const pid = yield* Deferred.await(holding)
        assert.isTrue(lockRefused(yield* tryLock(ROW.a)))
        yield* Fiber.interrupt(fiber)
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.deepStrictEqual(yield* locksOf(pid), [])
        assert.isTrue(lockTaken(yield* tryLock(ROW.a)))
      }).pipe(Effect.provide(h.pools()))))

  it.live("rollback works explicitly, before the scope closes", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(forUpdate(ROW.a))
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          assert.isTrue(lockRefused(yield* tryLock(ROW.a)))
          yield* tx.rollback
          // Released now, while the scope is still open.
          assert.isFalse(holdsRowLock(yield* locksOf(tx.pid)))
          assert.isTrue(lockTaken(yield* tryLock(ROW.a)))
          assert.strictEqual(yield* stateOf(tx.pid), "idle")
          assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
          assert.strictEqual((yield* failure(tx.run(sql`SELECT 1`)))._tag, "InvalidInput")
          assert.strictEqual((yield* failure(tx.commit))._tag, "InvalidInput")
          assert.strictEqual((yield* failure(tx.rollback))._tag, "InvalidInput")
        }))
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
      }).pipe(Effect.provide(h.pools()))))

  it.live("a step after commit fails with InvalidInput", () =>
    withRows([ROW.a], () =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          yield* tx.commit
          assert.strictEqual((yield* failure(tx.run(update(ROW.a, 1))))._tag, "InvalidInput")
          let ran = false
          const viaInteraction = yield* failure(tx.interaction((conn) =>
            Effect.andThen(
              Effect.sync(() => {
                ran = true
              }),
              conn.run(sql`SELECT 1`)
            )
          ))
          assert.strictEqual(viaInteraction._tag, "InvalidInput")
          assert.isFalse(ran, "the interaction did not run")
          assert.strictEqual((yield* failure(tx.commit))._tag, "InvalidInput")
          assert.strictEqual((yield* failure(tx.rollback))._tag, "InvalidInput")
        }))
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a), "the refused step after commit changed nothing")
      }).pipe(Effect.provide(h.pools()))))

  it.live("steps from several fibers are serialised", () =>
    withRows([ROW.c], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          // Each interaction sets a transaction-local setting, yields, and reads it back: interleaved
          // interactions would read another fiber's value.
          const owners = yield* Effect.forEach(
            Array.from({ length: 20 }, (_, i) => i),
            (i) =>
              tx.interaction((conn) =>
                Effect.gen(function*() {
                  yield* conn.run(sql`SELECT set_config('dbpool.owner', ${String(i)}, true)`)
                  yield* Effect.sleep("5 millis")
                  const [row] = yield* conn.run(sql`SELECT current_setting('dbpool.owner') AS owner, pg_backend_pid() AS pid`)
                  assert.strictEqual(row?.["pid"], tx.pid)
                  return row?.["owner"]
                })
              ),
            { concurrency: "unbounded" }
          )
          assert.deepStrictEqual(owners, Array.from({ length: 20 }, (_, i) => String(i)))
          // Single statements from many fibers at once, mixed with interactions.
          yield* Effect.forEach(
            Array.from({ length: 50 }, (_, i) => i),
            (i) =>
              i % 10 === 0
                ? tx.interaction((conn) => conn.run(sql`UPDATE test_values SET val1 = val1 + 1 WHERE id = ${ROW.c}`))
                : tx.run(sql`UPDATE test_values SET val1 = val1 + 1 WHERE id = ${ROW.c}`),
            { concurrency: "unbounded", discard: true }
          )
          yield* tx.commit
        }))
        assert.strictEqual(yield* val1(ROW.c), (original.get(ROW.c) ?? 0) + 50)
      }).pipe(Effect.provide(h.pools()))))

  it.live("a failed step makes commit fail with TransactionAborted", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const pid = yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(forUpdate(ROW.a))
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          const failed = yield* failure(tx.run(sql`SELECT 1 / 0 AS x`))
          assert.strictEqual(failed._tag, "DatabaseError")
          assert.strictEqual("sqlState" in failed ? failed.sqlState : undefined, "22012")
          const aborted = yield* failure(tx.commit)
          assert.strictEqual(aborted._tag, "TransactionAborted")
          assert.isTrue(lockTaken(yield* tryLock(ROW.a)), "the failed commit ended the transaction")
          return tx.pid
        }))
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.deepStrictEqual(yield* locksOf(pid), [])
      }).pipe(Effect.provide(h.pools()))))

  it.live("an interrupted step cancels its statement on the server; the commit then fails with TransactionAborted", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          const fiber = yield* Effect.forkChild(tx.run(sql`SELECT pg_sleep(30)`))
          assert.strictEqual(yield* poll(stateOf(tx.pid), (s) => s === "active"), "active")
          const started = Date.now()
          yield* Fiber.interrupt(fiber)
          assert.isBelow(Date.now() - started, 5000)
          assert.strictEqual(yield* poll(stateOf(tx.pid), (s) => s !== "active", 2000), "idle in transaction (aborted)")
          // The cancelled statement aborted the transaction: committing must say so.
          const aborted = yield* failure(tx.commit)
          assert.strictEqual(aborted._tag, "TransactionAborted")
          assert.strictEqual(yield* stateOf(tx.pid), "idle")
        }))
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
      }).pipe(Effect.provide(h.pools()))))

  it.live("options: isolation level and read-only mode", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction({ isolationLevel: "repeatable read" })
          const [row] = yield* tx.run(sql`SHOW transaction_isolation`)
          assert.strictEqual(row?.["transaction_isolation"], "repeatable read")
          yield* tx.commit
        }))
        const error = yield* failure(Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction({ readOnly: true })
          yield* tx.run(update(ROW.a, mark(ROW.a)))
        })))
        assert.strictEqual(error._tag, "ReadOnlyTransaction")
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
      }).pipe(Effect.provide(h.pools()))))

  it.live("conn.transaction inside a step is a savepoint", () =>
    withRows([ROW.a, ROW.b], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(update(ROW.a, mark(ROW.a)))
          const inner = yield* failure(tx.interaction((conn) =>
            conn.transaction((c) => Effect.andThen(c.run(update(ROW.b, mark(ROW.b))), Effect.fail(new Boom({ reason: "inner" }))))
          ))
          assert.strictEqual(inner._tag, "Boom")
          yield* tx.commit
        }))
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
        assert.strictEqual(yield* val1(ROW.b), original.get(ROW.b))
      }).pipe(Effect.provide(h.pools()))))
})

describe("partial transaction on a terminated backend", () => {
  /**
   * `wait`: "no" sends the next step right after pg_terminate_backend;
   * "gone" once the server shows the backend gone (the client usually has not
   * noticed yet: the step's write meets a reset socket); "noticed" a moment
   * later, when the driver has seen the socket close and would reconnect.
   */
  const terminated = (wait: "no" | "gone" | "noticed") =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const pid = yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(forUpdate(ROW.a))
          const [killed] = yield* h.observe<{ ok: boolean }>("SELECT pg_terminate_backend($1) AS ok", [tx.pid])
          assert.isTrue(killed?.ok)
          if (wait !== "no") {
            assert.isUndefined(yield* poll(stateOf(tx.pid), (s) => s === undefined), "the backend exited")
          }
          if (wait === "noticed") yield* Effect.sleep("500 millis")
          // The next step fails, typed, promptly, and does not run anywhere else.
          const lost = yield* failure(tx.run(update(ROW.a, mark(ROW.a)))).pipe(Effect.timeout("10 seconds"))
          assert.strictEqual(lost._tag, "ConnectionLost")
          assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a), "the step did not run on a fresh connection")
          const viaInteraction = yield* failure(tx.interaction((conn) => conn.run(update(ROW.a, mark(ROW.a))))).pipe(
            Effect.timeout("10 seconds")
          )
          assert.oneOf(viaInteraction._tag, ["ConnectionLost", "InvalidInput"])
          const commit = yield* failure(tx.commit).pipe(Effect.timeout("10 seconds"))
          assert.oneOf(commit._tag, ["ConnectionLost", "InvalidInput"])
          assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
          return tx.pid
        })).pipe(Effect.timeout("20 seconds"))
        // The pool replaced the connection (it is the only one).
        const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid, val1 FROM test_values WHERE id = ${ROW.a}`).pipe(
          Effect.timeout("10 seconds")
        )
        assert.isNumber(row?.["pid"])
        assert.notStrictEqual(row?.["pid"], pid)
        assert.strictEqual(row?.["val1"], original.get(ROW.a))
        assert.isTrue(yield* outsideTransaction)
        // Only the replacement is left on the server.
        const sessions = yield* poll(h.sessions, (ss) => ss.length === 1)
        assert.deepStrictEqual(sessions.map((s) => s.pid), [row?.["pid"]])
      }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("the next step fails with ConnectionLost once the backend is gone, and the pool replaces the connection", () =>
    terminated("gone"))

  it.live("the same when the driver has already seen the socket close", () => terminated("noticed"))

  it.live("the same when the step is sent right after pg_terminate_backend", () => terminated("no"))

  it.live("a scope closed right after its backend was terminated hands back nothing broken", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const pid = yield* Effect.scoped(Effect.gen(function*() {
        const tx = yield* pool.partialTransaction()
        yield* tx.run(forUpdate(ROW.a))
        yield* h.observe("SELECT pg_terminate_backend($1)", [tx.pid])
        return tx.pid
      })).pipe(Effect.timeout("10 seconds"))
      const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid`).pipe(Effect.timeout("10 seconds"))
      assert.isNumber(row?.["pid"])
      assert.notStrictEqual(row?.["pid"], pid)
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("a backend terminated while a step runs fails that step with ConnectionLost", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* Effect.scoped(Effect.gen(function*() {
        const tx = yield* pool.partialTransaction()
        const fiber = yield* Effect.forkChild(tx.run(sql`SELECT pg_sleep(20)`))
        const busy = yield* poll(stateOf(tx.pid), (s) => s === "active")
        assert.strictEqual(busy, "active")
        yield* h.observe("SELECT pg_terminate_backend($1)", [tx.pid])
        const exit = yield* Fiber.await(fiber).pipe(Effect.timeout("10 seconds"))
        const error = Exit.findErrorOption(exit)
        assert.isTrue(error._tag === "Some" && error.value._tag === "ConnectionLost", String(exit))
        const next = yield* failure(tx.run(sql`SELECT 1`)).pipe(Effect.timeout("10 seconds"))
        assert.strictEqual(next._tag, "ConnectionLost")
      })).pipe(Effect.timeout("20 seconds"))
      const [row] = yield* pool.run(sql`SELECT 1 AS one`).pipe(Effect.timeout("10 seconds"))
      assert.strictEqual(row?.["one"], 1)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))
})
