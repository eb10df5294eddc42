/**
 * The read pool: interactions against a replica (`readUrl`), or against the
 * primary in read-only sessions when there is no replica. Either way every
 * write through it fails with `ReadOnlyTransaction`, and so does, unsent, a
 * statement that would switch its session or transaction to read-write
 * (`SET TRANSACTION READ WRITE`, `set_config('default_transaction_read_only', …)`).
 *
 * @since 0.1.0
 */
import { Context } from "effect"
import type { InteractionPool, PoolStats } from "./InteractionPool.ts"

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

/**
 * One replica of a read pool over several replicas (`readUrls`): its own
 * pool's figures, plus whether reads go to it. `"down"`: its statements failed
 * with `ConnectFailed` / `ConnectionLost`, or it is not a standby (promoted);
 * `"lagging"`: it has not replayed what the primary had written
 * `maxReplicaLag` ago. Both are probed again every `replicaCheckInterval`.
 *
 * @example
 * ```ts
 * import type { ReplicaStats } from "effect-dbpool/ReadPool"
 *
 * const describe = (r: ReplicaStats) => `${r.pool} (${r.server}): ${r.state}${r.reason === undefined ? "" : `, ${r.reason}`}`
 * ```
 *
 * @since 0.1.0
 */
export interface ReplicaStats extends PoolStats {
  /** `host:port/database`. */
  readonly server: string
  readonly state: "up" | "down" | "lagging"
  /** Why it is down or lagging. */
  readonly reason?: string | undefined
  /** When the state last changed (epoch milliseconds, the Effect clock). */
  readonly since: number
  /** The last replay LSN seen on it (`pg_last_wal_replay_lsn()`). */
  readonly replayLsn?: string | undefined
}

/**
 * What `stats` of a read pool over several replicas gives: the sums over its
 * replicas (`pool` is the read pool's name, `serverMax` the largest of theirs),
 * each replica, and the read-only pool on the primary that takes the reads
 * when no replica can.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool } from "effect-dbpool"
 * import { isReplicaSetStats } from "effect-dbpool/ReadPool"
 *
 * const upReplicas = Effect.gen(function*() {
 *   const stats = yield* (yield* ReadPool).stats
 *   return isReplicaSetStats(stats) ? stats.replicas.filter((r) => r.state === "up").length : 0
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface ReplicaSetStats extends PoolStats {
  readonly replicas: ReadonlyArray<ReplicaStats>
  readonly fallback: PoolStats
}

/**
 * Are these the stats of a read pool over several replicas?
 *
 * @example
 * ```ts
 * import type { InteractionPool } from "effect-dbpool"
 * import { isReplicaSetStats } from "effect-dbpool/ReadPool"
 *
 * const replicaCount = (stats: InteractionPool.PoolStats) => isReplicaSetStats(stats) ? stats.replicas.length : 0
 * ```
 *
 * @since 0.1.0
 */
export const isReplicaSetStats = (stats: PoolStats): stats is ReplicaSetStats =>
  "replicas" in stats && Array.isArray((stats as { readonly replicas?: unknown }).replicas)
