/**
 * The pool: effect's `Pool` of single-connection driver instances, with the
 * bookkeeping a database pool needs around it — acquire timeout, retiring
 * dead, doubtful and expired connections at check-out and check-in, rolling
 * back whatever a holder left open.
 */
import { Duration, Effect, Exit, Pool, Schema, Scope, Semaphore } from "effect"
import type { Connection, TransactionOptions } from "../Connection.ts"
import * as DbError from "../DbError.ts"
import type { InteractionPool, PoolStats } from "../InteractionPool.ts"
import type { PartialTransaction } from "../PartialTransaction.ts"
import type { Statement } from "../Statement.ts"
import * as Conn from "./connection.ts"

/** Everything one pool needs, resolved from the user's config. */
export interface Settings extends Conn.ConnectOptions {
  readonly name: string
  readonly minSize: number
  readonly maxSize: number
  readonly acquireTimeout: Duration.Duration
  readonly idleTimeout: Duration.Duration
}

/** The write pool's shape; the read pool exposes the `InteractionPool` part only. */
export interface PoolImpl extends InteractionPool {
  readonly partialTransaction: (options?: TransactionOptions) => Effect.Effect<PartialTransaction, DbError.DbError, Scope.Scope>
}

const preview = (text: string) => (text.length > 120 ? `${text.slice(0, 117)}...` : text)

export const make = (settings: Settings): Effect.Effect<PoolImpl, never, Scope.Scope> =>
  Effect.gen(function*() {
    let closed = false
    const pool = yield* Pool.makeWithTTL({
      acquire: Conn.open(settings),
      min: settings.minSize,
      max: settings.maxSize,
      timeToLive: settings.idleTimeout,
      timeToLiveStrategy: "usage"
    })
    // Added after the pool, so it runs before the pool shuts down: late callers get PoolClosed, not an interruption.
    yield* Effect.addFinalizer(() =>
      Effect.andThen(
        Effect.sync(() => {
          closed = true
        }),
        Effect.logInfo("effect-dbpool: pool closed").pipe(Effect.annotateLogs({ pool: settings.name }))
      )
    )

    const stats: Effect.Effect<PoolStats> = Effect.map(Pool.stats(pool), (s) => ({ pool: settings.name, ...s }))

    const isReusable = (conn: Conn.Conn) => !conn.dead && !conn.doubtful && Date.now() < conn.expiresAt

    const timeoutMillis = Duration.toMillis(settings.acquireTimeout)
    const timedOut = Effect.flatMap(stats, (s) =>
      Effect.fail(
        new DbError.PoolTimeout({
          message:
            `no connection of pool ${settings.name} became free within ${timeoutMillis} ms (idle ${s.idle}, used ${s.used}, waiting ${s.pending}, max ${s.max})`,
          pool: settings.name,
          timeoutMillis,
          stats: s
        })
      ))

    /** A healthy connection for the current scope; dead or expired ones found on the way are retired. */
    const checkout: Effect.Effect<Conn.Conn, DbError.DbError, Scope.Scope> = Effect.gen(function*() {
      if (closed) {
        return yield* new DbError.PoolClosed({ message: `pool ${settings.name} is closed`, pool: settings.name })
      }
      const outer = yield* Effect.scope
      while (true) {
        const inner = yield* Scope.fork(outer)
        const conn = yield* Scope.provide(Pool.get(pool), inner)
        if (isReusable(conn)) return conn
        yield* Pool.invalidate(pool, conn)
        yield* Scope.close(inner, Exit.void)
      }
    }).pipe(Effect.timeoutOrElse({ duration: settings.acquireTimeout, orElse: () => timedOut }))

    /** Runs before the connection goes back: a connection is returned only idle, outside a transaction. */
    const checkIn = (conn: Conn.Conn): Effect.Effect<void> =>
      Effect.andThen(
        conn.txDepth > 0 && !conn.dead ? Conn.rollback(conn) : Effect.void,
        Effect.suspend(() =>
          isReusable(conn) && conn.sessionChanged
            ? Conn.resetSession(conn)
            : Effect.void
        ).pipe(Effect.andThen(Effect.suspend(() => (isReusable(conn) ? Effect.void : Pool.invalidate(pool, conn)))))
      )

    const withConnection = <A, E, R>(
      what: string,
      f: (conn: Conn.Conn) => Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | DbError.DbError, R> =>
      Effect.suspend(() => {
        const start = performance.now()
        return Effect.scoped(
          Effect.flatMap(checkout, (conn) => Effect.onExit(f(conn), () => checkIn(conn)))
        ).pipe(
          Effect.onExit((exit) =>
            Effect.logDebug("effect-dbpool: interaction").pipe(
              Effect.annotateLogs({
                pool: settings.name,
                interaction: what,
                outcome: exit._tag === "Success" ? "ok" : "failed",
                durationMs: Math.round((performance.now() - start) * 1000) / 1000
              })
            )
          )
        )
      })

    const run = (statement: Statement, schema?: Schema.Top) =>
      withConnection(preview(statement.text), (conn) => Conn.run(conn, statement, schema))

    const partialTransaction = (options?: TransactionOptions) =>
      Effect.gen(function*() {
        const conn = yield* checkout
        yield* Effect.addFinalizer(() => checkIn(conn))
        yield* Effect.uninterruptible(Conn.begin(conn, options))
        let state: "open" | "committed" | "rolled back" = "open"
        const lock = yield* Semaphore.make(1)
        const step = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | DbError.DbError, R> =>
          lock.withPermits(1)(
            Effect.suspend((): Effect.Effect<A, E | DbError.DbError, R> =>
              state === "open"
                ? effect
                : Effect.fail(new DbError.InvalidInput({ message: `the partial transaction is already ${state}` }))
            )
          )
        const finish = (next: "committed" | "rolled back", effect: Effect.Effect<void, DbError.DbError>) =>
          step(Effect.ensuring(effect, Effect.sync(() => {
            state = next
          })))
        const partial: PartialTransaction = {
          pid: conn.pid,
          // The overloads of PartialTransaction["run"] are implemented by this one signature.
          run: ((statement: Statement, schema?: Schema.Top) => step(Conn.run(conn, statement, schema))) as PartialTransaction["run"],
          // Likewise for PartialTransaction["notify"].
          notify: ((channel: string, payload: unknown, schema?: Schema.Top) =>
            step(Conn.notify(conn, channel, payload, schema))) as PartialTransaction["notify"],
          interaction: <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>) =>
            step(Effect.suspend(() => f(Conn.handle(conn)))),
          commit: finish("committed", Conn.commit(conn)),
          rollback: finish("rolled back", Conn.rollback(conn))
        }
        return partial
      })

    /** The read pool runs read-only transactions only: asking it for a read-write one gets a read-only one. */
    const transactionOptions = (options: TransactionOptions | undefined): TransactionOptions | undefined =>
      settings.readOnly && options?.readOnly === false ? { ...options, readOnly: true } : options

    /** The handle a function interaction receives; on the read pool its transactions are read-only too. */
    const interactionHandle = (conn: Conn.Conn): Connection => {
      const connection = Conn.handle(conn)
      return settings.readOnly
        ? { ...connection, transaction: (f, options) => connection.transaction(f, transactionOptions(options)) }
        : connection
    }

    yield* Effect.logInfo("effect-dbpool: pool started").pipe(
      Effect.annotateLogs({
        pool: settings.name,
        server: settings.server,
        readOnly: settings.readOnly,
        minSize: settings.minSize,
        maxSize: settings.maxSize
      })
    )

    const impl: PoolImpl = {
      name: settings.name,
      // The overloads of InteractionPool["run"] are implemented by this one signature.
      run: run as InteractionPool["run"],
      interaction: (f) => withConnection("function", (conn) => f(interactionHandle(conn))),
      transaction: (f, options) =>
        withConnection("transaction", (conn) => Conn.transaction(conn, f, transactionOptions(options))),
      stats,
      partialTransaction
    }
    return impl
  })
