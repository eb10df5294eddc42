/**
 * Who holds which connection, and who is waiting: the one owner of a pooled
 * connection's {@link SlotState}. Every change goes through the transitions
 * below; `connection.ts` owns what is on the wire, and this module only reads
 * it (`Conn.reusable`).
 *
 * Handing out an idle connection is synchronous — no fibers, no timers, no
 * scopes on the fast path; a timer exists only while a caller waits. When
 * every connection is busy and the pool is at its maximum, single autocommit
 * statements join a connection already running such statements and are
 * pipelined on it, which is what keeps many callers on few connections fast.
 * Transactions, function interactions and partial transactions always get a
 * connection of their own, and while one of them waits at the head of the
 * queue no statement joins a shared connection, so shared connections drain
 * and the waiter is served.
 *
 * Hand-off is non-reentrant. Resuming a waiter runs its fiber synchronously,
 * inside the call; it may release its connection and acquire another before
 * the call returns. So {@link settle} first does all the bookkeeping (which
 * waiter gets which connection), then runs the resumes one by one; a release
 * made by a resumed fiber only changes state and leaves the matching to the
 * loop already running.
 */
import { Cause, Clock, Context, Duration, Effect, Exit, FiberSet, Scope, Tracer } from "effect"
import * as DbError from "../DbError.ts"
import * as Conn from "./connection.ts"
import * as Telemetry from "./telemetry.ts"

export type Mode = "exclusive" | "shared"

/**
 * How single autocommit statements share connections when the pool is busy
 * (resolved from the user's `pipelining` setting):
 * - `maxDepth`: statements in flight on one connection at most, once every connection is open and busy
 *   (1: never pipelined — a statement waits for a connection of its own);
 * - fill-first: a statement joins the busiest shared connection that has fewer than `fillDepth` statements in
 *   flight, rather than waking an idle one, while that connection is seen to be fast: the statements ahead of it
 *   are expected to complete within `fastMillis` (their number times what one statement has been costing the
 *   backend), and one completed within the last `stallMillis`. Waking fewer backends is what makes many callers
 *   of cheap statements fast; a statement that costs the backend real time spreads out instead, so that a server
 *   with many cores runs such statements in parallel, and as soon as statements get slow or stop completing, new
 *   ones spread out again, so at most `fillDepth` statements wait behind a slow one (`fillDepth` ≤ 1: off,
 *   statements always take an idle connection first). A burst — statements arriving with no completion between
 *   them — joins one connection at most {@link burstDepth} deep: evidence that it is still fast comes only with
 *   completions.
 */
export interface Pipelining {
  readonly maxDepth: number
  readonly fillDepth: number
  readonly fastMillis: number
  readonly stallMillis: number
}

export const defaultPipelining: Pipelining = { maxDepth: 64, fillDepth: 64, fastMillis: 8, stallMillis: 5 }

/** Statements that may join a connection by fill-first since its last completion (see {@link Pipelining}). */
export const burstDepth = 16

/**
 * Where an open connection is:
 * - `idle`: in the idle list, since `idleSince`;
 * - `exclusive`: held by one interaction, transaction or partial transaction;
 * - `shared`: running `statements` pipelined autocommit statements;
 * - `closing`: retired (dead, expired, doubtful, idle too long, or the pool closed); its scope is closing.
 *
 * `idle ⇄ exclusive`, `idle → shared(1) ⇄ shared(n) → idle`, and `* → closing`.
 */
export type SlotState = "idle" | "exclusive" | "shared" | "closing"

/** A pooled connection as the pool's operations see it: what they hold between acquire and release. */
export interface Lease {
  readonly conn: Conn.Conn
}

class Slot implements Lease {
  state: SlotState = "idle"
  statements = 0
  idleSince = 0
  /**
   * What one statement costs the backend (ms, moving average, from `performance.now()`: statements this cheap
   * are shorter than the clock's millisecond): the time from the previous completion, or from its own start if it
   * started later, to its completion. Infinity until measured.
   */
  serviceMillis = Number.POSITIVE_INFINITY
  /** When a pipelined statement last completed on it (the pool clock's ms; 0: never): is it still completing? */
  lastCompletion = 0
  /**
   * Where the next completion's measured interval starts (`performance.now()`; 0 after an idle spell, so that a
   * completion long before it is not counted as service time), and when the latest statement joined.
   */
  lastCompletionPrecise = 0
  joinedPrecise = 0
  /** Statements that joined it since that completion (or since it was idle). */
  joined = 0
  readonly conn: Conn.Conn
  readonly scope: Scope.Closeable
  constructor(conn: Conn.Conn, scope: Scope.Closeable) {
    this.conn = conn
    this.scope = scope
  }
}

interface Waiter {
  readonly mode: Mode
  readonly resume: (slot: Slot) => void
  readonly fail: (error: DbError.DbError) => void
  /** Given a connection by the bookkeeping, not yet resumed (or interrupted before it could be). */
  slot: Slot | undefined
  /** A connection is being opened on this waiter's behalf: if that fails, the waiter gets the error. */
  opening: boolean
  /** Left the queue (resumed, failed, timed out or interrupted): nothing more is delivered to it. */
  done: boolean
  /** The caller's span (its `acquire` span when traced): a connect made for it is traced under it. */
  readonly span: Tracer.AnySpan | undefined
}

/** A connect under way, and whom its failure goes to. */
interface Attempt {
  owner: Waiter | undefined
  /** A top-up that a waiter took over. */
  adopted: boolean
}

export interface SlotsSettings {
  readonly name: string
  readonly minSize: number
  readonly maxSize: number
  /** The most backends this pool's Layer may open on this pool's server (for stats). */
  readonly serverMax: number
  readonly acquireTimeout: Duration.Duration
  readonly idleTimeout: Duration.Duration
  readonly pipelining: Pipelining
  readonly target: Telemetry.Target
}

export interface Counts {
  readonly idle: number
  readonly used: number
  readonly pending: number
  readonly min: number
  readonly max: number
  readonly serverMax: number
}

export interface Slots {
  readonly acquire: (mode: Mode) => Effect.Effect<Lease, DbError.DbError>
  /** The fast path alone, synchronously: a connection now, or undefined (closed, someone waits, none free). */
  readonly tryAcquire: (mode: Mode) => Lease | undefined
  /** Returns a connection; the pool has rolled back or reset it as needed. */
  /** `completed`: a pipelined statement finished (rather than being given up), which times the connection. */
  readonly release: (lease: Lease, mode: Mode, completed?: boolean) => void
  /** Is this shared lease the only statement on its connection (so a cancel request can only hit it)? */
  readonly alone: (lease: Lease) => boolean
  readonly counts: () => Counts
  /** Leases held (statements in flight, pipelined ones each counted) plus callers waiting: how busy the pool is, cheaply. */
  readonly load: () => number
  /** Leases given back so far, but for pipelined statements given up: whether the pool makes progress (a replica's probe reads it). */
  readonly released: () => number
  readonly metrics: Telemetry.PoolMetrics
}

export const make = (
  settings: SlotsSettings,
  open: Effect.Effect<Conn.Conn, DbError.DbError, Scope.Scope>
): Effect.Effect<Slots, never, Scope.Scope> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    // Metrics go to the registry of the context the pool was built in.
    const metrics = Telemetry.poolMetrics(settings.target, yield* Effect.context<never>())
    // Connects, closes and maintenance run in the pool's scope with the context the pool was built in (its logger,
    // tracer, clock); releasing the pool interrupts them and waits for them.
    const fibers = yield* FiberSet.make()
    const fork = yield* FiberSet.runtime(fibers)()
    const slots = new Set<Slot>()
    const idle: Array<Slot> = []
    const shared = new Set<Slot>()
    const waiters: Array<Waiter> = []
    /** Resumes decided by the bookkeeping, run by `settle` in order. */
    const ready: Array<() => void> = []
    let settling = false
    let opening = 0
    /** Leases out (handed out and not yet released): changed by toHeld and release only. */
    let held = 0
    let releases = 0
    /** Connects under way for nobody in particular (minSize top-ups), oldest first. */
    const unowned: Array<Attempt> = []
    let closed = false
    const timeoutMillis = Duration.toMillis(settings.acquireTimeout)
    const { fastMillis, stallMillis } = settings.pipelining
    const maxDepth = Math.max(1, settings.pipelining.maxDepth)
    const fillDepth = Math.min(maxDepth, settings.pipelining.fillDepth)

    const size = () => slots.size + opening
    const counts = (): Counts => {
      const c: Counts = {
        idle: idle.length,
        used: slots.size - idle.length,
        pending: waiters.length,
        min: settings.minSize,
        max: settings.maxSize,
        serverMax: settings.serverMax
      }
      metrics.sample(c)
      return c
    }

    // -- transitions ----------------------------------------------------------

    const toIdle = (slot: Slot, now: number) => {
      slot.state = "idle"
      slot.idleSince = now
      slot.joined = 0
      // The next statement's wait starts at its own start, not at a completion before the idle spell.
      slot.lastCompletionPrecise = 0
      idle.push(slot)
    }

    /** Retires a connection; `cause` when it is discarded (rather than closed with the pool). */
    const toClosing = (slot: Slot, cause?: Telemetry.DiscardCause) => {
      if (slot.state === "closing") return
      if (cause !== undefined) metrics.discarded(cause)
      if (slot.state === "shared") shared.delete(slot)
      slot.state = "closing"
      slots.delete(slot)
      // Uninterruptible, so that releasing the pool (which interrupts its fibers) waits for the close.
      fork(Effect.uninterruptible(Scope.close(slot.scope, Exit.void)))
    }

    /** From idle (already taken off the idle list) or shared to held by one more caller in `mode`. */
    const toHeld = (slot: Slot, mode: Mode) => {
      held++
      if (mode === "exclusive") slot.state = "exclusive"
      else {
        if (slot.state !== "shared") {
          slot.state = "shared"
          shared.add(slot)
        }
        slot.statements++
        slot.joined++
        slot.joinedPrecise = performance.now()
      }
      return slot
    }

    /** An idle connection fit for use, retiring the unfit ones met on the way. */
    const takeIdle = (now: number): Slot | undefined => {
      while (idle.length > 0) {
        const slot = idle.pop()!
        if (Conn.reusable(slot.conn, now)) return slot
        toClosing(slot, Conn.retireCause(slot.conn))
      }
      return undefined
    }

    /**
     * The least busy shared connection a statement may join: only when the
     * pool has its maximum open (a connection being opened is waited for, so
     * that load spreads over every connection).
     */
    const fillTarget = (now: number): Slot | undefined => {
      if (fillDepth <= 1) return undefined
      let best: Slot | undefined
      for (const slot of shared) {
        if (
          slot.statements < fillDepth && slot.joined < burstDepth && slot.statements * slot.serviceMillis < fastMillis &&
          now - slot.lastCompletion < stallMillis && Conn.reusable(slot.conn, now) && (best === undefined || slot.statements > best.statements)
        ) best = slot
      }
      return best
    }

    const joinable = (now: number): Slot | undefined => {
      if (slots.size < settings.maxSize) return undefined
      let best: Slot | undefined
      for (const slot of shared) {
        if (slot.statements < maxDepth && Conn.reusable(slot.conn, now) && (best === undefined || slot.statements < best.statements)) {
          best = slot
        }
      }
      return best
    }

    // -- hand-off ----------------------------------------------------------------

    /** Matches waiters (in order) with connections, then opens connections for those still waiting. Bookkeeping only. */
    const assign = () => {
      if (waiters.length === 0) return
      const now = clock.currentTimeMillisUnsafe()
      while (waiters.length > 0) {
        const w = waiters[0]!
        const slot = takeIdle(now) ?? (w.mode === "shared" ? joinable(now) : undefined)
        if (slot === undefined) break
        waiters.shift()
        w.slot = toHeld(slot, w.mode)
        ready.push(() => {
          if (w.done) return
          w.done = true
          w.slot = undefined
          w.resume(slot)
        })
      }
      openForWaiters()
      topUp()
    }

    /** The only place waiters are resumed: bookkeeping first, then each resume; never re-entered. */
    const settle = () => {
      if (settling) return
      settling = true
      try {
        while (true) {
          assign()
          const next = ready.shift()
          if (next === undefined) break
          next()
        }
      } finally {
        settling = false
      }
    }

    const failWaiter = (w: Waiter, error: DbError.DbError) => {
      const i = waiters.indexOf(w)
      if (i !== -1) waiters.splice(i, 1)
      ready.push(() => {
        if (w.done) return
        w.done = true
        w.fail(error)
      })
    }

    // -- opening -------------------------------------------------------------------

    /**
     * Opens a connection, on behalf of `owner` if given. A failure goes to its
     * owner only — a stale failure from an attempt made during an outage must
     * not reach a caller who came later — and an ownerless one (minSize
     * top-up) to nobody. Interrupted (the pool closing), it closes what it opened.
     */
    const openOne = (attempt: Attempt) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          const scope = yield* Scope.make()
          const traced = Telemetry.span(settings.target, "connect", {}, open, attempt.owner?.span)
          const exit = yield* Effect.exit(restore(Scope.provide(traced, scope)))
          opening--
          if (exit._tag === "Failure" && !closed && !Cause.hasInterruptsOnly(exit.cause)) metrics.connectFailed()
          const i = unowned.indexOf(attempt)
          if (i !== -1) unowned.splice(i, 1)
          const owner = attempt.owner
          if (owner !== undefined) owner.opening = false
          if (exit._tag === "Failure" || closed) {
            yield* Scope.close(scope, Exit.void)
            // An adopted top-up began before its owner came: its failure may be stale (an outage since over), so
            // the owner gets an attempt of its own (settle opens it) rather than this error.
            if (exit._tag === "Failure" && owner !== undefined && !owner.done && !closed && !attempt.adopted) {
              const error = Cause.findErrorOption(exit.cause)
              if (error._tag === "Some") failWaiter(owner, error.value)
              else if (!Cause.hasInterruptsOnly(exit.cause)) {
                failWaiter(owner, new DbError.ConnectFailed({ message: `cannot connect to the server of pool ${settings.name}`, server: settings.name }))
              }
            }
            settle()
            return
          }
          const slot = new Slot(exit.value, scope)
          slots.add(slot)
          // Not inside the driver's callback that reports the death: after it, as the pool's own transition.
          slot.conn.onDead = () => queueMicrotask(() => retireDeadIdle(slot))
          toIdle(slot, clock.currentTimeMillisUnsafe())
          // Died between its connect and now: nobody told.
          if (slot.conn.wire === "dead") slot.conn.onDead()
          settle()
        })
      )

    /**
     * An idle connection that died (its backend terminated, the server restarted) leaves at once and minSize is
     * kept, rather than at the next maintenance (up to 30 s) or when a caller meets it. A held one is retired when it
     * comes back.
     */
    const retireDeadIdle = (slot: Slot) => {
      if (slot.state !== "idle" || closed) return
      const i = idle.indexOf(slot)
      if (i !== -1) idle.splice(i, 1)
      toClosing(slot, "dead")
      topUp()
      settle()
    }

    const startOpening = (owner: Waiter | undefined) => {
      opening++
      const attempt: Attempt = { owner, adopted: false }
      if (owner !== undefined) owner.opening = true
      else unowned.push(attempt)
      fork(openOne(attempt))
    }

    /**
     * Waiters with no connection being opened for them get one: first an
     * ownerless attempt (a minSize top-up) is adopted — so a caller arriving
     * while the pool fills does not open one more — then new ones while the
     * pool has room.
     */
    const openForWaiters = () => {
      for (const w of waiters) {
        if (w.opening) continue
        const adopted = unowned.shift()
        if (adopted !== undefined) {
          adopted.owner = w
          adopted.adopted = true
          w.opening = true
          continue
        }
        if (closed || size() >= settings.maxSize) return
        startOpening(w)
      }
    }

    /**
     * Starts the connects that bring the pool to minSize. Counted before starting: a connect that fails without
     * waiting for anything (an unparsable URL, a password effect that fails at once) has ended by the time
     * `startOpening` returns, so `size()` does not grow and a loop on it would never end.
     */
    const topUp = () => {
      for (let missing = settings.minSize - size(); missing > 0 && !closed; missing--) startOpening(undefined)
    }

    // -- acquire and release ---------------------------------------------------------

    const timedOut = () => {
      metrics.timeout()
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

    const wait = (mode: Mode): Effect.Effect<Lease, DbError.DbError> =>
      Effect.withFiber((fiber) => Effect.callback<Lease, DbError.DbError>((resume) => {
        const since = clock.currentTimeMillisUnsafe()
        const w: Waiter = {
          mode,
          span: Context.getOrUndefined(fiber.context, Tracer.ParentSpan),
          slot: undefined,
          opening: false,
          done: false,
          resume: (slot) => {
            metrics.waited(clock.currentTimeMillisUnsafe() - since)
            resume(Effect.succeed(slot))
          },
          fail: (error) => resume(Effect.fail(error))
        }
        waiters.push(w)
        settle()
        // Timed out or interrupted: leave the queue; a connection assigned but not yet delivered goes back.
        return Effect.sync(() => {
          w.done = true
          const i = waiters.indexOf(w)
          if (i !== -1) waiters.splice(i, 1)
          const slot = w.slot
          w.slot = undefined
          if (slot !== undefined) release(slot, mode)
          // The head of the queue may have changed: whoever waited behind this waiter may be served now.
          else settle()
        })
      }))

    const timedWait = (mode: Mode): Effect.Effect<Lease, DbError.DbError> =>
      Duration.isFinite(settings.acquireTimeout)
        ? Effect.timeoutOrElse(wait(mode), { duration: settings.acquireTimeout, orElse: () => Effect.fail(timedOut()) })
        : wait(mode)

    /** The fast path: nobody waits, and a connection is idle (or, for a statement at the maximum, joinable). */
    const tryAcquire = (mode: Mode): Slot | undefined => {
      if (closed || waiters.length > 0) return undefined
      const now = clock.currentTimeMillisUnsafe()
      const slot = mode === "shared" ? fillTarget(now) ?? takeIdle(now) ?? joinable(now) : takeIdle(now)
      return slot === undefined ? undefined : toHeld(slot, mode)
    }

    const acquire = (mode: Mode): Effect.Effect<Lease, DbError.DbError> =>
      Effect.suspend(() => {
        if (closed) return Effect.fail(poolClosed())
        const slot = tryAcquire(mode)
        return slot !== undefined ? Effect.succeed(slot) : Telemetry.span(settings.target, "acquire", {}, timedWait(mode))
      })

    const release = (lease: Lease, mode: Mode, completed = false): void => {
      held--
      // A pipelined statement given up (interrupted, left to finish) is no sign of the server answering.
      if (completed || mode === "exclusive") releases++
      // Only slots are handed out as leases.
      const slot = lease as Slot
      // The pool clock dates the completion and the idle connection; `performance.now()` (below) times service.
      const now = clock.currentTimeMillisUnsafe()
      if (completed) {
        // Completions on a connection come in order: the last statement left started when it joined (the
        // latest join); any other was waiting behind the one before it, from that one's completion.
        const precise = performance.now()
        const since = slot.statements > 1 ? slot.lastCompletionPrecise : Math.max(slot.lastCompletionPrecise, slot.joinedPrecise)
        if (since > 0) {
          const interval = precise - since
          slot.serviceMillis = Number.isFinite(slot.serviceMillis) ? slot.serviceMillis * 0.875 + interval * 0.125 : interval
        }
        slot.lastCompletion = now
        slot.lastCompletionPrecise = precise
        slot.joined = 0
      }
      if (slot.state === "closing") return settle() // closed under its holder (the pool is closing)
      if (mode === "shared") {
        slot.statements--
        if (slot.statements > 0) return settle() // room for a waiting statement
        shared.delete(slot)
      }
      if (closed) toClosing(slot)
      else if (!Conn.reusable(slot.conn, now)) toClosing(slot, Conn.retireCause(slot.conn))
      else toIdle(slot, now)
      settle()
      topUp()
    }

    const alone = (lease: Lease): boolean => (lease as Slot).statements <= 1 // only slots are handed out as leases

    // Retire idle connections that died, expired or idled too long (above minSize), and keep minSize open.
    const idleMillis = Duration.toMillis(settings.idleTimeout)
    const maintenance = Effect.sync(() => {
      const now = clock.currentTimeMillisUnsafe()
      for (let i = idle.length - 1; i >= 0; i--) {
        const slot = idle[i]!
        const tooIdle = now - slot.idleSince >= idleMillis && slots.size > settings.minSize
        if (!Conn.reusable(slot.conn, now) || tooIdle) {
          idle.splice(i, 1)
          toClosing(slot, Conn.reusable(slot.conn, now) ? "idle" : Conn.retireCause(slot.conn))
        }
      }
      topUp()
      settle()
    })
    const every = Duration.millis(Math.min(30_000, Math.max(50, idleMillis / 2)))
    fork(Effect.forever(Effect.andThen(Effect.sleep(every), maintenance)))
    // Gauges are sampled, not updated per statement: periodically, and whenever the figures are read (stats).
    const sample = Effect.sync(() => void counts())
    fork(Effect.forever(Effect.andThen(Effect.sleep(Telemetry.sampleEvery), sample)))

    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closed = true
        for (const w of [...waiters]) failWaiter(w, poolClosed())
        settle()
        for (const slot of [...slots]) toClosing(slot)
        idle.length = 0
        // Interrupts connects (each closes what it opened) and maintenance, and waits for every close.
        return Effect.andThen(FiberSet.clear(fibers), sample)
      })
    )
    topUp()
    // Gauges exist from the start, not only from the first sample.
    counts()
    return { acquire, tryAcquire, release, alone, counts, load: () => held + waiters.length, released: () => releases, metrics }
  })
