/**
 * Every way an interaction can fail, as tagged errors.
 *
 * Errors raised by the server carry the SQLSTATE (`sqlState`) and its class
 * (`sqlStateClass`, e.g. `"23 Integrity Constraint Violation"`), plus the
 * constraint, table, column, detail and hint when the server names them, and
 * the statement's SQL text (never its parameter values). No error carries a
 * password or a full connection URL.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const insert = Effect.gen(function*() {
 *   const pool = yield* WritePool
 *   return yield* pool.run(sql`INSERT INTO users (email) VALUES (${"a@b.c"})`)
 * }).pipe(Effect.catchTag("UniqueViolation", (e) => Effect.logWarning(`exists: ${e.constraint}`)))
 * ```
 *
 * @since 0.1.0
 */
import { Data } from "effect"
import type { PoolStats } from "./InteractionPool.ts"

/**
 * What the server said about a failed statement.
 *
 * @example
 * ```ts
 * import type { DbError } from "effect-dbpool"
 *
 * const describe = (e: DbError.ServerErrorFields) =>
 *   `${e.sqlState} (${e.sqlStateClass})${e.constraint === undefined ? "" : ` on ${e.constraint}`}: ${e.message}`
 * ```
 *
 * @since 0.1.0
 */
export interface ServerErrorFields {
  readonly message: string
  /** Five-character SQLSTATE code, e.g. `"23505"`. */
  readonly sqlState: string
  /** The SQLSTATE class: its first two characters and the class name, e.g. `"23 Integrity Constraint Violation"`. */
  readonly sqlStateClass: string
  readonly detail?: string | undefined
  readonly hint?: string | undefined
  readonly constraint?: string | undefined
  readonly table?: string | undefined
  readonly column?: string | undefined
  /** The SQL text of the statement (with `$n` placeholders, no values). */
  readonly statement?: string | undefined
}

/**
 * A unique or primary-key constraint was violated (SQLSTATE 23505).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const signUp = WritePool.use((pool) => pool.run(sql`INSERT INTO users (email) VALUES (${"a@b.c"})`)).pipe(
 *   Effect.catchTag("UniqueViolation", (e) => Effect.logWarning(`already registered (${e.constraint})`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class UniqueViolation extends Data.TaggedError("UniqueViolation")<ServerErrorFields> {}

/**
 * A foreign-key constraint was violated (SQLSTATE 23503).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const addOrder = WritePool.use((pool) => pool.run(sql`INSERT INTO orders (user_id) VALUES (${42})`)).pipe(
 *   Effect.catchTag("ForeignKeyViolation", (e) => Effect.fail(`no such user: ${e.detail}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class ForeignKeyViolation extends Data.TaggedError("ForeignKeyViolation")<ServerErrorFields> {}

/**
 * A check constraint was violated (SQLSTATE 23514).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const setPrice = WritePool.use((pool) => pool.run(sql`UPDATE products SET price = ${-1} WHERE id = ${7}`)).pipe(
 *   Effect.catchTag("CheckViolation", (e) => Effect.fail(`rejected by ${e.constraint}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class CheckViolation extends Data.TaggedError("CheckViolation")<ServerErrorFields> {}

/**
 * A NOT NULL constraint was violated (SQLSTATE 23502).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const addUser = WritePool.use((pool) => pool.run(sql`INSERT INTO users (email) VALUES (${null})`)).pipe(
 *   Effect.catchTag("NotNullViolation", (e) => Effect.fail(`${e.column} is required`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class NotNullViolation extends Data.TaggedError("NotNullViolation")<ServerErrorFields> {}

/**
 * A serializable or repeatable-read transaction could not be serialized (SQLSTATE 40001); retrying the whole transaction is safe.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const bump = WritePool.use((pool) =>
 *   pool.transaction((conn) => conn.run(sql`UPDATE counters SET n = n + 1 WHERE id = ${1}`), { isolationLevel: "serializable" })
 * ).pipe(Effect.retry({ times: 5, while: (e) => e._tag === "SerializationFailure" }))
 * ```
 *
 * @since 0.1.0
 */
export class SerializationFailure extends Data.TaggedError("SerializationFailure")<ServerErrorFields> {}

/**
 * The server broke a deadlock by aborting this transaction (SQLSTATE 40P01).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const move = WritePool.use((pool) => pool.transaction((conn) => conn.run(sql`UPDATE stock SET n = n - 1 WHERE id = ${1}`))).pipe(
 *   Effect.catchTag("Deadlock", (e) => Effect.logWarning(`rolled back to break a deadlock: ${e.detail}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class Deadlock extends Data.TaggedError("Deadlock")<ServerErrorFields> {}

/**
 * A lock could not be taken at once (`NOWAIT`, `lock_timeout`; SQLSTATE 55P03).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const tryLock = WritePool.use((pool) => pool.transaction((conn) => conn.run(sql`SELECT * FROM jobs WHERE id = ${1} FOR UPDATE NOWAIT`))).pipe(
 *   Effect.catchTag("LockNotAvailable", () => Effect.succeed([])) // someone else holds it
 * )
 * ```
 *
 * @since 0.1.0
 */
export class LockNotAvailable extends Data.TaggedError("LockNotAvailable")<ServerErrorFields> {}

/**
 * The statement was cancelled by `statement_timeout` or a cancel request (SQLSTATE 57014).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 *
 * const report = ReadPool.use((pool) => pool.run(sql`SELECT * FROM monthly_report`)).pipe(
 *   Effect.catchTag("StatementTimeout", () => Effect.succeed([])) // cancelled by statement_timeout
 * )
 * ```
 *
 * @since 0.1.0
 */
export class StatementTimeout extends Data.TaggedError("StatementTimeout")<ServerErrorFields> {}

/**
 * A write was attempted in a read-only transaction, e.g. through the `ReadPool` (SQLSTATE 25006).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 *
 * const purge = ReadPool.use((pool) => pool.run(sql`DELETE FROM test_values WHERE id = ${1}`)).pipe(
 *   Effect.catchTag("ReadOnlyTransaction", (e) => Effect.die(`writes go through the WritePool: ${e.statement}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class ReadOnlyTransaction extends Data.TaggedError("ReadOnlyTransaction")<ServerErrorFields> {}

/**
 * The SQL text does not parse (SQLSTATE 42601).
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 *
 * const adHoc = (query: string) =>
 *   ReadPool.use((pool) => pool.run(sql.text(query))).pipe(Effect.catchTag("SyntaxError", (e) => Effect.fail(`bad query: ${e.message}`)))
 * ```
 *
 * @since 0.1.0
 */
export class SyntaxError extends Data.TaggedError("SyntaxError")<ServerErrorFields> {}

/**
 * A transaction (or savepoint) ended in ROLLBACK instead of COMMIT because
 * one of its statements had failed and the failure was caught (SQLSTATE
 * 25P02). Serialization failures and deadlocks have tags of their own.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const program = WritePool.use((pool) =>
 *   pool.transaction((conn) => conn.run(sql`INSERT INTO users (email) VALUES (${"a@b.c"})`).pipe(Effect.ignore))
 * ).pipe(Effect.catchTag("TransactionAborted", () => Effect.logWarning("a caught failure rolled the transaction back")))
 * ```
 *
 * @since 0.1.0
 */
export class TransactionAborted extends Data.TaggedError("TransactionAborted")<ServerErrorFields> {}

/**
 * Any other error the server reported; `sqlState` and `sqlStateClass` say what.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 *
 * const ratio = ReadPool.use((pool) => pool.run(sql`SELECT 1 / ${0} AS r`)).pipe(
 *   Effect.catchTag("DatabaseError", (e) => Effect.fail(`${e.sqlStateClass} (${e.sqlState}): ${e.message}`)) // 22012 division_by_zero
 * )
 * ```
 *
 * @since 0.1.0
 */
export class DatabaseError extends Data.TaggedError("DatabaseError")<ServerErrorFields> {}

/**
 * The connection died while in use: the backend was terminated, the server
 * went down or the network broke. A transaction that had not reached COMMIT
 * was rolled back by the server; if the connection died during COMMIT, or
 * during an autocommit statement, whether it took effect is unknown — check
 * before retrying. The pool replaces the connection.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 *
 * // a read is safe to run again; a write may or may not have taken effect
 * const rows = ReadPool.use((pool) => pool.run(sql`SELECT * FROM test_values WHERE id = ${1}`)).pipe(
 *   Effect.retry({ times: 2, while: (e) => e._tag === "ConnectionLost" })
 * )
 * ```
 *
 * @since 0.1.0
 */
export class ConnectionLost extends Data.TaggedError("ConnectionLost")<{
  readonly message: string
  /** SQLSTATE when the server sent one (class 08 or 57P01–57P03), otherwise the driver's code. */
  readonly sqlState?: string | undefined
  readonly sqlStateClass?: string | undefined
  readonly statement?: string | undefined
  /**
   * Had the statement been written to the connection? If so its outcome is
   * unknown (a COMMIT may have committed); if not, it never reached the server
   * and running it again is safe ({@link isRetryable}).
   */
  readonly sent: boolean
}> {}

/**
 * A new connection could not be opened: refused, timed out, unknown host or
 * rejected authentication. `server` is `host:port/database`, never the URL.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 *
 * const ping = ReadPool.use((pool) => pool.run(sql`SELECT 1`)).pipe(
 *   Effect.catchTag("ConnectFailed", (e) => Effect.logError(`cannot reach ${e.server}: ${e.message}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class ConnectFailed extends Data.TaggedError("ConnectFailed")<{
  readonly message: string
  readonly server: string
  readonly sqlState?: string | undefined
  readonly sqlStateClass?: string | undefined
}> {}

/**
 * No connection became free within the pool's `acquireTimeout`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 *
 * const rows = ReadPool.use((pool) => pool.run(sql`SELECT * FROM test_values LIMIT ${10}`)).pipe(
 *   Effect.catchTag("PoolTimeout", (e) => Effect.fail(`${e.pool} busy: ${e.stats.pending} waiting after ${e.timeoutMillis} ms`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class PoolTimeout extends Data.TaggedError("PoolTimeout")<{
  readonly message: string
  readonly pool: string
  readonly timeoutMillis: number
  readonly stats: PoolStats
}> {}

/**
 * The pool's Layer was released: it hands out no more connections.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const flush = WritePool.use((pool) => pool.run(sql`DELETE FROM sessions WHERE expires < now()`)).pipe(
 *   Effect.catchTag("PoolClosed", (e) => Effect.logInfo(`${e.pool} closed: shutting down`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class PoolClosed extends Data.TaggedError("PoolClosed")<{
  readonly message: string
  readonly pool: string
}> {}

/**
 * The library refused the request before it reached the server: a value that
 * cannot be sent, a transaction-control statement outside the transaction
 * API, a step on a finished partial transaction.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 *
 * const bad = WritePool.use((pool) => pool.run(sql`COMMIT`)).pipe( // use pool.transaction instead
 *   Effect.catchTag("InvalidInput", (e) => Effect.die(e.message))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class InvalidInput extends Data.TaggedError("InvalidInput")<{
  readonly message: string
}> {}

/**
 * Rows did not match the `Schema` they were decoded with.
 *
 * @example
 * ```ts
 * import { Effect, Schema } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 * const TestValue = Schema.Struct({ id: Schema.Number, val1: Schema.Number })
 * const rows = ReadPool.use((pool) => pool.run(sql`SELECT id, val1::text AS val1 FROM test_values`, TestValue)).pipe(
 *   Effect.catchTag("RowDecodeError", (e) => Effect.die(`unexpected rows from ${e.statement}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class RowDecodeError extends Data.TaggedError("RowDecodeError")<{
  readonly message: string
  readonly statement: string
  readonly cause: unknown
}> {}

/**
 * A notification payload of 8000 bytes or more: Postgres refuses those, so
 * it is refused before it is sent.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const announce = (body: string) => Notifications.Notifications.use((n) => n.notify("news", body)).pipe(
 *   Effect.catchTag("PayloadTooLarge", (e) => Effect.logWarning(`${e.bytes} bytes > ${e.limit}: send an id instead`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class PayloadTooLarge extends Data.TaggedError("PayloadTooLarge")<{
  readonly message: string
  readonly channel: string
  readonly bytes: number
  /** The largest payload Postgres accepts, in bytes (7999). */
  readonly limit: number
}> {}

/**
 * A notification payload that is not JSON or does not match the `Schema` a
 * subscriber decodes with. The listening connection and other subscribers
 * are not affected.
 *
 * @example
 * ```ts
 * import { Effect, Schema, Stream } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const Job = Schema.Struct({ id: Schema.Number })
 * const worker = Stream.unwrap(Notifications.Notifications.useSync((n) => n.listen("jobs", Job))).pipe(
 *   Notifications.payloads,
 *   Stream.runForEach((job) => Effect.log(`job ${job.id}`)),
 *   Effect.catchTag("PayloadDecodeError", (e) => Effect.logError(`bad payload on ${e.channel}: ${e.payload}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class PayloadDecodeError extends Data.TaggedError("PayloadDecodeError")<{
  readonly message: string
  readonly channel: string
  readonly payload: string
  readonly cause: unknown
}> {}

/**
 * The listening connection could not be re-established within the
 * reconnect policy the pool was given; subscribed streams fail with this.
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const watch = Stream.unwrap(Notifications.Notifications.useSync((n) => n.listen("changes"))).pipe(
 *   Stream.runForEach((event) => Effect.log(event)),
 *   Effect.catchTag("ListenerGaveUp", (e) => Effect.logError(`listening connection lost for good: ${e.message}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class ListenerGaveUp extends Data.TaggedError("ListenerGaveUp")<{
  readonly message: string
  readonly cause: unknown
}> {}

/**
 * A read pool over several replicas (`readUrls`) with `replicaFallback:
 * "fail"` found no replica it could use: every one is down (its statements
 * failed with `ConnectFailed` / `ConnectionLost`) or lags more than
 * `maxReplicaLag`, or, for a read with a read-your-writes token, none replayed
 * the token within `readYourWritesWait`. Without `replicaFallback: "fail"`
 * such reads go to the primary in read-only sessions instead.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 * const rows = ReadPool.use((pool) => pool.run(sql`SELECT * FROM test_values LIMIT ${10}`)).pipe(
 *   Effect.catchTag("NoReplicaAvailable", (e) => Effect.logWarning(`${e.pool}: ${e.message}`))
 * )
 * ```
 *
 * @since 0.1.0
 */
export class NoReplicaAvailable extends Data.TaggedError("NoReplicaAvailable")<{
  readonly message: string
  /** The read pool, e.g. `"default/read"`. */
  readonly pool: string
}> {}

/**
 * Every error an interaction with the database can fail with.
 *
 * @example
 * ```ts
 * import type { DbError } from "effect-dbpool"
 *
 * const isTransient = (e: DbError.DbError): boolean =>
 *   e._tag === "SerializationFailure" || e._tag === "Deadlock" || e._tag === "PoolTimeout"
 * ```
 *
 * @since 0.1.0
 */
export type DbError =
  | UniqueViolation
  | ForeignKeyViolation
  | CheckViolation
  | NotNullViolation
  | SerializationFailure
  | Deadlock
  | LockNotAvailable
  | StatementTimeout
  | ReadOnlyTransaction
  | SyntaxError
  | TransactionAborted
  | DatabaseError
  | ConnectionLost
  | ConnectFailed
  | PoolTimeout
  | PoolClosed
  | InvalidInput
  | PayloadTooLarge
  | NoReplicaAvailable

/**
 * What a notification stream can fail with (besides `PayloadDecodeError`
 * when it decodes with a `Schema`).
 *
 * @example
 * ```ts
 * import { Stream } from "effect"
 * import { type DbError, Notifications } from "effect-dbpool"
 *
 * const changes: Stream.Stream<Notifications.ListenEvent, DbError.ListenError, Notifications.Notifications> =
 *   Stream.unwrap(Notifications.Notifications.useSync((n) => n.listen("changes")))
 * ```
 *
 * @since 0.1.0
 */
export type ListenError = PoolClosed | ListenerGaveUp | InvalidInput

const tags: ReadonlySet<string> = new Set([
  "UniqueViolation", "ForeignKeyViolation", "CheckViolation", "NotNullViolation", "SerializationFailure", "Deadlock",
  "LockNotAvailable", "StatementTimeout", "ReadOnlyTransaction", "SyntaxError", "TransactionAborted", "DatabaseError",
  "ConnectionLost", "ConnectFailed", "PoolTimeout", "PoolClosed", "InvalidInput", "PayloadTooLarge", "RowDecodeError",
  "PayloadDecodeError", "ListenerGaveUp", "NoReplicaAvailable"
] satisfies ReadonlyArray<(DbError | RowDecodeError | PayloadDecodeError | ListenerGaveUp)["_tag"]>)

/**
 * Is this one of this library's errors (any {@link DbError}, a
 * `RowDecodeError`, `PayloadDecodeError` or `ListenerGaveUp`)?
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { DbError } from "effect-dbpool"
 *
 * const report = (e: unknown) => DbError.isDbError(e) ? Effect.logWarning(`${e._tag}: ${e.message}`) : Effect.die(e)
 * ```
 *
 * @since 0.1.0
 */
export const isDbError = (u: unknown): u is DbError | RowDecodeError | PayloadDecodeError | ListenerGaveUp =>
  u instanceof Error && "_tag" in u && typeof u._tag === "string" && tags.has(u._tag)

/**
 * Can the work that failed simply be run again? True for what Postgres asks
 * you to retry (`SerializationFailure`, `Deadlock`), for waits that gave up
 * (`PoolTimeout`) and for failures before anything reached the server
 * (`ConnectFailed`, `ConnectionLost` with `sent: false`). A lost connection
 * after the statement was sent is not: a COMMIT may have committed.
 *
 * @example
 * ```ts
 * import { Effect, Schedule } from "effect"
 * import { DbError, sql, WritePool } from "effect-dbpool"
 *
 * const transfer = WritePool.use((pool) =>
 *   pool.transaction((conn) => conn.run(sql`UPDATE accounts SET balance = balance - 1 WHERE id = ${1}`), { isolationLevel: "serializable" })
 * ).pipe(Effect.retry({ while: DbError.isRetryable, schedule: Schedule.exponential("10 millis"), times: 5 }))
 * ```
 *
 * @since 0.1.0
 */
export const isRetryable = (u: unknown): boolean => {
  if (!isDbError(u)) return false
  switch (u._tag) {
    case "SerializationFailure":
    case "Deadlock":
    case "PoolTimeout":
    case "ConnectFailed":
      return true
    case "ConnectionLost":
      return !u.sent
    default:
      return false
  }
}
