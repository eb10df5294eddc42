/**
 * A connection held for the length of an interaction: what function
 * interactions, transactions and partial-transaction steps receive.
 *
 * @since 0.1.0
 */
import type { Duration, Effect, Schema, Stream } from "effect"
import type { DbError, RowDecodeError } from "./DbError.ts"
import type { Statement } from "./Statement.ts"

/**
 * A row as the driver returns it: column name to value (`int8` and `numeric`
 * as strings, `json` parsed, timestamps as `Date`, `bytea` as `Buffer`).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { type Connection, ReadPool, sql } from "effect-dbpool"
 *
 * const count = Effect.gen(function*() {
 *   const pool = yield* ReadPool
 *   const rows: ReadonlyArray<Connection.Row> = yield* pool.run(sql`SELECT count(*) AS n FROM test_values`)
 *   return Number(rows[0]?.["n"]) // count(*) is int8: it arrives as a string
 * })
 * ```
 *
 * @since 0.1.0
 */
export type Row = { readonly [column: string]: unknown }

/**
 * Runs a statement and returns its rows, or its rows decoded with a `Schema`.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const TestValue = Schema.Struct({ id: Schema.Number, val1: Schema.Number, val2: Schema.Number })
 *
 * const program = Effect.gen(function*() {
 *   const pool = yield* WritePool
 *   const rows = yield* pool.run(sql`SELECT * FROM test_values WHERE id = ${123}`, TestValue)
 *   return rows[0]?.val1
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface Run {
  (statement: Statement): Effect.Effect<ReadonlyArray<Row>, DbError>
  <S extends Schema.Top>(
    statement: Statement,
    schema: S
  ): Effect.Effect<ReadonlyArray<S["Type"]>, DbError | RowDecodeError, S["DecodingServices"]>
}

/**
 * Sends a notification (`pg_notify`, so any channel name works): a string
 * payload, or a value encoded to JSON with a `Schema`. A payload of 8000
 * bytes or more fails with `PayloadTooLarge` before reaching the server.
 * Sent inside a transaction, it is delivered at commit and never on rollback.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const Change = Schema.Struct({ id: Schema.Number })
 *
 * const program = Effect.gen(function*() {
 *   const pool = yield* WritePool
 *   yield* pool.transaction((conn) =>
 *     Effect.gen(function*() {
 *       yield* conn.run(sql`UPDATE test_values SET val1 = ${1} WHERE id = ${9}`)
 *       yield* conn.notify("changes", { id: 9 }, Change) // delivered at commit
 *     })
 *   )
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface Notify {
  (channel: string, payload: string): Effect.Effect<void, DbError>
  <S extends Schema.Top>(channel: string, value: S["Type"], schema: S): Effect.Effect<void, DbError, S["EncodingServices"]>
}

/**
 * Options of an outermost transaction. Nested transactions are savepoints
 * and take none.
 *
 * @example
 * ```ts
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const report = WritePool.use((pool) =>
 *   pool.transaction(
 *     (conn) => conn.run(sql`SELECT sum(val1) AS total FROM test_values`),
 *     { isolationLevel: "serializable", readOnly: true, deferrable: true }
 *   )
 * )
 * ```
 *
 * @since 0.1.0
 */
export interface TransactionOptions {
  readonly isolationLevel?: "read committed" | "repeatable read" | "serializable" | undefined
  readonly readOnly?: boolean | undefined
  /** Only meaningful with `serializable` and `readOnly`. */
  readonly deferrable?: boolean | undefined
  /** `SET LOCAL statement_timeout` for this transaction: a statement over it fails with `StatementTimeout`. */
  readonly statementTimeout?: Duration.Input | undefined
  /** `SET LOCAL lock_timeout` for this transaction: a lock wait over it fails with `LockNotAvailable`. */
  readonly lockTimeout?: Duration.Input | undefined
  /**
   * `SET LOCAL idle_in_transaction_session_timeout`: left idle this long between statements (a forgotten partial
   * transaction), the server ends the session, which rolls the transaction back; the next step fails with `ConnectionLost`.
   */
  readonly idleInTransactionSessionTimeout?: Duration.Input | undefined
}

/**
 * Reads a result through a cursor, `batchSize` rows at a time (default 1000):
 * memory holds at most two batches, whatever the result's size. The rows come
 * as a `Stream`; ending or interrupting it closes the cursor.
 *
 * @example
 * ```ts
 * import { Effect, Schema, Stream } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const Value = Schema.Struct({ id: Schema.Number, val1: Schema.Number })
 * const total = WritePool.use((pool) =>
 *   pool.stream(sql`SELECT id, val1 FROM test_values ORDER BY id`, Value, { batchSize: 5000 }).pipe(
 *     Stream.runFold(() => 0, (sum, row) => sum + row.val1)
 *   )
 * )
 * ```
 *
 * @since 0.1.0
 */
export interface StreamRows {
  (statement: Statement, options?: StreamOptions): Stream.Stream<Row, DbError>
  <S extends Schema.Top>(
    statement: Statement,
    schema: S,
    options?: StreamOptions
  ): Stream.Stream<S["Type"], DbError | RowDecodeError, S["DecodingServices"]>
}

/**
 * Options of {@link StreamRows}.
 *
 * @example
 * ```ts
 * import type { Connection } from "effect-dbpool"
 *
 * const options: Connection.StreamOptions = { batchSize: 10_000 }
 * ```
 *
 * @since 0.1.0
 */
export interface StreamOptions {
  /** Rows fetched per round trip. */
  readonly batchSize?: number | undefined
}

/**
 * One connection, held exclusively while the interaction runs.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const program = Effect.gen(function*() {
 *   const pool = yield* WritePool
 *   return yield* pool.interaction((conn) =>
 *     Effect.gen(function*() {
 *       yield* conn.run(sql`CREATE TEMP TABLE scratch (x int)`)
 *       yield* conn.run(sql`INSERT INTO scratch VALUES (${1}), (${2})`)
 *       return yield* conn.run(sql`SELECT sum(x) AS total FROM scratch`)
 *     })
 *   )
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface Connection {
  /** The server process id of this connection's backend (`pg_backend_pid()`). */
  readonly pid: number
  readonly run: Run
  readonly notify: Notify
  /** Reads a result through a cursor on this connection (inside its transaction, if any); valid while the interaction runs. */
  readonly stream: StreamRows
  /**
   * Runs `f` in a transaction on this connection: `BEGIN … COMMIT`, or a
   * savepoint when already inside one. Failure and interruption roll back.
   */
  readonly transaction: <A, E, R>(
    f: (connection: Connection) => Effect.Effect<A, E, R>,
    options?: TransactionOptions
  ) => Effect.Effect<A, E | DbError, R>
}
