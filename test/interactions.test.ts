import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { ReadPool, sql, Statement, WritePool } from "effect-dbpool"
import { harness } from "./support.ts"

const h = harness("interactions")

const TestValue = Schema.Struct({ id: Schema.Number, val1: Schema.Number, val2: Schema.Number })

describe("interactions", () => {
  it.live("runs a tagged-template statement with bound parameters and returns plain rows", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const rows = yield* pool.run(sql`SELECT id, val1, val2 FROM test_values WHERE id = ${123}`)
      assert.strictEqual(rows.length, 1)
      assert.strictEqual(rows[0]?.["id"], 123)
      // The value was bound, not spliced: a hostile string is just a value.
      const none = yield* pool.run(sql`SELECT * FROM test_values WHERE id::text = ${"1 OR 1=1"}`)
      assert.strictEqual(none.length, 0)
    }).pipe(Effect.provide(h.pools())))

  it.live("runs gDBPool's text-and-parameters form", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const rows = yield* pool.run(Statement.text("SELECT * FROM test_values WHERE id = $1", [123]), TestValue)
      assert.deepStrictEqual(rows.map((r) => r.id), [123])
    }).pipe(Effect.provide(h.pools())))

  it.live("decodes rows with a Schema and fails with RowDecodeError when they do not match", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const rows = yield* pool.run(sql`SELECT * FROM test_values WHERE id IN ${sql.in([1, 2, 3])} ORDER BY id`, TestValue)
      assert.deepStrictEqual(rows.map((r) => r.id), [1, 2, 3])
      const error = yield* Effect.flip(pool.run(sql`SELECT 'x' AS id`, TestValue))
      assert.strictEqual(error._tag, "RowDecodeError")
    }).pipe(Effect.provide(h.pools())))

  it.live("a function interaction runs every statement on one connection", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const pids = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`CREATE TEMP TABLE scratch (x int)`)
          yield* conn.run(sql`INSERT INTO scratch VALUES (${1}), (${2})`)
          const [sum] = yield* conn.run(sql`SELECT sum(x)::int AS total, pg_backend_pid() AS pid FROM scratch`)
          return { total: sum?.["total"], pid: sum?.["pid"], handle: conn.pid }
        })
      )
      assert.strictEqual(pids.total, 3)
      assert.strictEqual(pids.pid, pids.handle)
    }).pipe(Effect.provide(h.pools())))

  it.live("session settings made with SET do not outlive the interaction that made them", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const readPool = yield* ReadPool
      const inside = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`SET statement_timeout = 4321`)
          return yield* conn.run(sql`SHOW statement_timeout`)
        })
      )
      assert.deepStrictEqual(inside, [{ statement_timeout: "4321ms" }])
      const pidBefore = yield* pool.run(sql`SELECT pg_backend_pid() AS pid`)
      assert.deepStrictEqual(yield* pool.run(sql`SHOW statement_timeout`), [{ statement_timeout: "0" }])
      // Same connection (maxSize 1): reset, not replaced.
      assert.deepStrictEqual(yield* pool.run(sql`SELECT pg_backend_pid() AS pid`), pidBefore)
      // The read pool's read-only default comes back too.
      yield* readPool.run(sql`SET default_transaction_read_only = off`)
      const refused = yield* Effect.flip(readPool.run(sql`CREATE TEMP TABLE t_after_reset (x int)`))
      assert.strictEqual(refused._tag, "ReadOnlyTransaction")
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))
})
