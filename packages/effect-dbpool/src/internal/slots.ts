/**
 * Connection bookkeeping: which connections are idle, held exclusively, or
 * shared by pipelined autocommit statements, and who is waiting.
 *
 * Handing out an idle connection is synchronous — no fibers, no timers, no
 * scopes on the fast path; a timer exists only while a caller waits. When
 * every connection is busy and the pool is at its maximum, single autocommit
 * statements join a connection already running such statements and are
 * pipelined on it (as postgres.js does within one connection), which is what
 * keeps many callers on few connections fast. Transactions, function
 * interactions and partial transactions always get a connection of their own,
 * and while one of them waits no statement joins a shared connection, so
 * shared connections drain and the waiter is served.
 */
import { Cause, Duration, Effect, Exit, Scope } from "effect"
import * as DbError from "../DbError.ts"
import * as Conn from "./connection.ts"

export type Mode = "exclusive" | "shared"

/** Statements pipelined on one connection at most. */
export const maxPipeline = 64

interface Waiter {
  readonly mode: Mode
  readonly resume: (exit: Exit.Exit<Conn.Conn, DbError.DbError>) => void
  conn: Conn.Conn | undefined
  /** A connection is being opened on this waiter's behalf: if that fails, the waiter gets the error. */
  opening: boolean
}

export interface SlotsSettings {
  readonly name: string
  readonly minSize: number
  readonly maxSize: number
  readonly acquireTimeout: Duration.Duration
  readonly idleTimeout: Duration.Duration
}

export interface Counts {
  readonly idle: number
  readonly used: number
  readonly pending: number
  readonly min: number
  readonly max: number
}

export interface Slots {
  readonly acquire: (mode: Mode) => Effect.Effect<Conn.Conn, DbError.DbError>
  /** Returns a connection; the pool has rolled back or reset it as needed. */
  readonly release: (conn: Conn.Conn, mode: Mode) => void
  readonly counts: () => Counts
  readonly isClosed: () => boolean
}

export const make = (
  settings: SlotsSettings,
  open: Effect.Effect<Conn.Conn, DbError.DbError, Scope.Scope>
): Effect.Effect<Slots, never, Scope.Scope> =>
  Effect.gen(function*() {
    const poolScope = yield* Effect.scope
    const scopes = new Map<Conn.Conn, Scope.Closeable>()
    const idle: Array<Conn.Conn> = []
    const shared = new Set<Conn.Conn>()
    const waiters: Array<Waiter> = []
    let opening = 0
    let closed = false
    // setTimeout fires at once for anything above 2^31-1 ms, Infinity included.
    const timeoutMillis = Math.min(Duration.toMillis(settings.acquireTimeout), 2 ** 31 - 1)

    const size = () => scopes.size + opening
    const counts = (): Counts => ({
      idle: idle.length,
      used: scopes.size - idle.length,
      pending: waiters.length,
      min: settings.minSize,
      max: settings.maxSize
    })
    const reusable = (conn: Conn.Conn) => !conn.dead && !conn.doubtful && Date.now() < conn.expiresAt

    const background = (effect: Effect.Effect<unknown>) => {
      if (!closed) Effect.runFork(Effect.forkIn(effect, poolScope))
    }

    const discard = (conn: Conn.Conn) => {
      const scope = scopes.get(conn)
      scopes.delete(conn)
      if (scope !== undefined) Effect.runFork(Scope.close(scope, Exit.void))
    }

    const take = (conn: Conn.Conn, mode: Mode) => {
      if (mode === "exclusive") conn.exclusive = true
      else {
        conn.sharers++
        shared.add(conn)
      }
      return conn
    }

    /** A connection is available: to the first waiters it suits, else idle. */
    const handOff = (conn: Conn.Conn) => {
      while (waiters.length > 0) {
        const w = waiters[0]!
        if (w.mode === "exclusive") {
          if (conn.sharers > 0) return
          waiters.shift()
          w.conn = take(conn, "exclusive")
          w.resume(Exit.succeed(conn))
          return
        }
        if (conn.sharers >= maxPipeline) return
        waiters.shift()
        w.conn = take(conn, "shared")
        w.resume(Exit.succeed(conn))
      }
      if (conn.sharers === 0 && !conn.exclusive) {
        conn.idleSince = Date.now()
        idle.push(conn)
      }
    }

    /**
     * Opens a connection, on behalf of `owner` if given. A failure goes to its
     * owner only — a stale failure from an attempt made during an outage must
     * not reach a caller who came later — and an ownerless one (minSize
     * top-up) to nobody.
     */
    const openOne = (owner: Waiter | undefined) =>
      Effect.suspend(() => {
        const scope = Scope.makeUnsafe()
        return Scope.provide(open, scope).pipe(
          Effect.matchCauseEffect({
            onFailure: (cause) =>
              Effect.andThen(Scope.close(scope, Exit.void), Effect.sync(() => {
                opening--
                if (owner !== undefined) {
                  owner.opening = false
                  const i = waiters.indexOf(owner)
                  if (i !== -1) {
                    waiters.splice(i, 1)
                    const error = Cause.findErrorOption(cause)
                    owner.resume(error._tag === "Some" ? Exit.fail(error.value) : Exit.failCause(cause as Cause.Cause<never>))
                  }
                }
                openForWaiters()
              })),
            onSuccess: (conn) =>
              Effect.sync(() => {
                opening--
                if (owner !== undefined) owner.opening = false
                if (closed) return void Effect.runFork(Scope.close(scope, Exit.void))
                scopes.set(conn, scope)
                handOff(conn)
                openForWaiters()
              })
          })
        )
      })

    const startOpening = (owner?: Waiter) => {
      opening++
      if (owner !== undefined) owner.opening = true
      background(openOne(owner))
    }

    /** Waiters with no connection being opened for them get one, while the pool has room. */
    const openForWaiters = () => {
      for (const w of waiters) {
        if (closed || size() >= settings.maxSize) return
        if (!w.opening) startOpening(w)
      }
    }

    const topUp = () => {
      while (!closed && size() < settings.minSize) startOpening()
    }

    /** Synchronous fast path: an idle connection, or a place on a shared one. */
    const tryTake = (mode: Mode): Conn.Conn | undefined => {
      if (waiters.length > 0) return undefined
      while (idle.length > 0) {
        const conn = idle.pop()!
        if (reusable(conn)) return take(conn, mode)
        discard(conn)
        topUp()
      }
      if (mode === "shared" && size() >= settings.maxSize) {
        let best: Conn.Conn | undefined
        for (const conn of shared) {
          const joinable = conn.sharers < maxPipeline && !conn.cancelling && reusable(conn)
          if (joinable && (best === undefined || conn.sharers < best.sharers)) best = conn
        }
        if (best !== undefined) return take(best, "shared")
      }
      return undefined
    }

    const timedOut = () => {
      const c = counts()
      return new DbError.PoolTimeout({
        message:
          `no connection of pool ${settings.name} became free within ${timeoutMillis} ms (idle ${c.idle}, used ${c.used}, waiting ${c.pending}, max ${c.max})`,
        pool: settings.name,
        timeoutMillis,
        stats: { pool: settings.name, ...c }
      })
    }

    const poolClosed = () => new DbError.PoolClosed({ message: `pool ${settings.name} is closed`, pool: settings.name })

    const wait = (mode: Mode) =>
      Effect.callback<Conn.Conn, DbError.DbError>((resume) => {
        const w: Waiter = {
          mode,
          conn: undefined,
          opening: false,
          resume: (exit) => {
            clearTimeout(timer)
            resume(exit)
          }
        }
        waiters.push(w)
        openForWaiters()
        const timer = setTimeout(() => {
          const i = waiters.indexOf(w)
          if (i === -1) return
          const error = timedOut()
          waiters.splice(i, 1)
          resume(Exit.fail(error))
        }, timeoutMillis)
        return Effect.sync(() => {
          clearTimeout(timer)
          const i = waiters.indexOf(w)
          if (i !== -1) waiters.splice(i, 1)
          // Interrupted after a connection was handed over: give it back.
          if (w.conn !== undefined) release(w.conn, mode)
        })
      })

    const acquire = (mode: Mode): Effect.Effect<Conn.Conn, DbError.DbError> =>
      Effect.suspend(() => {
        if (closed) return Effect.fail(poolClosed())
        const conn = tryTake(mode)
        return conn !== undefined ? Effect.succeed(conn) : wait(mode)
      })

    const release = (conn: Conn.Conn, mode: Mode): void => {
      if (mode === "shared") {
        conn.sharers--
        if (conn.sharers > 0) {
          if (!reusable(conn)) return
          // Room for a shared waiter on a connection still in use.
          if (waiters.length > 0 && waiters[0]!.mode === "shared") handOff(conn)
          return
        }
        shared.delete(conn)
      } else {
        conn.exclusive = false
      }
      if (closed || !reusable(conn)) {
        discard(conn)
        openForWaiters()
        topUp()
        return
      }
      handOff(conn)
    }

    // Retire idle connections that died, expired or idled too long (above minSize), and keep minSize open.
    const idleMillis = Duration.toMillis(settings.idleTimeout)
    const maintenance = Effect.sync(() => {
      const now = Date.now()
      for (let i = idle.length - 1; i >= 0; i--) {
        const conn = idle[i]!
        const tooIdle = now - conn.idleSince >= idleMillis && scopes.size > settings.minSize
        if (!reusable(conn) || tooIdle) {
          idle.splice(i, 1)
          discard(conn)
        }
      }
      topUp()
    })
    const every = Duration.millis(Math.min(30_000, Math.max(50, idleMillis / 2)))
    yield* Effect.forkIn(Effect.forever(Effect.andThen(Effect.sleep(every), maintenance)), poolScope)

    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closed = true
        for (const w of waiters.splice(0)) w.resume(Exit.fail(poolClosed()))
        const all = [...scopes.values()]
        scopes.clear()
        idle.length = 0
        return Effect.forEach(all, (scope) => Scope.close(scope, Exit.void), { concurrency: "unbounded", discard: true })
      })
    )
    topUp()
    return { acquire, release, counts, isClosed: () => closed }
  })
