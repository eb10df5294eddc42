/**
 * The pool's operations: interactions, transactions and partial transactions
 * on connections leased from the slots (see slots.ts), rolling back or
 * resetting whatever a holder left before a connection goes back.
 */
import { Clock, Context, type Duration, Effect, LogLevel, References, type Schema, Scope, Semaphore, Stream } from "effect"
import type { Connection, StreamOptions, TransactionOptions } from "../Connection.ts"
import * as DbError from "../DbError.ts"
import type { InteractionPool, PoolStats } from "../InteractionPool.ts"
import type { PartialTransaction } from "../PartialTransaction.ts"
import type { Statement } from "../Statement.ts"
import * as Conn from "./connection.ts"
import * as Slots from "./slots.ts"
import { operationOf } from "./sqlText.ts"
import * as Telemetry from "./telemetry.ts"

/** Everything one pool needs, resolved from the user's config. */
export interface Settings extends Conn.ConnectOptions {
  readonly name: string
  readonly minSize: number
  readonly maxSize: number
  readonly serverMax: number
  readonly acquireTimeout: Duration.Duration
  readonly idleTimeout: Duration.Duration
  readonly pipelining: Slots.Pipelining
  readonly target: Telemetry.Target
}

/** The write pool's shape; the read pool exposes the `InteractionPool` part only. */
export interface PoolImpl extends InteractionPool {
  readonly partialTransaction: (options?: TransactionOptions) => Effect.Effect<PartialTransaction, DbError.DbError, Scope.Scope>
  /** How busy the pool is (statements and holders in flight plus waiters), read without sampling metrics: for routing. */
  readonly load: () => number
  /** Connections given back so far: whether the pool makes progress (for a replica's probe). */
  readonly released: () => number
}

/**
 * What the effect/sql bridge (effectSql.ts) needs of a pool beyond its public
 * interface: a connection held exclusively until a scope closes (then checked
 * in like any other: rolled back and reset first if its holder left a
 * transaction or session settings). Whether the pool is read-only is its connections' `readOnly`.
 */
export interface Internals {
  readonly server: string
  readonly lease: Effect.Effect<Conn.Conn, DbError.DbError, Scope.Scope>
}

const internalsByPool = new WeakMap<object, Internals>()

/** The internals of a pool made by {@link make}; undefined for anything else. */
export const internals = (pool: object): Internals | undefined => internalsByPool.get(pool)

/** Gives a pool made elsewhere (the read pool over replicas) internals of its own. */
export const registerInternals = (pool: object, internals: Internals): void => {
  internalsByPool.set(pool, internals)
}

/** A step of a partial transaction that is running, and whether it still is. */
interface Step {
  readonly tx: object
  live: boolean
}

/**
 * The partial-transaction steps the current fiber runs inside: a step started
 * from inside another step of the same transaction (`tx.run` inside
 * `tx.interaction`) already holds its lock and runs at once.
 */
const CurrentSteps = Context.Reference<ReadonlyArray<Step>>("effect-dbpool/internal/CurrentSteps", {
  defaultValue: () => []
})

const preview = (text: string) => (text.length > 120 ? `${text.slice(0, 117)}...` : text)

export const make = (settings: Settings): Effect.Effect<PoolImpl, never, Scope.Scope> =>
  Effect.gen(function*() {
    const slots = yield* Slots.make(settings, Conn.open(settings))
    const clock = yield* Clock.Clock
    yield* Effect.addFinalizer(() =>
      Effect.logInfo("effect-dbpool: pool closed").pipe(Effect.annotateLogs({ pool: settings.name }))
    )

    const stats: Effect.Effect<PoolStats> = Effect.sync(() => ({ pool: settings.name, ...slots.counts() }))

    /**
     * Returns a lease: rolled back and reset first when its holder left a
     * transaction or session settings; otherwise straight back (no effect to run).
     * An exclusive holder that left a statement running gives back a connection
     * that is closed instead (see `Conn.abandonLeftRunning`).
     */
    const checkIn = (lease: Slots.Lease, mode: Slots.Mode): Effect.Effect<void> => {
      if (mode === "exclusive") Conn.abandonLeftRunning(lease.conn)
      return Conn.needsCleanup(lease.conn)
        ? Effect.ensuring(Conn.cleanUp(lease.conn), Effect.sync(() => slots.release(lease, mode)))
        : Effect.sync(() => slots.release(lease, mode))
    }

    const logInteraction = (what: string, start: number, ok: boolean) =>
      Effect.logDebug("effect-dbpool: interaction").pipe(
        Effect.annotateLogs({
          pool: settings.name,
          interaction: what,
          outcome: ok ? "ok" : "failed",
          durationMs: Math.round((clock.currentTimeMillisUnsafe() - start) * 1000) / 1000
        })
      )

    /** `operation`: what the duration metric calls it (`SELECT`, `interaction`, `transaction`). */
    const withLease = <A, E, R>(
      what: () => string,
      operation: string,
      mode: Slots.Mode,
      f: (lease: Slots.Lease) => Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | DbError.DbError, R> =>
      Effect.withFiber((fiber) => {
        const start = clock.currentTimeMillisUnsafe()
        const interaction = Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(restore(slots.acquire(mode)), (lease) =>
            Effect.onExit(restore(f(lease)), () => {
              slots.metrics.operation(operation, clock.currentTimeMillisUnsafe() - start)
              return checkIn(lease, mode)
            }))
        )
        // The debug line costs a log record per interaction: only when someone will see it.
        if (!LogLevel.isGreaterThanOrEqualTo("Debug", fiber.getRef(References.MinimumLogLevel))) return interaction
        return Effect.onExit(interaction, (exit) => logInteraction(what(), start, exit._tag === "Success"))
      })

    /** A handle valid while `f` runs: afterwards it refuses. */
    const withHandle = <A, E, R>(
      conn: Conn.Conn,
      f: (connection: Connection) => Effect.Effect<A, E, R>,
      valid: () => boolean = () => true
    ): Effect.Effect<A, E, R> =>
      Effect.suspend(() => {
        let live = true
        const connection = Conn.handle(conn, () => live && valid(), transactionOptions, settings.target)
        return Effect.ensuring(f(connection), Effect.sync(() => {
          live = false
        }))
      })

    const runLeased = (prepared: Conn.Prepared, schema: Schema.Top | undefined) => {
      // A statement that changes the session must not change it under pipelined neighbours.
      const mode: Slots.Mode = prepared.changesSession ? "exclusive" : "shared"
      return withLease(() => preview(prepared.text), operationOf(prepared.text), mode, (lease) =>
        Conn.runPrepared(lease.conn, prepared, schema, mode === "shared" ? () => !slots.alone(lease) : undefined))
    }

    /**
     * The fast path of a plain statement (no schema, no session change, debug
     * logging off): one registration takes a connection synchronously, sends
     * the statement and gives the connection back when it settles — no fibers,
     * scopes or finalizers of its own. The interruption rules are `execute`'s.
     * With no connection free now it falls back to the path that waits.
     */
    const runFast = (prepared: Conn.Prepared): Effect.Effect<ReadonlyArray<unknown>, DbError.DbError> =>
      Effect.callback<ReadonlyArray<unknown>, DbError.DbError>((resume) => {
        const lease = slots.tryAcquire("shared")
        const operation = operationOf(prepared.text)
        if (lease === undefined) {
          return resume(withLease(() => preview(prepared.text), operation, "shared", (lease) =>
            Effect.map(Conn.execute(lease.conn, prepared.text, prepared.params, () => !slots.alone(lease)), Conn.plainRows)))
        }
        const start = clock.currentTimeMillisUnsafe()
        return Conn.send(
          lease.conn,
          prepared.text,
          prepared.params,
          resume,
          Conn.plainRows,
          () => !slots.alone(lease),
          (completed) => {
            slots.metrics.operation(operation, clock.currentTimeMillisUnsafe() - start)
            slots.release(lease, "shared", completed)
          }
        )
      })

    const run = (statement: Statement, schema?: Schema.Top) => {
      // Checked before a connection is acquired: a refused statement never holds one.
      const prepared = Conn.prepare(statement, settings.readOnly)
      if (Conn.isRefused(prepared)) return Effect.fail(prepared)
      return Effect.withFiber((fiber) => {
        // Traced, the statement's span covers its wait for a connection and its run.
        if (Telemetry.tracing(fiber)) return Conn.tracedNow(settings.target, prepared.text, runLeased(prepared, schema))
        // The debug line of the leased path is wanted: take that path.
        return schema !== undefined || prepared.changesSession ||
            LogLevel.isGreaterThanOrEqualTo("Debug", fiber.getRef(References.MinimumLogLevel))
          ? runLeased(prepared, schema)
          : runFast(prepared)
      })
    }

    const partialTransaction = (options?: TransactionOptions): Effect.Effect<PartialTransaction, DbError.DbError, Scope.Scope> =>
      Effect.flatMap(Effect.scope, (scope) =>
        Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(restore(slots.acquire("exclusive")), (lease) => {
            const conn = lease.conn
            const tx = {}
            let state: "open" | "committed" | "rolled back" | "closed" = "open"
            const lock = Semaphore.makeUnsafe(1)
            // One finalizer, added with the lease: first no step can start (it waits for a running one), then the
            // check-in. Scope.addFinalizer, not Effect.addFinalizer: there is no context of the caller's to restore.
            const close = Effect.andThen(
              lock.withPermits(1)(Effect.sync(() => {
                if (state === "open") state = "closed"
              })),
              Effect.suspend(() => checkIn(lease, "exclusive")) // decided at close: what the holder left by then
            )
            const guarded = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | DbError.DbError, R> =>
              Effect.suspend((): Effect.Effect<A, E | DbError.DbError, R> =>
                state === "open"
                  ? effect
                  : Effect.fail(new DbError.InvalidInput({ message: `the partial transaction is already ${state}` }))
              )
            /**
             * Steps are serialised, except a step started from inside a running step of this transaction. Only an
             * interaction runs the caller's code, so only its step is marked in the fiber's context (`nests`): a
             * statement's step cannot contain another, and skips that cost.
             */
            const step = <A, E, R>(effect: Effect.Effect<A, E, R>, nests = false): Effect.Effect<A, E | DbError.DbError, R> =>
              Effect.withFiber((fiber) => {
                const current = fiber.getRef(CurrentSteps)
                if (current.length > 0 && current.some((s) => s.tx === tx && s.live)) return guarded(effect)
                if (!nests) return lock.withPermits(1)(guarded(effect))
                const self: Step = { tx, live: true }
                return lock.withPermits(1)(
                  guarded(effect).pipe(
                    Effect.provideService(CurrentSteps, [...current, self]),
                    Effect.ensuring(Effect.sync(() => {
                      self.live = false
                    }))
                  )
                )
              })
            const finish = (next: "committed" | "rolled back", effect: Effect.Effect<void, DbError.DbError>) =>
              step(Effect.ensuring(effect, Effect.sync(() => {
                state = next
              })))
            const partial: PartialTransaction = {
              pid: conn.pid,
              // The overloads of PartialTransaction["run"] are implemented by this one signature.
              run: ((statement: Statement, schema?: Schema.Top) =>
                step(Conn.traced(settings.target, statement.text, Conn.run(conn, statement, schema)))) as PartialTransaction["run"],
              // Likewise for PartialTransaction["notify"].
              notify: ((channel: string, payload: unknown, schema?: Schema.Top) =>
                step(Conn.notify(conn, channel, payload, schema))) as PartialTransaction["notify"],
              interaction: <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>) =>
                step(withHandle(conn, f, () => state === "open"), true),
              // Both are uninterruptible once their statement is sent: the connection's state is then known.
              commit: finish("committed", Telemetry.span(settings.target, "COMMIT", { "db.operation.name": "COMMIT" }, Conn.commit(conn))),
              rollback: finish("rolled back", Telemetry.span(settings.target, "ROLLBACK", { "db.operation.name": "ROLLBACK" }, Conn.rollback(conn)))
            }
            // BEGIN is not waited for here: the first step waits for it (see Conn.sendBegin), so its failure is that step's.
            return Effect.andThen(
              Scope.addFinalizer(scope, close),
              Effect.sync(() => {
                Conn.sendBegin(conn, options)
                return partial
              })
            )
          })
        ))

    /** The read pool runs read-only transactions only: asking it for a read-write one gets a read-only one. */
    const transactionOptions = (options: TransactionOptions | undefined): TransactionOptions | undefined =>
      settings.readOnly && options?.readOnly === false ? { ...options, readOnly: true } : options

    yield* Effect.logInfo("effect-dbpool: pool started").pipe(
      Effect.annotateLogs({
        pool: settings.name,
        server: settings.server,
        readOnly: settings.readOnly,
        minSize: settings.minSize,
        maxSize: settings.maxSize
      })
    )

    const stream = (statement: Statement, schemaOrOptions?: Schema.Top | StreamOptions, options?: StreamOptions) => {
      // Checked before a connection is acquired, as `run` does.
      const prepared = Conn.prepare(statement, settings.readOnly)
      if (Conn.isRefused(prepared)) return Stream.fail(prepared)
      return Telemetry.streamSpan(settings.target, prepared.text, operationOf(prepared.text), Stream.unwrap(Effect.gen(function*() {
        // Held for the stream's life; the cursor's own finalizer (inner scope) closes it before the check-in.
        const lease = yield* Effect.uninterruptibleMask((restore) =>
          Effect.flatMap(restore(slots.acquire("exclusive")), (lease) =>
            Effect.as(Effect.addFinalizer(() => checkIn(lease, "exclusive")), lease))
        )
        return Conn.streamStatement(lease.conn, statement, schemaOrOptions, options)
      })))
    }

    const impl: PoolImpl = {
      name: settings.name,
      // The overloads of InteractionPool["run"] are implemented by this one signature.
      run: run as InteractionPool["run"],
      interaction: (f) =>
        Telemetry.span(settings.target, "interaction", {}, withLease(() => "function", "interaction", "exclusive", (lease) => withHandle(lease.conn, f))),
      transaction: (f, options) =>
        Telemetry.span(
          settings.target,
          "transaction",
          {},
          withLease(() => "transaction", "transaction", "exclusive", (lease) =>
            withHandle(lease.conn, (connection) => Conn.transaction(lease.conn, f, transactionOptions(options), connection)))
        ),
      // The overloads of InteractionPool["stream"] are implemented by this one signature.
      stream: stream as InteractionPool["stream"],
      stats,
      partialTransaction,
      load: slots.load,
      released: slots.released
    }
    internalsByPool.set(impl, {
      server: settings.server,
      lease: Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(slots.acquire("exclusive")), (lease) =>
          Effect.as(Effect.addFinalizer(() => checkIn(lease, "exclusive")), lease.conn))
      )
    })
    return impl
  })
