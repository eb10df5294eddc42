/**
 * The write pool: interactions against the primary server, and partial
 * transactions.
 *
 * @since 0.1.0
 */
import { Context, type Effect, type Scope } from "effect"
import type { TransactionOptions } from "./Connection.ts"
import type { DbError } from "./DbError.ts"
import type { InteractionPool } from "./InteractionPool.ts"
import type { PartialTransaction } from "./PartialTransaction.ts"

/**
 * What the write pool offers: every {@link InteractionPool} operation, plus
 * partial transactions.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const lockRow = Effect.gen(function*() {
 *   const pool = yield* WritePool // every InteractionPool operation, plus partialTransaction
 *   const tx = yield* pool.partialTransaction({ isolationLevel: "repeatable read" })
 *   yield* tx.run(sql`SELECT * FROM test_values WHERE id = ${459} FOR UPDATE`)
 *   return tx // rolls back when the enclosing scope closes without tx.commit
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface WritePoolService extends InteractionPool {
  /**
   * Opens a transaction on a connection held until the scope closes. Steps
   * run on it whenever the program likes; closing the scope without `commit`
   * rolls back. The connection is handed out once BEGIN is sent; the first
   * step waits for BEGIN's answer, so a BEGIN the server refuses fails that
   * step (and every later one, and `commit`) with the server's error.
   */
  readonly partialTransaction: (
    options?: TransactionOptions
  ) => Effect.Effect<PartialTransaction, DbError, Scope.Scope>
}

/**
 * The default write pool, provided by `DbPool.layer` / `DbPool.layerConfig`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { sql, WritePool } from "effect-dbpool"
 *
 * const rename = Effect.gen(function*() {
 *   const pool = yield* WritePool
 *   yield* pool.run(sql`UPDATE test_values SET val1 = ${123} WHERE id = ${459}`)
 * })
 * ```
 *
 * @since 0.1.0
 */
export class WritePool extends Context.Service<WritePool, WritePoolService>()("effect-dbpool/WritePool") {}
