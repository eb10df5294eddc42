/**
 * The tour: gDBPool's documentation, step by step, in effect-dbpool.
 *
 * Runs on an embedded Postgres (or DATABASE_URL) loaded with the test_values
 * table of 1,000,000 rows. `pnpm demo` runs it; `pnpm example:effect-sql`
 * shows the same pools under effect/sql's SqlClient.
 */
import { EmbeddedPostgres, layer as postgresLayer } from "@effect-dbpool/embedded-postgres"
import { NodeRuntime } from "@effect/platform-node"
import { Console, Deferred, Effect, Fiber, Layer, Schema, Stream } from "effect"
import { DbError, DbPool, Notifications, ReadPool, sql, Statement, WritePool } from "effect-dbpool"

const TestValue = Schema.Struct({ id: Schema.Number, val1: Schema.Number, val2: Schema.Number })

const step = (title: string) => Console.log(`\n── ${title} ${"─".repeat(Math.max(0, 70 - title.length))}`)

const tour = Effect.gen(function*() {
  const pool = yield* WritePool
  const readPool = yield* ReadPool

  yield* step("1. A plain query: ipool.run(sql, params)")
  const rows = yield* pool.run(sql`SELECT * FROM test_values WHERE id = ${123}`)
  yield* Console.log("rows as plain objects:", rows)
  const same = yield* pool.run(Statement.text("SELECT * FROM test_values WHERE id = $1", [123]))
  yield* Console.log("the text-and-parameters form gives the same:", same)

  yield* step("2. Rows decoded with a Schema")
  const decoded = yield* pool.run(sql`SELECT * FROM test_values WHERE id IN ${sql.in([1, 2, 3])} ORDER BY id`, TestValue)
  yield* Console.log(decoded)

  yield* step("3. A function interaction: several statements on one connection")
  const stats = yield* pool.interaction((conn) =>
    Effect.gen(function*() {
      yield* conn.run(sql`CREATE TEMP TABLE picked AS SELECT * FROM test_values WHERE val1 > ${990}`)
      const [row] = yield* conn.run(sql`SELECT count(*)::int AS n, avg(val2)::int AS avg_val2 FROM picked`)
      return { backend: conn.pid, ...row }
    })
  )
  yield* Console.log(stats)

  yield* step("4. Dry run: the SQL that would run, values inlined, no connection")
  yield* Console.log(Statement.dryRun(sql`SELECT * FROM test_values WHERE id = ${123};`))
  yield* Console.log(Statement.dryRun(sql`SELECT * FROM ${sql.id("test_values")} WHERE val1 = ${"it's"} AND id = ANY(${[1, 2]})`))

  yield* step("5. Transactions: commit on success, rollback on failure, savepoints")
  const before = yield* pool.run(sql`SELECT val2 FROM test_values WHERE id = ${7}`, Schema.Struct({ val2: Schema.Number }))
  const failed = yield* pool.transaction((conn) =>
    Effect.gen(function*() {
      yield* conn.run(sql`UPDATE test_values SET val2 = ${-1} WHERE id = ${7}`)
      return yield* Effect.fail("changed my mind" as const)
    })
  ).pipe(Effect.flip)
  const after = yield* pool.run(sql`SELECT val2 FROM test_values WHERE id = ${7}`, Schema.Struct({ val2: Schema.Number }))
  yield* Console.log(`failed with "${failed}"; val2 of row 7 before ${before[0]?.val2}, after ${after[0]?.val2} (rolled back)`)
  const kept = yield* pool.transaction((conn) =>
    Effect.gen(function*() {
      yield* conn.run(sql`UPDATE test_values SET val2 = val2 + 1 WHERE id = ${8}`)
      const inner = yield* conn.transaction((sp) => sp.run(sql`SELECT 1/0`)).pipe(Effect.flip)
      return `the savepoint failed with ${inner._tag}, the outer transaction committed`
    }), { isolationLevel: "repeatable read" })
  yield* Console.log(kept)

  yield* step("6. A partial transaction holding a row lock")
  yield* Effect.scoped(Effect.gen(function*() {
    const tx = yield* pool.partialTransaction()
    yield* tx.run(sql`SELECT * FROM test_values WHERE id = ${459} FOR UPDATE`)
    const locks = yield* pool.run(
      sql`SELECT locktype, mode, granted FROM pg_locks WHERE pid = ${tx.pid} AND relation = 'test_values'::regclass`
    )
    yield* Console.log(`backend ${tx.pid} holds:`, locks)
    // Meanwhile other interactions and other fibers go on.
    const other = yield* Effect.forkChild(
      pool.run(sql`SELECT * FROM test_values WHERE id = ${459} FOR UPDATE NOWAIT`).pipe(Effect.flip)
    )
    const blocked = yield* Fiber.join(other)
    yield* Console.log(`another connection asking for the row lock: ${blocked._tag} (SQLSTATE ${"sqlState" in blocked ? blocked.sqlState : "-"})`)
    yield* Effect.sleep("200 millis")
    yield* tx.run(sql`UPDATE test_values SET val1 = ${123} WHERE id = ${459}`)
    yield* tx.commit
    yield* Console.log("second step updated row 459 under the lock and committed")
  }))
  const free = yield* pool.run(sql`SELECT id, val1 FROM test_values WHERE id = ${459} FOR UPDATE NOWAIT`)
  yield* Console.log("after the scope closed the lock is gone:", free)

  yield* step("7. The read pool refuses writes")
  const refused = yield* readPool.run(sql`UPDATE test_values SET val1 = ${0} WHERE id = ${1}`).pipe(Effect.flip)
  yield* Console.log(`${refused._tag}: ${refused.message}`)
  const [count] = yield* readPool.run(sql`SELECT count(*)::int AS n FROM test_values`)
  yield* Console.log("but reads fine:", count)

  yield* step("8. Typed errors name the SQLSTATE class")
  const syntax = yield* pool.run(sql`SELEC 1`).pipe(Effect.flip)
  yield* Console.log(syntax)

  yield* step("9. LISTEN/NOTIFY as a Stream (gDBPool's listen_on)")
  const notifications = yield* Notifications.Notifications
  const Change = Schema.Struct({ id: Schema.Number, val1: Schema.Number })
  const listening = yield* Deferred.make<void>()
  const received = yield* Deferred.make<typeof Change.Type>()
  const listener = yield* notifications.listen("notify_test_values", Change).pipe(
    Stream.runForEach((event) =>
      event._tag === "Subscribed"
        ? Deferred.succeed(listening, undefined)
        : Console.log(`notification from backend ${event.pid}:`, event.payload).pipe(
          Effect.andThen(Deferred.succeed(received, event.payload))
        )
    ),
    Effect.forkChild
  )
  yield* Deferred.await(listening) // the server has confirmed the LISTEN: nothing sent from now on is missed
  yield* pool.run(sql`UPDATE test_values SET val1 = ${123} WHERE id = ${459}`) // the trigger NOTIFYs
  const change = yield* Deferred.await(received)
  yield* Console.log("decoded payload:", change)
  yield* Fiber.interrupt(listener) // gDBPool's cancel event: interruption, which UNLISTENs
  yield* Console.log("after interruption the pool listens on:", (yield* notifications.stats).channels)

  yield* step("10. Rows as a Stream: a cursor, a batch at a time")
  const streamed = yield* pool.stream(sql`SELECT id, val1, val2 FROM test_values`, TestValue, { batchSize: 10_000 }).pipe(
    Stream.runFold(() => ({ rows: 0, sum: 0 }), (acc, row) => ({ rows: acc.rows + 1, sum: acc.sum + row.val1 }))
  )
  yield* Console.log(`streamed ${streamed.rows} rows (sum of val1 ${streamed.sum}) without holding them in memory`)

  yield* step("11. Timeouts: per transaction (SET LOCAL) or for every connection (statementTimeout, …)")
  const timedOut = yield* pool.transaction((conn) => conn.run(sql`SELECT pg_sleep(5)`), { statementTimeout: "100 millis" }).pipe(
    Effect.flip
  )
  yield* Console.log(`${timedOut._tag} (SQLSTATE ${"sqlState" in timedOut ? timedOut.sqlState : "-"}), retryable: ${DbError.isRetryable(timedOut)}`)

  yield* step("12. Pool statistics")
  yield* Console.log(yield* pool.stats, yield* readPool.stats)
})

const PoolsLive = Layer.unwrap(Effect.gen(function*() {
  const server = yield* EmbeddedPostgres
  yield* Console.log(server.embedded ? `embedded Postgres on port ${server.port}` : "Postgres at DATABASE_URL")
  return DbPool.layer({ url: server.url, maxSize: 4 })
}))

const ServerLive = postgresLayer({ sqlFile: "sql/test_schema.sql", settings: { "dbpool.seed_rows": "1000000" } })

tour.pipe(
  Effect.provide(PoolsLive.pipe(Layer.provide(ServerLive))),
  NodeRuntime.runMain
)
