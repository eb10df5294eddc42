/**
 * What every pool offers — the write pool and the read pool alike.
 *
 * @since 0.1.0
 */
import type { Effect } from "effect"
import type { Connection, Run, StreamRows, TransactionOptions } from "./Connection.ts"
import type { DbError } from "./DbError.ts"

/**
 * A snapshot of a pool: connections idle and in use, callers waiting, bounds.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { WritePool } from "effect-dbpool"
 *
 * const logStats = Effect.gen(function*() {
 *   const pool = yield* WritePool
 *   const stats = yield* pool.stats
 *   yield* Effect.log(`${stats.pool}: ${stats.used}/${stats.max} in use, ${stats.idle} idle, ${stats.pending} waiting`)
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface PoolStats {
  readonly pool: string
  readonly idle: number
  readonly used: number
  readonly pending: number
  readonly min: number
  readonly max: number
  /**
   * The most backends the Layer this pool belongs to may open on this pool's
   * server: this pool's `max`, plus the other pool's `max` when both use the
   * same server (no `readUrl`), plus the one listening connection when it is
   * on this server too (it uses the write URL). `DbPool.layer({ url, maxSize: 16 })`
   * may open 33 backends on the server; keep this below `max_connections`.
   */
  readonly serverMax: number
}

/**
 * Runs interactions on pooled connections.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 * const count = Effect.gen(function*() {
 *   const pool = yield* ReadPool
 *   const [row] = yield* pool.run(sql`SELECT count(*)::int AS n FROM test_values`)
 *   return row?.["n"]
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface InteractionPool {
  /** The pool's name (`"default"` unless declared with `DbPool.named`) and kind, e.g. `"default/write"`. */
  readonly name: string
  /**
   * Runs one autocommit statement. It takes an idle connection; when all are
   * busy and the pool is at its maximum, it is pipelined on a connection
   * already running single statements (and then, if interrupted, runs to
   * completion instead of being cancelled — see the README's Design notes).
   */
  readonly run: Run
  /** Runs a function interaction: several statements on one connection, outside a transaction. */
  readonly interaction: <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>) => Effect.Effect<A, E | DbError, R>
  /**
   * Runs `f` in a transaction: commit on success, rollback on failure and on
   * interruption. `f` starts as soon as BEGIN is sent; its first statement
   * waits for BEGIN's answer, and if the server refuses it (an isolation
   * level a standby cannot give, a timeout out of range) every statement of
   * `f` fails with that error without being sent, as does the transaction.
   */
  readonly transaction: <A, E, R>(
    f: (connection: Connection) => Effect.Effect<A, E, R>,
    options?: TransactionOptions
  ) => Effect.Effect<A, E | DbError, R>
  /**
   * Reads a result as a `Stream` through a cursor, on a connection held for
   * the stream's life (outside any transaction; inside one, use
   * `conn.stream`). Ending or interrupting the stream closes the cursor and
   * returns the connection clean.
   */
  readonly stream: StreamRows
  readonly stats: Effect.Effect<PoolStats>
}
