/**
 * The pool's operations: interactions, transactions and partial transactions
 * on connections from the slots (see slots.ts), rolling back or resetting
 * whatever a holder left before a connection goes back.
 */
import { type Duration, Effect, LogLevel, References, type Schema, type Scope, Semaphore } from "effect"
import type { Connection, TransactionOptions } from "../Connection.ts"
import * as DbError from "../DbError.ts"
import type { InteractionPool, PoolStats } from "../InteractionPool.ts"
import type { PartialTransaction } from "../PartialTransaction.ts"
import type { Statement } from "../Statement.ts"
import * as Conn from "./connection.ts"
import * as Slots from "./slots.ts"
import { changesSession } from "./sqlText.ts"

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
    const slots = yield* Slots.make(settings, Conn.open(settings))
    yield* Effect.addFinalizer(() =>
      Effect.logInfo("effect-dbpool: pool closed").pipe(Effect.annotateLogs({ pool: settings.name }))
    )

    const stats: Effect.Effect<PoolStats> = Effect.sync(() => ({ pool: settings.name, ...slots.counts() }))

    /** Runs before the connection goes back: a connection is returned only idle, outside a transaction, with its settings reset. */
    const checkIn = (conn: Conn.Conn, mode: Slots.Mode): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (mode === "exclusive") conn.lease++ // handles given out with it stop working
        const rollback = conn.txDepth > 0 && !conn.dead ? Conn.rollback(conn) : Effect.void
        return Effect.andThen(
          rollback,
          Effect.suspend(() =>
            conn.sessionChanged && !conn.dead && (mode === "exclusive" || conn.sharers === 1)
              ? Conn.resetSession(conn)
              : Effect.void
          )
        )
      }).pipe(Effect.ensuring(Effect.sync(() => slots.release(conn, mode))))

    const logInteraction = (what: string, start: number, ok: boolean) =>
      Effect.logDebug("effect-dbpool: interaction").pipe(
        Effect.annotateLogs({
          pool: settings.name,
          interaction: what,
          outcome: ok ? "ok" : "failed",
          durationMs: Math.round((performance.now() - start) * 1000) / 1000
        })
      )

    const withConnection = <A, E, R>(
      what: string,
      mode: Slots.Mode,
      f: (conn: Conn.Conn) => Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | DbError.DbError, R> =>
      Effect.withFiber((fiber) => {
        const interaction = Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(restore(slots.acquire(mode)), (conn) =>
            restore(f(conn)).pipe(Effect.onExit(() => checkIn(conn, mode))))
        )
        // The debug line costs a timer read and a log record per interaction: only when someone will see it.
        if (!LogLevel.isGreaterThanOrEqualTo("Debug", fiber.getRef(References.MinimumLogLevel))) return interaction
        const start = performance.now()
        return Effect.onExit(interaction, (exit) => logInteraction(what, start, exit._tag === "Success"))
      })

    const run = (statement: Statement, schema?: Schema.Top) =>
      withConnection(
        preview(statement.text),
        // A statement that changes the session must not change it under pipelined neighbours.
        changesSession(statement.text) ? "exclusive" : "shared",
        (conn) => Conn.run(conn, statement, schema)
      )

    const partialTransaction = (options?: TransactionOptions) =>
      Effect.gen(function*() {
        const conn = yield* Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(restore(slots.acquire("exclusive")), (conn) =>
            Effect.as(Effect.addFinalizer(() => checkIn(conn, "exclusive")), conn))
        )
        let state: "open" | "committed" | "rolled back" | "closed" = "open"
        const lock = yield* Semaphore.make(1)
        // Runs before the check-in (finalizers run last-added first): no step can start on a returned connection.
        yield* Effect.addFinalizer(() =>
          lock.withPermits(1)(Effect.sync(() => {
            if (state === "open") state = "closed"
          }))
        )
        yield* Effect.uninterruptible(Conn.begin(conn, options))
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
      interaction: (f) => withConnection("function", "exclusive", (conn) => f(interactionHandle(conn))),
      transaction: (f, options) =>
        withConnection("transaction", "exclusive", (conn) => Conn.transaction(conn, f, transactionOptions(options))),
      stats,
      partialTransaction
    }
    return impl
  })
