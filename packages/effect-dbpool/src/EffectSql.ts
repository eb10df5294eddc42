/**
 * `effect/sql` over effect-dbpool: a `SqlClient` whose statements run on the
 * write pool or the read pool, so that `SqlSchema`, `SqlResolver`,
 * `SqlModel`, `Migrator` and everything else written against `SqlClient`
 * gets this library's pools.
 *
 * - A single statement outside a transaction takes the pool's fast path
 *   (`pool.run`: an idle connection, or pipelining on a busy one); `raw` and
 *   `values` hold a connection of their own for the statement.
 * - `sql.withTransaction` holds one pooled connection for the transaction,
 *   as `pool.transaction` does: COMMIT on success, ROLLBACK on failure and on
 *   interruption (an interrupted statement is cancelled on the server first),
 *   savepoints when nested, and the connection is checked in clean — rolled
 *   back and reset if anything was left open. A COMMIT the server turned into
 *   a ROLLBACK is an error.
 * - The read client's connections are the read pool's: every write fails
 *   (`AuthorizationError`, SQLSTATE 25006), in a transaction too, whatever
 *   `SqlClient.BeginTransaction` asks for.
 * - Failures are `SqlError`s whose reason follows the SQLSTATE, with the
 *   library's `DbError` as the reason's `cause` (see {@link toSqlError}).
 * - Statements run through the extended protocol, one statement per text: a
 *   text with several statements is a syntax error, and `BEGIN`, `COMMIT` and
 *   the like are refused (transactions go through `withTransaction`).
 *   `stream` reads the whole result before emitting it (no server-side cursor).
 * - As with the pools, a session setting (`SET` without `LOCAL`) lasts until
 *   its connection goes back to the pool, which resets it: use `SET LOCAL`
 *   inside `withTransaction`, or `sql.reserve` for several statements.
 *
 * @example
 * ```ts
 * import { Effect, Layer, Redacted } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { DbPool, EffectSql } from "effect-dbpool"
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient
 *   return yield* sql.withTransaction(
 *     sql`UPDATE test_values SET val1 = val1 + 1 WHERE id IN ${sql.in([1, 2, 3])} RETURNING id, val1`
 *   )
 * })
 *
 * const SqlLive = EffectSql.layer().pipe(
 *   Layer.provide(DbPool.layer({ url: Redacted.make("postgres://localhost/app") }))
 * )
 * program.pipe(Effect.provide(SqlLive), Effect.runPromise)
 * ```
 *
 * @since 0.1.0
 */
import type { Effect, Layer } from "effect"
import type { Reactivity } from "effect/reactivity"
import type { SqlClient, SqlError, Statement as SqlStatement } from "effect/sql"
import type * as DbError from "./DbError.ts"
import type { InteractionPool } from "./InteractionPool.ts"
import * as internal from "./internal/effectSql.ts"
import type { ReadPool } from "./ReadPool.ts"
import type { WritePool } from "./WritePool.ts"

/**
 * How the client names things: `transformQueryNames` maps the identifiers
 * you write (`sql("userId")`, `sql.insert({ userId })` columns) to the
 * database's, `transformResultNames` maps result columns back;
 * `transformJson` (default `true`) applies them inside JSON values too.
 * `spanAttributes` are added to every statement's span.
 *
 * @example
 * ```ts
 * import { String } from "effect"
 * import { EffectSql } from "effect-dbpool"
 *
 * const options: EffectSql.Options = {
 *   transformQueryNames: String.camelToSnake,
 *   transformResultNames: String.snakeToCamel,
 *   spanAttributes: { service: "billing" }
 * }
 * const SqlLive = EffectSql.layer(options)
 * ```
 *
 * @since 0.1.0
 */
export interface Options extends internal.Options {}

/**
 * What `sql\`…\`.raw` returns: the command tag, the row count and the rows.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { SqlClient } from "effect/sql"
 * import type { EffectSql } from "effect-dbpool"
 *
 * const touched = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient
 *   // `raw` is typed `unknown` by effect/sql; this client returns a RawResult
 *   const result = (yield* sql`UPDATE test_values SET val2 = val2 WHERE id < ${10}`.raw) as EffectSql.RawResult
 *   return `${result.command} ${result.rowCount}` // "UPDATE 9"
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface RawResult extends internal.RawResult {}

/**
 * A `SqlClient` over a pool: the write pool, the read pool, or a named
 * pool's (`DbPool.named`). Needs `Reactivity` (the layers provide it).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Reactivity } from "effect/reactivity"
 * import { DbPool, EffectSql } from "effect-dbpool"
 *
 * const Analytics = DbPool.named("analytics")
 *
 * const analyticsSql = Effect.gen(function*() {
 *   const pool = yield* Analytics.Write
 *   return yield* EffectSql.make(pool)
 * }).pipe(Effect.provide(Reactivity.layer))
 * ```
 *
 * @since 0.1.0
 */
export const make: (pool: InteractionPool, options?: Options) => Effect.Effect<SqlClient.SqlClient, never, Reactivity.Reactivity> =
  internal.make

/**
 * Provides `SqlClient` over the {@link WritePool}.
 *
 * @example
 * ```ts
 * import { Effect, Layer, Redacted } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { DbPool, EffectSql } from "effect-dbpool"
 *
 * const SqlLive = EffectSql.layer().pipe(Layer.provide(DbPool.layer({ url: Redacted.make("postgres://localhost/app") })))
 *
 * const count = SqlClient.SqlClient.use((sql) => sql<{ n: number }>`SELECT count(*)::int AS n FROM test_values`)
 * count.pipe(Effect.provide(SqlLive), Effect.runPromise)
 * ```
 *
 * @since 0.1.0
 */
export const layer: (options?: Options) => Layer.Layer<SqlClient.SqlClient, never, WritePool> = internal.layer

/**
 * Provides `SqlClient` over the {@link ReadPool}: for programs that only
 * read. Every write fails with an `AuthorizationError` (SQLSTATE 25006).
 *
 * @example
 * ```ts
 * import { Effect, Layer, Redacted } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { DbPool, EffectSql } from "effect-dbpool"
 *
 * const ReportingSql = EffectSql.layerRead().pipe(
 *   Layer.provide(DbPool.layer({ url: Redacted.make("postgres://primary/app"), readUrl: Redacted.make("postgres://replica/app") }))
 * )
 * const report = SqlClient.SqlClient.use((sql) => sql`SELECT val1, count(*) FROM test_values GROUP BY val1`)
 * report.pipe(Effect.provide(ReportingSql), Effect.runPromise)
 * ```
 *
 * @since 0.1.0
 */
export const layerRead: (options?: Options) => Layer.Layer<SqlClient.SqlClient, never, ReadPool> = internal.layerRead

/**
 * A second `SqlClient`, over the read pool, next to the write pool's
 * `SqlClient.SqlClient`: provide it with {@link layerReadSqlClient}.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { EffectSql } from "effect-dbpool"
 *
 * const program = Effect.gen(function*() {
 *   const sql = yield* SqlClient.SqlClient // writes
 *   const replica = yield* EffectSql.ReadSqlClient // reads
 *   const [row] = yield* replica<{ val1: number }>`SELECT val1 FROM test_values WHERE id = ${1}`
 *   yield* sql`UPDATE test_values SET val2 = ${row?.val1 ?? 0} WHERE id = ${2}`
 * })
 * ```
 *
 * @since 0.1.0
 */
export { ReadSqlClient } from "./internal/effectSql.ts"

/**
 * Provides {@link ReadSqlClient} over the {@link ReadPool}.
 *
 * @example
 * ```ts
 * import { Layer, Redacted } from "effect"
 * import { DbPool, EffectSql } from "effect-dbpool"
 *
 * const SqlLive = Layer.mergeAll(EffectSql.layer(), EffectSql.layerReadSqlClient()).pipe(
 *   Layer.provide(DbPool.layer({ url: Redacted.make("postgres://localhost/app") }))
 * )
 * ```
 *
 * @since 0.1.0
 */
export const layerReadSqlClient: (options?: Options) => Layer.Layer<internal.ReadSqlClient, never, ReadPool> =
  internal.layerReadSqlClient

/**
 * The Postgres compiler of `effect/sql` statements this client uses:
 * `$1`…`$n` placeholders, identifiers in double quotes (a dot separates
 * schema and table: `sql("s.t")` is `"s"."t"`), {@link json} fragments as
 * `jsonb` parameters, `updateValues` as `(values …) AS alias(columns)`. Plain
 * objects are `jsonb` and arrays are Postgres arrays, as with `sql` of
 * effect-dbpool.
 *
 * @example
 * ```ts
 * import { Effect, String } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { EffectSql } from "effect-dbpool"
 *
 * const compiler = EffectSql.makeCompiler(String.camelToSnake)
 * const text = SqlClient.SqlClient.use((sql) =>
 *   Effect.succeed(compiler.compile(sql`SELECT * FROM ${sql("userAccounts")}`, false)[0]) // SELECT * FROM "user_accounts"
 * )
 * ```
 *
 * @since 0.1.0
 */
export const makeCompiler: (transform?: (name: string) => string, transformJson?: boolean) => SqlStatement.Compiler =
  internal.makeCompiler

/**
 * A value sent as `jsonb`: for JSON arrays and scalars, which would
 * otherwise be Postgres arrays and text (plain objects are `jsonb` already).
 * `@effect/sql-pg`'s `sql.json(…)` fragments are understood too.
 *
 * @example
 * ```ts
 * import { SqlClient } from "effect/sql"
 * import { EffectSql } from "effect-dbpool"
 *
 * const tag = SqlClient.SqlClient.use((sql) =>
 *   sql`INSERT INTO events ${sql.insert({ kind: "tagged", tags: EffectSql.json(["a", "b"]) })}`
 * )
 * ```
 *
 * @since 0.1.0
 */
export const json: (value: unknown) => SqlStatement.Fragment = internal.json

/**
 * The `SqlError` of a `DbError`; its reason's `cause` is the `DbError`
 * (with the SQLSTATE, constraint, table, …). Reasons by SQLSTATE:
 *
 * | SQLSTATE / error | reason |
 * |---|---|
 * | 23505 | `UniqueViolation` (with the constraint) |
 * | other 23xxx | `ConstraintError` |
 * | 40001 / 40P01 | `SerializationError` / `DeadlockError` |
 * | 55P03 | `LockTimeoutError` |
 * | 57014 | `StatementTimeoutError` |
 * | 42501, 25006 (a write through the read pool) | `AuthorizationError` |
 * | other 42xxx | `SqlSyntaxError` |
 * | 28xxx | `AuthenticationError` |
 * | 08xxx, `ConnectFailed`, `PoolTimeout`, `NoReplicaAvailable`, `ConnectionLost` before its statement was sent | `ConnectionError` |
 * | `ConnectionLost` after its statement was sent (outcome unknown), `PoolClosed`, `InvalidInput`, anything else | `UnknownError` |
 *
 * @example
 * ```ts
 * import { DbError, EffectSql } from "effect-dbpool"
 *
 * const error = EffectSql.toSqlError(new DbError.InvalidInput({ message: "no" }), "execute")
 * error.reason._tag // "UnknownError"
 * ```
 *
 * @since 0.1.0
 */
export const toSqlError: (error: DbError.DbError, operation: string) => SqlError.SqlError = internal.toSqlError

/**
 * The effect-dbpool error behind a `SqlError` of this client, if any.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { EffectSql } from "effect-dbpool"
 *
 * const insert = SqlClient.SqlClient.use((sql) => sql`INSERT INTO users ${sql.insert({ email: "a@b.c" })}`).pipe(
 *   Effect.tapError((e) => Effect.logWarning(`failed: ${EffectSql.dbError(e)?._tag}`)) // e.g. "UniqueViolation"
 * )
 * ```
 *
 * @since 0.1.0
 */
export const dbError = (error: SqlError.SqlError): DbError.DbError | undefined => {
  const cause: unknown = error.reason.cause
  return internal.isDbErrorCause(cause) ? cause : undefined
}

/**
 * The SQLSTATE of a `SqlError` of this client, when the server (or the
 * driver) gave one.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { EffectSql } from "effect-dbpool"
 *
 * const ratio = SqlClient.SqlClient.use((sql) => sql`SELECT 1 / ${0} AS r`).pipe(
 *   Effect.catchTag("SqlError", (e) => Effect.succeed(EffectSql.sqlState(e))) // "22012"
 * )
 * ```
 *
 * @since 0.1.0
 */
export const sqlState = (error: SqlError.SqlError): string | undefined => {
  const cause = dbError(error)
  return cause !== undefined && "sqlState" in cause ? cause.sqlState : undefined
}
