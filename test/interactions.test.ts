import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Fiber, Schema } from "effect"
import { ReadPool, sql, Statement, WritePool } from "effect-dbpool"
import { harness, poll } from "./support.ts"

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
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("the read pool refuses every statement that would make its connection writable, and no write lands", () =>
    Effect.gen(function*() {
      const readPool = yield* ReadPool
      yield* h.observe("CREATE TABLE IF NOT EXISTS read_pool_writes (attempt text)")
      yield* h.observe("TRUNCATE read_pool_writes")
      yield* h.observe("ALTER SYSTEM RESET work_mem")
      const write = (attempt: string) => sql`INSERT INTO read_pool_writes VALUES (${attempt})`
      // Each unlocks writes on a plain read-only session or transaction (checked against the server), then writes.
      const inSession: ReadonlyArray<Statement.Statement> = [
        sql`SET default_transaction_read_only = off`,
        sql`SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE`,
        sql`SELECT set_config('default_transaction_read_only', 'off', false)`,
        Statement.text("SELECT set_config($1, $2, false)", ["default_transaction_read_only", "off"]),
        sql`SELECT pg_catalog.set_config(lower('DEFAULT_TRANSACTION_READ_ONLY'), 'off', false)`,
        sql`/* hidden */ set Default_Transaction_Read_Only to false`,
        sql`SET SESSION "default_transaction_read_only" = off`
      ]
      const inTransaction: ReadonlyArray<Statement.Statement> = [
        sql`SET TRANSACTION READ WRITE`,
        sql`SET LOCAL transaction_read_only = off`
      ]
      const attempts = [
        ...inSession.map((unlock) =>
          [unlock.text, readPool.interaction((conn) => Effect.andThen(conn.run(unlock), conn.run(write(unlock.text))))] as const
        ),
        ...inSession.map((unlock) => [`run: ${unlock.text}`, Effect.andThen(readPool.run(unlock), readPool.run(write(unlock.text)))] as const),
        ...inTransaction.map((unlock) =>
          [unlock.text, readPool.transaction((conn) => Effect.andThen(conn.run(unlock), conn.run(write(unlock.text))), { readOnly: false })] as const
        ),
        ["ALTER SYSTEM SET work_mem = '64MB'", readPool.run(sql`ALTER SYSTEM SET work_mem = '64MB'`)] as const
      ]
      for (const [name, attempt] of attempts) {
        const error = yield* Effect.flip(Effect.andThen(attempt, Effect.fail(new Error("it went through"))))
        assert.strictEqual("_tag" in error ? error._tag : error.message, "ReadOnlyTransaction", name)
        // Refused before it was sent, not the server refusing the INSERT after it.
        assert.isTrue(name.endsWith("statement" in error ? error.statement ?? "?" : "?"), name)
      }
      assert.deepStrictEqual(yield* h.observe("SELECT attempt FROM read_pool_writes"), [])
      assert.deepStrictEqual(yield* h.observe("SELECT sourcefile FROM pg_file_settings WHERE name = 'work_mem'"), [])
      // Reading the settings is still a read, and settings that only mention these words are still set.
      assert.deepStrictEqual(yield* readPool.run(sql`SHOW transaction_read_only`), [{ transaction_read_only: "on" }])
      assert.deepStrictEqual(
        yield* readPool.run(sql`SELECT current_setting('default_transaction_read_only') AS ro, set_config('application_name', 'x', true) AS app`),
        [{ ro: "on", app: "x" }]
      )
      yield* readPool.transaction((conn) =>
        Effect.gen(function*() {
          // Row-level security setups set claims per transaction; a claim may well say "read write".
          yield* conn.run(sql`SET LOCAL request.jwt.claim.scope = 'read write'`)
          yield* conn.run(sql`SELECT set_config(E'request.jwt.claims', ${"{}"}, true), ${"set_config('default_transaction_read_only')"} AS v`)
          yield* conn.run(sql`SELECT 1 AS one -- callers elsewhere use set_config( on transaction_read_only`)
          yield* conn.run(Statement.text("SELECT set_config($1, $2, true)", ["request.jwt.claims", "{}"]))
        })
      )
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("SET ROLE and temp tables do not outlive the interaction either", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* h.observe("DO $$ BEGIN CREATE ROLE dbpool_test_tenant; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
      const inside = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`SET ROLE dbpool_test_tenant`)
          yield* conn.run(sql`CREATE TEMP TABLE scratch_reset (x int)`)
          return yield* conn.run(sql`SELECT current_user AS u`)
        })
      )
      assert.deepStrictEqual(inside, [{ u: "dbpool_test_tenant" }])
      assert.deepStrictEqual(yield* pool.run(sql`SELECT current_user AS u`), [{ u: "postgres" }])
      // The temp table is gone: creating it again on the same (only) connection works.
      yield* pool.interaction((conn) => conn.run(sql`CREATE TEMP TABLE scratch_reset (x int)`))
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("transaction control hidden behind comments is still refused", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      for (const text of ["-- note\rBEGIN", "/* outer /* inner */ still comment */ BEGIN", "  ;(BEGIN)"]) {
        const error = yield* Effect.flip(pool.run(Statement.text(text)))
        assert.strictEqual(error._tag, "InvalidInput", text)
      }
      const sessions = yield* h.sessions
      assert.deepStrictEqual(sessions.filter((s) => s.state?.startsWith("idle in transaction")), [])
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("a connection handle or partial transaction used after it was returned refuses to run", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const leaked = yield* pool.interaction((conn) => Effect.succeed(conn))
      const error = yield* Effect.flip(leaked.run(sql`SELECT 1`))
      assert.strictEqual(error._tag, "InvalidInput")
      const leakedTx = yield* Effect.scoped(pool.partialTransaction())
      const txError = yield* Effect.flip(leakedTx.run(sql`SELECT 1`))
      assert.strictEqual(txError._tag, "InvalidInput")
      // Meanwhile the connection serves others, outside any transaction.
      assert.deepStrictEqual(yield* pool.run(sql`SELECT 1 AS ok`), [{ ok: 1 }])
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("an infinite acquire timeout waits instead of failing at once", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const holder = yield* Effect.forkChild(pool.run(sql`SELECT pg_sleep(0.3)`))
      assert.strictEqual((yield* poll(pool.stats, (s) => s.used === 1)).used, 1, "the only connection is held")
      assert.deepStrictEqual(yield* pool.transaction((conn) => conn.run(sql`SELECT 1 AS ok`)), [{ ok: 1 }])
      assert.isDefined(holder.pollUnsafe(), "the transaction ran only once the holder had finished")
      yield* Fiber.join(holder)
    }).pipe(Effect.provide(h.pools({ maxSize: 1, acquireTimeout: Duration.infinity }))))
})
