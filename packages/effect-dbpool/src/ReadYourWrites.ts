/**
 * Read-your-writes over replicas (`DbPool.Config.readUrls`): after a write
 * commits, {@link writeToken} gives its position in the primary's WAL; reads
 * run under {@link withToken} go only to a replica that has replayed at least
 * that far, waiting up to `readYourWritesWait` for one, and otherwise to the
 * primary in a read-only session (or fail with `NoReplicaAvailable` under
 * `replicaFallback: "fail"`). Without `readUrls` every read already sees every
 * committed write (the read pool is on the primary, or on the one `readUrl`,
 * which the token does not cover) and a token changes nothing.
 *
 * @since 0.1.0
 */
import { Context, Effect } from "effect"
import type { DbError } from "./DbError.ts"
import type { InteractionPool } from "./InteractionPool.ts"
import * as Lsn from "./internal/lsn.ts"
import * as Statement from "./Statement.ts"
import { WritePool } from "./WritePool.ts"

/**
 * A position in the primary's WAL (where its inserted WAL ends, e.g.
 * `"0/3000148"`) taken after a write committed: a replica that has replayed
 * that far has the write, also when it was committed with
 * `synchronous_commit = off`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadYourWrites } from "effect-dbpool"
 *
 * const token: ReadYourWrites.ReadToken = { _tag: "ReadToken", lsn: "0/3000148" }
 * const logToken = Effect.log(`wrote up to ${token.lsn}`)
 * ```
 *
 * @since 0.1.0
 */
export interface ReadToken {
  readonly _tag: "ReadToken"
  /** The LSN as Postgres prints it: `X/Y`, both hexadecimal. */
  readonly lsn: string
}

/**
 * The token of the reads the current fiber makes (`undefined`: none). Set it
 * with {@link withToken}.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadYourWrites } from "effect-dbpool"
 *
 * const current = Effect.gen(function*() {
 *   const token = yield* ReadYourWrites.CurrentToken
 *   return token?.lsn ?? "none"
 * })
 * ```
 *
 * @since 0.1.0
 */
export const CurrentToken = Context.Reference<ReadToken | undefined>("effect-dbpool/ReadYourWrites/CurrentToken", {
  defaultValue: () => undefined
})

/**
 * The primary's current WAL position (how far WAL was inserted, so it covers
 * asynchronous commits too), read on `pool` (a write pool): take it after the
 * write's transaction committed.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { DbPool, ReadYourWrites, sql } from "effect-dbpool"
 *
 * const Analytics = DbPool.named("analytics")
 *
 * const record = Analytics.Write.use((pool) =>
 *   pool.run(sql`INSERT INTO events (kind) VALUES (${"login"})`).pipe(Effect.andThen(ReadYourWrites.tokenOf(pool)))
 * )
 * ```
 *
 * @since 0.1.0
 */
export const tokenOf = (pool: InteractionPool): Effect.Effect<ReadToken, DbError> =>
  Effect.map(pool.run(insertPosition), (rows): ReadToken => {
    const row = rows[0]
    const lsn = String(row?.["lsn"])
    const insert = Lsn.toBigInt(lsn)
    return {
      _tag: "ReadToken",
      lsn: insert === undefined ? lsn : Lsn.toText(Lsn.insertedUpTo(insert, BigInt(String(row?.["block"])), BigInt(String(row?.["segment"]))))
    }
  })

// The insert position, not pg_current_wal_lsn(): that is how far the WAL was written, which an asynchronous commit
// (synchronous_commit = off) returns before reaching.
const insertPosition = Statement.text(
  "SELECT pg_current_wal_insert_lsn()::text AS lsn, current_setting('wal_block_size') AS block, " +
    "pg_size_bytes(current_setting('wal_segment_size'))::text AS segment"
)

/**
 * {@link tokenOf} the default `WritePool`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadYourWrites, sql, WritePool } from "effect-dbpool"
 *
 * const rename = Effect.gen(function*() {
 *   const pool = yield* WritePool
 *   yield* pool.run(sql`UPDATE users SET name = ${"Ada"} WHERE id = ${1}`)
 *   return yield* ReadYourWrites.writeToken
 * })
 * ```
 *
 * @since 0.1.0
 */
export const writeToken: Effect.Effect<ReadToken, DbError, WritePool> = WritePool.use(tokenOf)

/**
 * Runs `effect` with every read through a read pool over replicas going to a
 * replica that has replayed `token` (see the module's documentation). Nested,
 * the later of the two tokens counts; `undefined` leaves the current one.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { ReadPool, ReadYourWrites, sql, WritePool } from "effect-dbpool"
 *
 * const renameThenRead = Effect.gen(function*() {
 *   const write = yield* WritePool
 *   yield* write.run(sql`UPDATE users SET name = ${"Ada"} WHERE id = ${1}`)
 *   const token = yield* ReadYourWrites.writeToken
 *   const read = yield* ReadPool
 *   return yield* read.run(sql`SELECT name FROM users WHERE id = ${1}`).pipe(ReadYourWrites.withToken(token))
 * })
 * ```
 *
 * @since 0.1.0
 */
export const withToken = (token: ReadToken | undefined) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => {
    const current = fiber.getRef(CurrentToken)
    const later = token === undefined ? current : current === undefined ? token : later2(current, token)
    return Effect.provideService(effect, CurrentToken, later)
  })

const later2 = (a: ReadToken, b: ReadToken): ReadToken => {
  const x = Lsn.toBigInt(a.lsn)
  const y = Lsn.toBigInt(b.lsn)
  return x === undefined ? b : y === undefined ? a : x >= y ? a : b
}
