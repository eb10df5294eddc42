/**
 * The read pool over several replicas (`readUrls`): every call goes to the
 * least busy usable replica; a replica whose statements fail to connect or
 * lose their connection, or that lags more than `maxReplicaLag`, is set aside
 * and probed back in by a fiber in the Layer's scope; with none usable, reads
 * go to the fallback pool (read-only sessions on the primary) or fail with
 * `NoReplicaAvailable`. Reads under a read-your-writes token go only to a
 * replica known to have replayed it.
 */
import { Clock, Duration, Effect, type Schema, type Scope, Stream } from "effect"
import type { Connection, Run, StreamRows } from "../Connection.ts"
import * as DbError from "../DbError.ts"
import type { InteractionPool, PoolStats } from "../InteractionPool.ts"
import type { ReplicaSetStats, ReplicaStats } from "../ReadPool.ts"
import { CurrentToken } from "../ReadYourWrites.ts"
import * as Statement from "../Statement.ts"
import * as Lsn from "./lsn.ts"
import * as Pool from "./pool.ts"

export interface Replica {
  readonly pool: Pool.PoolImpl
  readonly server: string
}

export interface Settings {
  /** The read pool's name, e.g. `default/read`. */
  readonly name: string
  readonly replicas: ReadonlyArray<Replica>
  /** The write pool: where the primary's WAL position is read. */
  readonly primary: InteractionPool
  /** Read-only sessions on the primary. */
  readonly fallback: InteractionPool
  readonly fallbackMode: "primary" | "fail"
  readonly maxReplicaLag: Duration.Duration
  readonly readYourWritesWait: Duration.Duration
  readonly checkInterval: Duration.Duration
}

interface Entry extends Replica {
  state: "up" | "down" | "lagging"
  reason: string | undefined
  since: number
  replayLsn: bigint | undefined
  replayLsnText: string | undefined
  /** The pool's `released()` when a probe last saw it change, and when (the clock's ms). */
  releasedSeen: number
  progressAt: number
}

/** How often a read with a token re-reads the replicas' replay positions while it waits. */
const tokenPollMillis = 10

const lostConnection = (e: unknown): e is DbError.ConnectFailed | DbError.ConnectionLost =>
  typeof e === "object" && e !== null && "_tag" in e && (e._tag === "ConnectFailed" || e._tag === "ConnectionLost")

export const make = (settings: Settings): Effect.Effect<InteractionPool, never, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const entries: Array<Entry> = settings.replicas.map((r) => ({
      ...r,
      state: "up",
      reason: undefined,
      since: clock.currentTimeMillisUnsafe(),
      replayLsn: undefined,
      replayLsnText: undefined,
      releasedSeen: r.pool.released(),
      progressAt: clock.currentTimeMillisUnsafe()
    }))
    let rotation = 0
    const lagMillis = Duration.toMillis(settings.maxReplicaLag)
    const waitMillis = Duration.toMillis(settings.readYourWritesWait)

    const setState = (entry: Entry, state: Entry["state"], reason: string | undefined): Effect.Effect<void> =>
      Effect.suspend(() => {
        if (entry.state === state) {
          entry.reason = reason
          return Effect.void
        }
        entry.state = state
        entry.reason = reason
        // Back from down it may have replayed less than before (a restart resumes from a restartpoint, a rebuilt
        // replica from its base backup): only a position read after it comes back counts for tokens.
        if (state === "down") {
          entry.replayLsn = undefined
          entry.replayLsnText = undefined
        }
        entry.since = clock.currentTimeMillisUnsafe()
        const log = state === "up" ? Effect.logInfo("effect-dbpool: replica back in use") : Effect.logWarning(`effect-dbpool: replica ${state}`)
        return log.pipe(Effect.annotateLogs({ pool: entry.pool.name, server: entry.server, ...(reason === undefined ? {} : { reason }) }))
      })

    /**
     * A replay position read on the replica. A refresh only raises it (its answers may overtake each other); the
     * periodic probe (`exact`) sets it as read, so that one restarted between two probes, now behind what it had
     * replayed, is not trusted with tokens it no longer covers.
     */
    const seen = (entry: Entry, text: string, exact = false): bigint | undefined => {
      const lsn = Lsn.toBigInt(text)
      if (lsn !== undefined && (exact || entry.replayLsn === undefined || lsn > entry.replayLsn)) {
        entry.replayLsn = lsn
        entry.replayLsnText = text
      }
      return lsn
    }

    /** The least busy usable replica (statements in flight plus callers waiting), ties taken in turn; with `minLsn`, only those known to have replayed it. */
    const pick = (minLsn: bigint | undefined): Entry | undefined => {
      const n = entries.length
      const start = rotation++ % n
      let best: Entry | undefined
      let bestLoad = Infinity
      for (let i = 0; i < n; i++) {
        const e = entries[(start + i) % n]!
        if (e.state !== "up") continue
        if (minLsn !== undefined && (e.replayLsn === undefined || e.replayLsn < minLsn)) continue
        const load = e.pool.load()
        if (load < bestLoad) {
          best = e
          bestLoad = load
        }
      }
      return best
    }

    const unusable = () =>
      entries.map((e) => `${e.server} ${e.state}${e.reason === undefined ? "" : ` (${e.reason})`}`).join(", ")

    const fallbackOr = (why: string): Effect.Effect<InteractionPool, DbError.NoReplicaAvailable> =>
      settings.fallbackMode === "fail"
        ? Effect.fail(new DbError.NoReplicaAvailable({ message: why, pool: settings.name }))
        : Effect.succeed(settings.fallback)

    const replayQuery = Statement.text("SELECT pg_is_in_recovery() AS recovery, pg_last_wal_replay_lsn()::text AS lsn")

    /**
     * Re-reads the replay position of each usable replica not yet known to have replayed `minLsn`, giving up on
     * those that do not answer within `millis` (their connections all held, a connect under way): the wait for a
     * token is bounded by readYourWritesWait, not by a replica pool's acquire or connect timeout.
     */
    const refresh = (minLsn: bigint, millis: number) =>
      Effect.forEach(
        entries.filter((e) => e.state === "up" && (e.replayLsn === undefined || e.replayLsn < minLsn)),
        (e) =>
          e.pool.run(replayQuery).pipe(
            Effect.flatMap((rows) => {
              const row = rows[0]
              if (row?.["recovery"] !== true) return setState(e, "down", "not a standby (promoted?)")
              if (typeof row["lsn"] === "string") seen(e, row["lsn"])
              return Effect.void
            }),
            Effect.catch((err) => lostConnection(err) ? setState(e, "down", err.message) : Effect.void),
            Effect.timeoutOption(Duration.millis(millis))
          ),
        { concurrency: "unbounded", discard: true }
      )

    /** Where the next call goes: a replica (and its entry), or the fallback. */
    const choose: Effect.Effect<{ readonly entry: Entry | undefined; readonly pool: InteractionPool }, DbError.NoReplicaAvailable> =
      Effect.withFiber((fiber) => {
        const token = fiber.getRef(CurrentToken)
        const minLsn = token === undefined ? undefined : Lsn.toBigInt(token.lsn)
        // The common case decided at once, without a generator: a usable replica.
        const now = pick(minLsn)
        if (now !== undefined) return Effect.succeed({ entry: now, pool: now.pool })
        return Effect.gen(function*() {
          let entry: Entry | undefined
          if (minLsn === undefined || !entries.some((e) => e.state === "up")) {
            return { entry: undefined, pool: yield* fallbackOr(`no replica is usable: ${unusable()}`) }
          }
          // A token no usable replica is known to have replayed: wait for one, within readYourWritesWait.
          const deadline = clock.currentTimeMillisUnsafe() + waitMillis
          while (true) {
            yield* refresh(minLsn, Math.max(1, deadline - clock.currentTimeMillisUnsafe()))
            entry = pick(minLsn)
            if (entry !== undefined) return { entry, pool: entry.pool }
            const left = deadline - clock.currentTimeMillisUnsafe()
            if (left <= 0 || !entries.some((e) => e.state === "up")) break
            yield* Effect.sleep(Duration.millis(Math.min(tokenPollMillis, left)))
          }
          return {
            entry: undefined,
            pool: yield* fallbackOr(`no replica replayed ${token?.lsn} within ${waitMillis} ms: ${unusable()}`)
          }
        })
      })

    /**
     * Runs `op` on the chosen pool. A replica whose connection failed is set aside; the call then goes elsewhere when
     * `again` says running it again is safe.
     */
    const routed = <A, E, R>(
      op: (pool: InteractionPool) => Effect.Effect<A, E, R>,
      again: (e: DbError.ConnectFailed | DbError.ConnectionLost) => boolean,
      attempts: number = entries.length + 1
    ): Effect.Effect<A, E | DbError.NoReplicaAvailable, R> =>
      Effect.flatMap(choose, ({ entry, pool }) =>
        entry === undefined ? op(pool) : op(pool).pipe(
          Effect.catch((e): Effect.Effect<A, E | DbError.NoReplicaAvailable, R> => {
            if (!lostConnection(e)) return Effect.fail(e)
            return setState(entry, "down", e.message).pipe(
              Effect.andThen(again(e) && attempts > 1 ? routed(op, again, attempts - 1) : Effect.fail(e))
            )
          })
        ))

    // A read-only statement can run again wherever its connection failed; a function only if it never started.
    const runAgain = () => true
    const startAgain = (e: DbError.ConnectFailed | DbError.ConnectionLost) => e._tag === "ConnectFailed"

    const run = (statement: Statement.Statement, schema?: Schema.Top) =>
      routed((pool) => schema === undefined ? pool.run(statement) : pool.run(statement, schema), runAgain)

    const stream = (statement: Statement.Statement, a?: unknown, b?: unknown) =>
      Stream.unwrap(Effect.map(choose, ({ entry, pool }) => {
        const rows = (pool.stream as (s: Statement.Statement, a?: unknown, b?: unknown) => Stream.Stream<unknown, unknown>)(statement, a, b)
        return entry === undefined
          ? rows
          : rows.pipe(Stream.tapError((e) => lostConnection(e) ? setState(entry, "down", e.message) : Effect.void))
      }))

    const sum = (all: ReadonlyArray<PoolStats>, key: "idle" | "used" | "pending" | "min" | "max") =>
      all.reduce((n, s) => n + s[key], 0)

    const stats: Effect.Effect<PoolStats> = Effect.gen(function*() {
      const replicas: Array<ReplicaStats> = []
      for (const e of entries) {
        const s = yield* e.pool.stats
        replicas.push({
          ...s,
          server: e.server,
          state: e.state,
          reason: e.reason,
          since: e.since,
          replayLsn: e.replayLsnText
        })
      }
      const out: ReplicaSetStats = {
        pool: settings.name,
        idle: sum(replicas, "idle"),
        used: sum(replicas, "used"),
        pending: sum(replicas, "pending"),
        min: sum(replicas, "min"),
        max: sum(replicas, "max"),
        serverMax: Math.max(...replicas.map((r) => r.serverMax)),
        replicas,
        fallback: yield* settings.fallback.stats
      }
      return out
    })

    // -- probing --------------------------------------------------------------------------------------------------

    /** The primary's WAL position over the last `maxReplicaLag` and a little more, oldest first. */
    const samples: Array<{ readonly at: number; readonly lsn: bigint }> = []
    const checkMillis = Duration.toMillis(settings.checkInterval)
    const probeTimeout = Duration.millis(Math.max(1000, checkMillis))
    /** A probe that could not get a connection: the replica keeps its state. */
    const busy: ReadonlyArray<Record<string, unknown>> = []
    /** How long a replica whose connections are all held may go without any completing before it is set aside. */
    const busyMillis = 5 * Duration.toMillis(probeTimeout)

    const probeOne = (e: Entry, behindOf: bigint | undefined) =>
      Effect.suspend(() => {
        const released = e.pool.released()
        if (released !== e.releasedSeen) {
          e.releasedSeen = released
          e.progressAt = clock.currentTimeMillisUnsafe()
        }
        return e.pool.run(replayQuery)
      }).pipe(
        Effect.timeoutOrElse({
          duration: probeTimeout,
          // Every connection held (long reads, transactions) while statements still complete: the probe waited for a
          // connection, the replica did not fail to answer. Busy is not down — setting it aside would send its reads
          // to the others, or all to the primary. Held with nothing completing for `busyMillis`, it may be hung.
          orElse: () =>
            Effect.flatMap(e.pool.stats, (s) =>
              s.used >= s.max && clock.currentTimeMillisUnsafe() - e.progressAt < busyMillis
                ? Effect.succeed(busy)
                : Effect.fail(new DbError.ConnectFailed({ message: `no answer within ${Duration.toMillis(probeTimeout)} ms`, server: e.server })))
        }),
        Effect.flatMap((rows) => {
          if (rows === busy) return Effect.void
          const row = rows[0]
          if (row?.["recovery"] !== true) return setState(e, "down", "not a standby (promoted?)")
          const text = typeof row["lsn"] === "string" ? row["lsn"] : undefined
          const replayed = text === undefined ? undefined : seen(e, text, true)
          // Behind only when it has not replayed what the primary had written maxReplicaLag ago: an idle primary
          // (old replay timestamps, nothing to replay) is no lag.
          if (behindOf !== undefined && (replayed === undefined || replayed < behindOf)) {
            return setState(e, "lagging", `has not replayed within ${lagMillis} ms what the primary wrote (at ${text ?? "?"})`)
          }
          return setState(e, "up", undefined)
        }),
        Effect.catch((err) => setState(e, "down", DbError.isDbError(err) ? err.message : String(err)))
      )

    const probe = Effect.gen(function*() {
      const now = clock.currentTimeMillisUnsafe()
      const primary = yield* Effect.result(settings.primary.run(Statement.text("SELECT pg_current_wal_lsn()::text AS lsn")).pipe(
        Effect.timeout(probeTimeout)
      ))
      if (primary._tag === "Success") {
        const lsn = Lsn.toBigInt(String(primary.success[0]?.["lsn"]))
        if (lsn !== undefined) samples.push({ at: now, lsn })
      }
      // The newest sample at least maxReplicaLag old: what every replica must have replayed by now.
      let behindOf: bigint | undefined
      let keepFrom = 0
      for (let i = 0; i < samples.length; i++) {
        if (samples[i]!.at <= now - lagMillis) {
          behindOf = samples[i]!.lsn
          keepFrom = i
        }
      }
      samples.splice(0, keepFrom)
      yield* Effect.forEach(entries, (e) => probeOne(e, behindOf), { concurrency: "unbounded", discard: true })
    })

    yield* probe
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(settings.checkInterval), probe)))

    const router: InteractionPool = {
      name: settings.name,
      run: run as Run,
      interaction: <A, E, R>(f: (connection: Connection) => Effect.Effect<A, E, R>) => routed((pool) => pool.interaction(f), startAgain),
      transaction: (f, options) => routed((pool) => pool.transaction(f, options), startAgain),
      stream: stream as StreamRows,
      stats
    }
    Pool.registerInternals(router, {
      server: entries.map((e) => e.server).join(", "),
      lease: Effect.flatMap(choose, ({ pool }) => {
        const internals = Pool.internals(pool)
        return internals === undefined ? Effect.die(new TypeError(`${pool.name} has no internals`)) : internals.lease
      })
    })
    return router
  })
