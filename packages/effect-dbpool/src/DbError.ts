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

/** A unique or primary-key constraint was violated (SQLSTATE 23505). @since 0.1.0 */
export class UniqueViolation extends Data.TaggedError("UniqueViolation")<ServerErrorFields> {}

/** A foreign-key constraint was violated (SQLSTATE 23503). @since 0.1.0 */
export class ForeignKeyViolation extends Data.TaggedError("ForeignKeyViolation")<ServerErrorFields> {}

/** A check constraint was violated (SQLSTATE 23514). @since 0.1.0 */
export class CheckViolation extends Data.TaggedError("CheckViolation")<ServerErrorFields> {}

/** A NOT NULL constraint was violated (SQLSTATE 23502). @since 0.1.0 */
export class NotNullViolation extends Data.TaggedError("NotNullViolation")<ServerErrorFields> {}

/** A serializable or repeatable-read transaction could not be serialized (SQLSTATE 40001); retrying the whole transaction is safe. @since 0.1.0 */
export class SerializationFailure extends Data.TaggedError("SerializationFailure")<ServerErrorFields> {}

/** The server broke a deadlock by aborting this transaction (SQLSTATE 40P01). @since 0.1.0 */
export class Deadlock extends Data.TaggedError("Deadlock")<ServerErrorFields> {}

/** A lock could not be taken at once (`NOWAIT`, `lock_timeout`; SQLSTATE 55P03). @since 0.1.0 */
export class LockNotAvailable extends Data.TaggedError("LockNotAvailable")<ServerErrorFields> {}

/** The statement was cancelled by `statement_timeout` or a cancel request (SQLSTATE 57014). @since 0.1.0 */
export class StatementTimeout extends Data.TaggedError("StatementTimeout")<ServerErrorFields> {}

/** A write was attempted in a read-only transaction, e.g. through the `ReadPool` (SQLSTATE 25006). @since 0.1.0 */
export class ReadOnlyTransaction extends Data.TaggedError("ReadOnlyTransaction")<ServerErrorFields> {}

/** The SQL text does not parse (SQLSTATE 42601). @since 0.1.0 */
export class SyntaxError extends Data.TaggedError("SyntaxError")<ServerErrorFields> {}

/**
 * A transaction (or savepoint) ended in ROLLBACK instead of COMMIT because
 * one of its statements had failed and the failure was caught (SQLSTATE
 * 25P02). Serialization failures and deadlocks have tags of their own.
 *
 * @since 0.1.0
 */
export class TransactionAborted extends Data.TaggedError("TransactionAborted")<ServerErrorFields> {}

/** Any other error the server reported; `sqlState` and `sqlStateClass` say what. @since 0.1.0 */
export class DatabaseError extends Data.TaggedError("DatabaseError")<ServerErrorFields> {}

/**
 * The connection died while in use: the backend was terminated, the server
 * went down or the network broke. A transaction that had not reached COMMIT
 * was rolled back by the server; if the connection died during COMMIT, or
 * during an autocommit statement, whether it took effect is unknown — check
 * before retrying. The pool replaces the connection.
 *
 * @since 0.1.0
 */
export class ConnectionLost extends Data.TaggedError("ConnectionLost")<{
  readonly message: string
  /** SQLSTATE when the server sent one (class 08 or 57P01–57P03), otherwise the driver's code. */
  readonly sqlState?: string | undefined
  readonly sqlStateClass?: string | undefined
  readonly statement?: string | undefined
}> {}

/**
 * A new connection could not be opened: refused, timed out, unknown host or
 * rejected authentication. `server` is `host:port/database`, never the URL.
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
 * @since 0.1.0
 */
export class InvalidInput extends Data.TaggedError("InvalidInput")<{
  readonly message: string
}> {}

/**
 * Rows did not match the `Schema` they were decoded with.
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
 * @since 0.1.0
 */
export class ListenerGaveUp extends Data.TaggedError("ListenerGaveUp")<{
  readonly message: string
  readonly cause: unknown
}> {}

/**
 * Every error an interaction with the database can fail with.
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

/**
 * What a notification stream can fail with (besides `PayloadDecodeError`
 * when it decodes with a `Schema`).
 *
 * @since 0.1.0
 */
export type ListenError = PoolClosed | ListenerGaveUp | InvalidInput
