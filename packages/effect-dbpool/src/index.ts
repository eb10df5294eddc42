/**
 * effect-dbpool: asynchronous Postgres interaction pooling for Effect.
 *
 * @since 0.1.0
 */

/** @since 0.1.0 */
export * as Connection from "./Connection.ts"
/** @since 0.1.0 */
export * as DbError from "./DbError.ts"
/** @since 0.1.0 */
export * as DbPool from "./DbPool.ts"
/** @since 0.1.0 */
export * as EffectSql from "./EffectSql.ts"
/** @since 0.1.0 */
export * as InteractionPool from "./InteractionPool.ts"
/** @since 0.1.0 */
export * as Notifications from "./Notifications.ts"
/** @since 0.1.0 */
export * as PartialTransaction from "./PartialTransaction.ts"
/** @since 0.1.0 */
export * as ReadYourWrites from "./ReadYourWrites.ts"
/** @since 0.1.0 */
export * as Statement from "./Statement.ts"
/** @since 0.1.0 */
export { ReadPool } from "./ReadPool.ts"
/** @since 0.1.0 */
export { sql } from "./Statement.ts"
/** @since 0.1.0 */
export { WritePool } from "./WritePool.ts"
