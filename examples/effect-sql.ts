/**
 * effect/sql over effect-dbpool: `SqlClient`, `SqlSchema`, a batching
 * `SqlResolver` and `withTransaction`, all running on the pools of
 * `DbPool.layer` through `EffectSql.layer()`.
 *
 * Runs on an embedded Postgres (or DATABASE_URL) loaded with test_values
 * (10,000 rows); creates a table `effsql_example_accounts` and drops it again.
 *
 *   pnpm exec node --experimental-strip-types --no-warnings --conditions=@effect-dbpool/source examples/effect-sql.ts
 */
import { EmbeddedPostgres, layer as postgresLayer } from "@effect-dbpool/embedded-postgres"
import { NodeRuntime } from "@effect/platform-node"
import { Console, Data, Effect, Fiber, Layer, Schema } from "effect"
import { SqlClient, SqlResolver, SqlSchema, Statement as SqlStatement } from "effect/sql"
import { DbPool, EffectSql, Statement } from "effect-dbpool"

const step = (title: string) => Console.log(`\n── ${title} ${"─".repeat(Math.max(0, 70 - title.length))}`)

const Account = Schema.Struct({ id: Schema.Number, owner: Schema.String, balance: Schema.Number })
const TestValue = Schema.Struct({ id: Schema.Number, val1: Schema.Number, val2: Schema.Number })

class Overdrawn extends Data.TaggedError("Overdrawn")<{ readonly owner: string }> {}

const program = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const accounts = sql("effsql_example_accounts")

  yield* step("1. Statements: sql`…`, sql.insert, sql.in, identifiers")
  yield* sql`DROP TABLE IF EXISTS ${accounts}`
  yield* sql`CREATE TABLE ${accounts} (id serial PRIMARY KEY, owner text NOT NULL UNIQUE, balance int NOT NULL CHECK (balance >= 0))`
  const inserted = yield* sql<{ id: number; owner: string }>`INSERT INTO ${accounts} ${
    sql.insert([{ owner: "ann", balance: 100 }, { owner: "bob", balance: 50 }, { owner: "cid", balance: 0 }]).returning("id, owner")
  }`
  yield* Console.log("inserted:", inserted)
  const someValues = yield* sql`SELECT * FROM test_values WHERE id IN ${sql.in([1, 2, 3])} ORDER BY id`
  yield* Console.log("test_values 1–3:", someValues)

  yield* step("2. SqlSchema: encoded requests, decoded rows")
  const richerThan = SqlSchema.findAll({
    Request: Schema.Number,
    Result: Account,
    execute: (min) => sql`SELECT * FROM ${accounts} WHERE balance > ${min} ORDER BY id`
  })
  const byOwner = SqlSchema.findOneOption({
    Request: Schema.String,
    Result: Account,
    execute: (owner) => sql`SELECT * FROM ${accounts} WHERE owner = ${owner}`
  })
  yield* Console.log("balance > 10:", yield* richerThan(10))
  yield* Console.log("dee:", yield* byOwner("dee"))

  yield* step("3. SqlResolver: 20 concurrent lookups, one statement")
  let statements = 0
  const countStatements: SqlStatement.Transformer = (self) => Effect.sync(() => (statements++, self))
  const ValueById = SqlResolver.findById({
    Id: Schema.Number,
    Result: TestValue,
    ResultId: (row) => row.id,
    execute: (ids) => sql`SELECT * FROM test_values WHERE id IN ${sql.in(ids)}`
  })
  const ids = Array.from({ length: 20 }, (_, i) => 100 + i * 7)
  const values = yield* Effect.forEach(ids, (id) => SqlResolver.request(id, ValueById), { concurrency: "unbounded" }).pipe(
    Effect.provideService(SqlStatement.CurrentTransformer, countStatements)
  )
  yield* Console.log(`${values.length} rows (ids ${ids[0]}…${ids.at(-1)}) from ${statements} statement(s)`)

  yield* step("4. withTransaction: commit, rollback, a savepoint")
  const transfer = (from: string, to: string, amount: number) =>
    Effect.gen(function*() {
      const [row] = yield* sql<{ balance: number }>`UPDATE ${accounts} SET balance = balance - ${amount} WHERE owner = ${from} RETURNING balance`
        .pipe(Effect.mapError((e) => e.reason._tag === "ConstraintError" ? new Overdrawn({ owner: from }) : e)) // the CHECK (balance >= 0)
      yield* sql`UPDATE ${accounts} SET balance = balance + ${amount} WHERE owner = ${to}`
      return row?.balance
    })
  yield* sql.withTransaction(Effect.gen(function*() {
    yield* transfer("ann", "bob", 30)
    // A nested transaction is a savepoint: its failure is rolled back alone, the outer goes on.
    const failed = yield* sql.withTransaction(transfer("cid", "ann", 500)).pipe(Effect.flip)
    yield* Console.log(`inner transfer failed (${failed._tag}), rolled back to its savepoint`)
    yield* transfer("bob", "cid", 10)
  }))
  yield* Console.log("after commit:", yield* richerThan(-1))
  const rolledBack = yield* sql.withTransaction(Effect.andThen(transfer("ann", "bob", 70), transfer("bob", "ann", 1000))).pipe(Effect.flip)
  yield* Console.log(`a failing transaction (${rolledBack._tag}) changed nothing:`, (yield* richerThan(-1)).map((a) => a.balance))
  const serializable = yield* sql.withTransaction(sql<{ iso: string }>`SELECT current_setting('transaction_isolation') AS iso`).pipe(
    Effect.provideService(SqlClient.BeginTransaction, "BEGIN ISOLATION LEVEL SERIALIZABLE")
  )
  yield* Console.log("with SqlClient.BeginTransaction:", serializable[0]?.iso)

  yield* step("5. Interruption rolls back (the statement is cancelled on the server)")
  const fiber = yield* Effect.forkChild(sql.withTransaction(Effect.andThen(transfer("ann", "cid", 1), sql`SELECT pg_sleep(30)`)))
  yield* Effect.sleep("300 millis")
  yield* Fiber.interrupt(fiber)
  yield* Console.log("interrupted after 300 ms; balances:", (yield* richerThan(-1)).map((a) => `${a.owner} ${a.balance}`).join(", "))

  yield* step("6. The read client refuses writes")
  const replica = yield* EffectSql.ReadSqlClient
  const refused = yield* replica`DELETE FROM ${accounts}`.pipe(Effect.flip)
  yield* Console.log(`${refused.reason._tag}, SQLSTATE ${EffectSql.sqlState(refused)}: ${refused.message}`)

  yield* step("7. Dry run of an effect/sql statement")
  yield* Console.log(Statement.dryRun(sql`SELECT * FROM ${accounts} WHERE ${sql.and([sql.in("owner", ["ann", "o'neil"]), sql`balance > ${5}`])}`))

  yield* sql`DROP TABLE ${accounts}`
})

const PoolsLive = Layer.unwrap(Effect.gen(function*() {
  const server = yield* EmbeddedPostgres
  yield* Console.log(server.embedded ? `embedded Postgres on port ${server.port}` : "Postgres at DATABASE_URL")
  return DbPool.layer({ url: server.url, maxSize: 4 })
}))

const SqlLive = Layer.mergeAll(EffectSql.layer(), EffectSql.layerReadSqlClient()).pipe(Layer.provide(PoolsLive))

const ServerLive = postgresLayer({ sqlFile: "sql/test_schema.sql", settings: { "dbpool.seed_rows": "10000" } })

program.pipe(
  Effect.provide(SqlLive.pipe(Layer.provide(ServerLive))),
  NodeRuntime.runMain
)
