/**
 * The read pool: interactions against a replica (`readUrl`), or against the
 * primary in read-only sessions when there is no replica. Either way every
 * write through it fails with `ReadOnlyTransaction`.
 *
 * @since 0.1.0
 */
import { Context } from "effect"
import type { InteractionPool } from "./InteractionPool.ts"

/**
 * The default read pool, provided by `DbPool.layer` / `DbPool.layerConfig`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, sql } from "effect-dbpool"
 *
 * const rows = Effect.gen(function*() {
 *   const pool = yield* ReadPool
 *   return yield* pool.run(sql`SELECT * FROM test_values WHERE id = ${123}`)
 * })
 * ```
 *
 * @since 0.1.0
 */
export class ReadPool extends Context.Service<ReadPool, InteractionPool>()("effect-dbpool/ReadPool") {}
