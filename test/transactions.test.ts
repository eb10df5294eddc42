/**
 * `pool.transaction(f)` and `conn.transaction(f)` against the real server:
 * commit, rollback on failure and on interruption, savepoints, isolation
 * levels and access modes, caught failures, and cancellation of interrupted
 * statements on the server.
 */
import { assert, describe, it } from "@effect/vitest"
import { Data, Deferred, Effect, Exit, Fiber, Stream } from "effect"
import { sql, WritePool } from "effect-dbpool"
import { harness, outsideTransaction, poll } from "./support.ts"

const h = harness("transactions")

class Boom extends Data.TaggedError("Boom")<{ readonly reason: string }> {}

/** The error `self` fails with; a success is a defect, so the test fails saying what it got. */
const failure = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<E, never, R> =>
  Effect.flip(self).pipe(Effect.mapError((a) => new Error(`expected a failure, got a success: ${JSON.stringify(a)}`)), Effect.orDie)

/** Rows this file writes to: far from ids other files are likely to use. */
const ROW = { a: 9201, b: 9202, c: 9203, d: 9204, e: 9205, f: 9206 } as const

/** A value no seeded row has (seeded values are 0..1000). */
const mark = (id: number) => -7_000_000 - id

const { val1, withRows } = h

/** The server-side state of one backend (`idle`, `idle in transaction`, `active`, …), undefined if gone. */
const stateOf = (pid: number): Effect.Effect<string | null | undefined> =>
  Effect.map(h.observe<{ state: string | null }>("SELECT state FROM pg_stat_activity WHERE pid = $1", [pid]), (rows) => rows[0]?.state)

/** Backends of this file's pools running `pg_sleep(30)`. */
const sleepers = h.observe<{ pid: number; state: string | null }>(
  "SELECT pid, state FROM pg_stat_activity WHERE application_name = $1 AND query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid()",
  [h.appName]
)

/** This file's sessions that are idle inside a (possibly aborted) transaction. */
const idleInTransaction = Effect.map(h.sessions, (ss) => ss.filter((s) => s.state !== null && s.state.startsWith("idle in transaction")))

const update = (id: number, value: number) => sql`UPDATE test_values SET val1 = ${value} WHERE id = ${id}`


const pidOf = Effect.gen(function*() {
  const pool = yield* WritePool
  const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid`)
  return row?.["pid"]
})

describe("pool.transaction", () => {
  it.live("commits on success: the change is visible from outside only after COMMIT", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const result = yield* pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(update(ROW.a, mark(ROW.a)))
            // A real transaction is open on the server, and the change is not yet visible outside it.
            assert.strictEqual(yield* stateOf(conn.pid), "idle in transaction")
            assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
            const [inside] = yield* conn.run(sql`SELECT val1 FROM test_values WHERE id = ${ROW.a}`)
            assert.strictEqual(inside?.["val1"], mark(ROW.a))
            return "done"
          })
        )
        assert.strictEqual(result, "done")
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
        assert.deepStrictEqual(yield* idleInTransaction, [])
      }).pipe(Effect.provide(h.pools()))))

  it.live("rolls back on failure and propagates the typed error", () =>
    withRows([ROW.a, ROW.b], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const error = yield* failure(pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(update(ROW.a, mark(ROW.a)))
            return yield* new Boom({ reason: "after the update" })
          })
        ))
        assert.instanceOf(error, Boom)
        assert.strictEqual(error._tag, "Boom")
        assert.strictEqual(error.reason, "after the update")
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.deepStrictEqual(yield* idleInTransaction, [])
        // The only connection (maxSize 1) was rolled back, not handed back inside the transaction:
        // a later committed transaction on it does not commit the abandoned update.
        yield* pool.transaction((conn) => conn.run(update(ROW.b, mark(ROW.b))))
        assert.strictEqual(yield* val1(ROW.b), mark(ROW.b))
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.isTrue(yield* outsideTransaction)
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))

  it.live("rolls back on a defect", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const exit = yield* Effect.exit(pool.transaction((conn) =>
          Effect.andThen(conn.run(update(ROW.a, mark(ROW.a))), Effect.die(new Error("bug in f")))
        ))
        assert.isTrue(Exit.isFailure(exit))
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.isTrue(yield* outsideTransaction)
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))

  it.live("rolls back when the fiber is interrupted while f sleeps after an UPDATE", () =>
    withRows([ROW.a, ROW.b], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const updated = yield* Deferred.make<number>()
        const fiber = yield* Effect.forkChild(pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(update(ROW.a, mark(ROW.a)))
            yield* Deferred.succeed(updated, conn.pid)
            yield* Effect.sleep("30 seconds")
          })
        ))
        const pid = yield* Deferred.await(updated)
        assert.strictEqual(yield* stateOf(pid), "idle in transaction")
        const started = Date.now()
        yield* Fiber.interrupt(fiber)
        assert.isBelow(Date.now() - started, 5000, "interruption does not wait for f's sleep")
        const exit = yield* Fiber.await(fiber)
        assert.isTrue(Exit.hasInterrupts(exit))
        // Rolled back at once, not when the pool closes: no idle-in-transaction session, the row lock is free.
        assert.deepStrictEqual(yield* idleInTransaction, [])
        assert.strictEqual(yield* stateOf(pid), "idle")
        const free = yield* h.observe("SELECT id FROM test_values WHERE id = $1 FOR UPDATE NOWAIT", [ROW.a])
        assert.strictEqual(free.length, 1)
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        // The same (only) connection serves the next transaction, and does not commit the abandoned update.
        yield* pool.transaction((conn) => conn.run(update(ROW.b, mark(ROW.b))))
        assert.strictEqual(yield* val1(ROW.b), mark(ROW.b))
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))
})

describe("nested conn.transaction (savepoints)", () => {
  it.live("an inner failure is rolled back to its savepoint, the outer transaction commits the rest", () =>
    withRows([ROW.a, ROW.b, ROW.c, ROW.d, ROW.e], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        yield* pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(update(ROW.a, mark(ROW.a)))
            // Inner transaction fails with a typed error after an update: that update is undone.
            const inner = yield* failure(conn.transaction((c) =>
              Effect.gen(function*() {
                yield* c.run(update(ROW.b, mark(ROW.b)))
                return yield* new Boom({ reason: "inner" })
              })
            ))
            assert.strictEqual(inner._tag, "Boom")
            const [b] = yield* conn.run(sql`SELECT val1 FROM test_values WHERE id = ${ROW.b}`)
            assert.strictEqual(b?.["val1"], original.get(ROW.b), "the inner update was rolled back to the savepoint")
            const [a] = yield* conn.run(sql`SELECT val1 FROM test_values WHERE id = ${ROW.a}`)
            assert.strictEqual(a?.["val1"], mark(ROW.a), "the outer update before the savepoint is kept")
            // Inner success is kept.
            const kept = yield* conn.transaction((c) => Effect.as(c.run(update(ROW.c, mark(ROW.c))), "kept"))
            assert.strictEqual(kept, "kept")
            // A failed *statement* inside a savepoint does not abort the outer transaction.
            const failed = yield* failure(conn.transaction((c) =>
              Effect.andThen(c.run(update(ROW.d, mark(ROW.d))), c.run(sql`SELECT 1 / 0 AS x`))
            ))
            assert.strictEqual(failed._tag, "DatabaseError")
            assert.strictEqual("sqlState" in failed ? failed.sqlState : undefined, "22012")
            // Two levels: the innermost fails, the middle one goes on and succeeds.
            yield* conn.transaction((c) =>
              Effect.gen(function*() {
                const deep = yield* failure(c.transaction((cc) =>
                  Effect.andThen(cc.run(update(ROW.d, mark(ROW.d))), Effect.fail(new Boom({ reason: "deep" })))
                ))
                assert.strictEqual(deep._tag, "Boom")
                yield* c.run(update(ROW.e, mark(ROW.e)))
              })
            )
            const [one] = yield* conn.run(sql`SELECT 1 AS one`)
            assert.strictEqual(one?.["one"], 1, "the outer transaction is still usable")
            // Nothing is visible outside until the outer COMMIT.
            assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
            assert.strictEqual(yield* val1(ROW.c), original.get(ROW.c))
          })
        )
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
        assert.strictEqual(yield* val1(ROW.b), original.get(ROW.b))
        assert.strictEqual(yield* val1(ROW.c), mark(ROW.c))
        assert.strictEqual(yield* val1(ROW.d), original.get(ROW.d))
        assert.strictEqual(yield* val1(ROW.e), mark(ROW.e))
        assert.isTrue(yield* outsideTransaction)
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))

  it.live("a caught statement failure inside a nested transaction fails it with TransactionAborted and rolls it back; the outer one goes on", () =>
    withRows([ROW.a, ROW.b, ROW.c], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        yield* pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(update(ROW.a, mark(ROW.a)))
            const aborted = yield* failure(conn.transaction((c) =>
              Effect.gen(function*() {
                yield* c.run(update(ROW.b, mark(ROW.b)))
                const caught = yield* failure(c.run(sql`SELECT 1 / 0 AS x`))
                assert.strictEqual(caught._tag, "DatabaseError")
                return "swallowed"
              })
            ))
            // Not a silent success: the savepoint was rolled back, not released.
            assert.strictEqual(aborted._tag, "TransactionAborted")
            const [b] = yield* conn.run(sql`SELECT val1 FROM test_values WHERE id = ${ROW.b}`)
            assert.strictEqual(b?.["val1"], original.get(ROW.b))
            // The outer transaction is intact and goes on.
            yield* conn.run(update(ROW.c, mark(ROW.c)))
          })
        )
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
        assert.strictEqual(yield* val1(ROW.b), original.get(ROW.b))
        assert.strictEqual(yield* val1(ROW.c), mark(ROW.c))
      }).pipe(Effect.provide(h.pools()))))

  it.live("a successful inner transaction is undone when the outer one fails", () =>
    withRows([ROW.a, ROW.b], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const error = yield* failure(pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.transaction((c) => c.run(update(ROW.a, mark(ROW.a))))
            yield* conn.run(update(ROW.b, mark(ROW.b)))
            return yield* new Boom({ reason: "outer" })
          })
        ))
        assert.strictEqual(error._tag, "Boom")
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.strictEqual(yield* val1(ROW.b), original.get(ROW.b))
      }).pipe(Effect.provide(h.pools()))))

  it.live("options on a nested transaction fail with InvalidInput without running it", () =>
    withRows([ROW.a], () =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        let ran = 0
        yield* pool.transaction((conn) =>
          Effect.gen(function*() {
            const options = [{ isolationLevel: "serializable" }, { readOnly: true }, { deferrable: true }] as const
            for (const option of options) {
              const error = yield* failure(conn.transaction((c) => {
                ran++
                return c.run(sql`SELECT 1`)
              }, option))
              assert.strictEqual(error._tag, "InvalidInput", JSON.stringify(option))
            }
            // The outer transaction is unharmed.
            yield* conn.run(update(ROW.a, mark(ROW.a)))
          })
        )
        assert.strictEqual(ran, 0)
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
      }).pipe(Effect.provide(h.pools()))))
})

describe("transaction options", () => {
  it.live("the requested isolation level is the one in force", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const levels = ["read committed", "repeatable read", "serializable"] as const
      for (const isolationLevel of levels) {
        const [row] = yield* pool.transaction((conn) => conn.run(sql`SHOW transaction_isolation`), { isolationLevel })
        assert.strictEqual(row?.["transaction_isolation"], isolationLevel)
      }
      const [byDefault] = yield* pool.transaction((conn) =>
        conn.run(sql`SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro`)
      )
      assert.strictEqual(byDefault?.["iso"], "read committed")
      assert.strictEqual(byDefault?.["ro"], "off")
      const [deferrable] = yield* pool.transaction(
        (conn) => conn.run(sql`SHOW transaction_deferrable`),
        { isolationLevel: "serializable", readOnly: true, deferrable: true }
      )
      assert.strictEqual(deferrable?.["transaction_deferrable"], "on")
    }).pipe(Effect.provide(h.pools())))

  it.live("readOnly: true refuses writes with ReadOnlyTransaction", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const [ro] = yield* pool.transaction((conn) => conn.run(sql`SHOW transaction_read_only`), { readOnly: true })
        assert.strictEqual(ro?.["transaction_read_only"], "on")
        const error = yield* failure(pool.transaction((conn) => conn.run(update(ROW.a, mark(ROW.a))), { readOnly: true }))
        assert.strictEqual(error._tag, "ReadOnlyTransaction")
        assert.strictEqual("sqlState" in error ? error.sqlState : undefined, "25006")
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        // The read-only mode ended with the transaction: the same connection writes afterwards.
        yield* pool.transaction((conn) => conn.run(update(ROW.a, mark(ROW.a))), { readOnly: false })
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))
})

describe("caught failures", () => {
  it.live("a caught statement failure makes the commit fail with TransactionAborted instead of silently rolling back", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const error = yield* failure(pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(update(ROW.a, mark(ROW.a)))
            const caught = yield* failure(conn.run(sql`SELECT 1 / 0 AS x`))
            assert.strictEqual(caught._tag, "DatabaseError")
            // The server now ignores the transaction's statements until it ends.
            const ignored = yield* failure(conn.run(sql`SELECT 1`))
            assert.strictEqual(ignored._tag, "TransactionAborted")
            return "swallowed"
          })
        ))
        assert.strictEqual(error._tag, "TransactionAborted")
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        assert.deepStrictEqual(yield* idleInTransaction, [])
        // The connection is clean afterwards.
        assert.isTrue(yield* outsideTransaction)
        yield* pool.transaction((conn) => conn.run(update(ROW.a, mark(ROW.a))))
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))
})

describe("a transaction the server refuses to open", () => {
  // lock_timeout takes at most 2147483647 ms: the server refuses 30 days in the statements that open the transaction.
  const refusedOptions = { lockTimeout: "30 days" } as const

  it.live("fails with the server's error; its statements fail with it too, unsent, even when f catches it; the connection comes back clean", () =>
    withRows([ROW.a], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const pids: Array<number> = []
        const seen: Array<unknown> = []
        const error = yield* failure(pool.transaction((conn) =>
          Effect.gen(function*() {
            pids.push(conn.pid)
            // A cursor first (it is sent by its own path), then plain statements.
            seen.push(yield* failure(Stream.runCollect(conn.stream(sql`SELECT 1`))))
            seen.push(yield* failure(conn.run(update(ROW.a, mark(ROW.a)))))
            seen.push(yield* failure(conn.run(sql`SELECT 1`)))
            return "swallowed"
          }), refusedOptions))
        assert.strictEqual(error._tag, "DatabaseError")
        assert.strictEqual("sqlState" in error ? error.sqlState : undefined, "22023")
        assert.strictEqual(seen.length, 3)
        for (const e of seen) assert.strictEqual(e, error)
        assert.strictEqual(yield* val1(ROW.a), original.get(ROW.a))
        // Rolled back on the server (it had opened the transaction before refusing the setting), and reused.
        assert.deepStrictEqual(yield* idleInTransaction, [])
        yield* pool.transaction((conn) => Effect.andThen(Effect.sync(() => pids.push(conn.pid)), conn.run(update(ROW.a, mark(ROW.a)))))
        assert.strictEqual(yield* val1(ROW.a), mark(ROW.a))
        assert.strictEqual(pids[1], pids[0])
        // Inside an interaction, the connection is usable again at once, outside any transaction, even when f
        // succeeded and only COMMIT reported the refusal.
        const inside = yield* pool.interaction((conn) =>
          Effect.gen(function*() {
            const refused = yield* failure(conn.transaction(() => Effect.void, refusedOptions))
            const [one] = yield* conn.run(sql`SELECT 1 AS one`)
            const [xid] = yield* conn.transaction((tx) => tx.run(sql`SELECT pg_current_xact_id()::text AS xid`))
            return { refused, one: one?.["one"], xid: xid?.["xid"] }
          })
        )
        assert.strictEqual("sqlState" in inside.refused ? inside.refused.sqlState : undefined, "22023")
        assert.strictEqual(inside.one, 1)
        assert.isString(inside.xid)
        // A partial transaction is handed out at once; its first step and its commit fail with the server's error.
        const partial = yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction(refusedOptions)
          const step = yield* Effect.flip(tx.run(sql`SELECT 1`))
          const commit = yield* Effect.flip(tx.commit)
          return { step, commit, pid: tx.pid }
        }))
        assert.strictEqual(partial.step._tag, "DatabaseError")
        assert.strictEqual(partial.commit, partial.step)
        assert.strictEqual(partial.pid, pids[0])
        assert.deepStrictEqual(yield* idleInTransaction, [])
        assert.isTrue(yield* outsideTransaction)
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))
})

describe("interrupting an interaction cancels its statement on the server", () => {
  it.live("a plain run", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const before = yield* pidOf
      const fiber = yield* Effect.forkChild(pool.run(sql`SELECT pg_sleep(30)`))
      const running = yield* poll(sleepers, (rows) => rows.length === 1)
      assert.strictEqual(running.length, 1, "the statement runs on the server")
      assert.strictEqual(running[0]?.pid, before)
      const started = Date.now()
      yield* Fiber.interrupt(fiber)
      assert.isBelow(Date.now() - started, 5000, "interruption does not wait for the statement")
      assert.isTrue(Exit.hasInterrupts(yield* Fiber.await(fiber)))
      assert.deepStrictEqual(yield* poll(sleepers, (rows) => rows.length === 0, 2000), [])
      // The connection (the only one) is reusable right away.
      const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid, 1 AS one`).pipe(Effect.timeout("3 seconds"))
      assert.strictEqual(row?.["one"], 1)
      assert.strictEqual(row?.["pid"], before, "a cancelled statement does not cost the connection")
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("inside a transaction", () =>
    withRows([ROW.f], (original) =>
      Effect.gen(function*() {
        const pool = yield* WritePool
        const before = yield* pidOf
        const fiber = yield* Effect.forkChild(pool.transaction((conn) =>
          Effect.andThen(conn.run(update(ROW.f, mark(ROW.f))), conn.run(sql`SELECT pg_sleep(30)`))
        ))
        const running = yield* poll(sleepers, (rows) => rows.length === 1)
        assert.strictEqual(running.length, 1, "the statement runs on the server")
        const started = Date.now()
        yield* Fiber.interrupt(fiber)
        assert.isBelow(Date.now() - started, 5000, "interruption does not wait for the statement")
        assert.isTrue(Exit.hasInterrupts(yield* Fiber.await(fiber)))
        assert.deepStrictEqual(yield* poll(sleepers, (rows) => rows.length === 0, 2000), [])
        assert.deepStrictEqual(yield* idleInTransaction, [])
        assert.strictEqual(yield* val1(ROW.f), original.get(ROW.f))
        const free = yield* h.observe("SELECT id FROM test_values WHERE id = $1 FOR UPDATE NOWAIT", [ROW.f])
        assert.strictEqual(free.length, 1, "the row lock was released")
        const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid, 1 AS one`).pipe(Effect.timeout("3 seconds"))
        assert.strictEqual(row?.["one"], 1)
        assert.strictEqual(row?.["pid"], before, "a cancelled statement does not cost the connection")
        assert.isTrue(yield* outsideTransaction)
        assert.strictEqual(yield* val1(ROW.f), original.get(ROW.f))
      }).pipe(Effect.provide(h.pools({ maxSize: 1 })))))

  it.live("a function interaction", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const fiber = yield* Effect.forkChild(pool.interaction((conn) => conn.run(sql`SELECT pg_sleep(30)`)))
      assert.strictEqual((yield* poll(sleepers, (rows) => rows.length === 1)).length, 1)
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual(yield* poll(sleepers, (rows) => rows.length === 0, 2000), [])
      const [row] = yield* pool.run(sql`SELECT 1 AS one`).pipe(Effect.timeout("3 seconds"))
      assert.strictEqual(row?.["one"], 1)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))
})
