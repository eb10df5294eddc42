/**
 * Partial transactions: a transaction whose steps are run at different
 * times, with anything in between, on one connection held for the scope.
 *
 * gDBPool let an interaction take a row lock, the program do other work, and
 * a second interaction rely on the lock and commit. Here the held connection
 * is a scoped resource: closing the scope without `commit` rolls back and
 * releases every lock, and the connection goes back to the pool clean — or
 * not at all.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const program = Effect.scoped(Effect.gen(function*() {
 *   const pool = yield* WritePool
 *   const tx = yield* pool.partialTransaction()
 *   yield* tx.run(sql`SELECT * FROM test_values WHERE id = ${459} FOR UPDATE`)
 *   // … other interactions, other fibers, sleeps: the row stays locked …
 *   yield* tx.run(sql`UPDATE test_values SET val1 = ${123} WHERE id = ${459}`)
 *   yield* tx.commit
 * }))
 * ```
 *
 * @since 0.1.0
 */
import type { Effect } from "effect"
import type { Connection, Notify, Run } from "./Connection.ts"
import type { DbError } from "./DbError.ts"

/**
 * An open transaction on a held connection. Steps are serialised: steps from
 * several fibers run one after the other. After `commit`, `rollback`, or a
 * lost connection, further steps fail with `InvalidInput` (finished) or
 * `ConnectionLost`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { type PartialTransaction, sql } from "effect-dbpool"
 *
 * const finish = (tx: PartialTransaction.PartialTransaction, id: number) =>
 *   Effect.gen(function*() {
 *     yield* tx.run(sql`UPDATE test_values SET val1 = val1 + 1 WHERE id = ${id}`)
 *     yield* tx.notify("changes", String(id)) // delivered at commit
 *     yield* tx.commit
 *   })
 * ```
 *
 * @since 0.1.0
 */
export interface PartialTransaction {
  /** The backend pid of the held connection, e.g. to look it up in `pg_locks`. */
  readonly pid: number
  /** Runs one statement inside the transaction. */
  readonly run: Run
  /** Sends a notification from inside the transaction: delivered at commit, never on rollback. */
  readonly notify: Notify
  /** Runs several statements inside the transaction; `connection.transaction` there makes a savepoint. */
  readonly interaction: <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>) => Effect.Effect<A, E | DbError, R>
  /** Commits. Fails with `TransactionAborted` if a step had failed, since the server then rolls back instead. */
  readonly commit: Effect.Effect<void, DbError>
  /** Rolls back now, rather than when the scope closes. */
  readonly rollback: Effect.Effect<void, DbError>
}
