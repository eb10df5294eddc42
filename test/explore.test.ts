/**
 * A randomized, model-based exploration of interleavings against the real
 * server. fast-check generates small programs (test/explore/program.ts)
 * mixing single statements (pipelined when the pool is saturated), function
 * interactions, transactions with savepoints, partial transactions with
 * steps from other fibers, notifications, refused inputs, interruption at
 * random instants and terminated backends, on pools of 1–4 connections. Each
 * program runs on a fresh pool Layer; afterwards it checks:
 *
 * - no backend was used by two leases at once: every statement records
 *   `pg_backend_pid()` and a global sequence value (`nextval`), which orders
 *   statements as the server ran them; a statement of another lease on the
 *   backend between the first and last statement of an exclusive lease
 *   (interaction, transaction, partial transaction), or two exclusive leases
 *   holding one backend at once (an in-process map pid → lease), is a
 *   violation, as is an exclusive lease whose statements ran on two backends;
 * - the model: an autocommit INSERT that succeeded is in the log table at the
 *   end; one inside a transaction that failed on purpose, was rolled back or
 *   whose body never completed is not; one inside a committed transaction is;
 * - `stats` add up while the program runs (nothing negative, idle + used ≤
 *   max) and at the end (nothing used or pending);
 * - no session idle in transaction, no lock on the test tables, every
 *   connection handed out outside a transaction, the pool still answering;
 * - refused inputs were refused, and a commit after a failed step failed;
 * - every op ended within a bound (a hang names the op), releasing the Layer
 *   ended, no backend outlived it, no defect, nothing escaped unhandled.
 *
 * Each program's pool has an application_name of its own (the harness's,
 * suffixed with the program's number), so the server's view of one program
 * is never muddled by what an earlier, failed one left behind.
 *
 * Expected errors (ConnectionLost after a termination, PoolTimeout, PoolClosed
 * after an early release, InvalidInput, SerializationFailure, …) are outcomes,
 * not failures. A failure prints the seed, the path and the shrunk program.
 *
 *   pnpm test:explore                          # EXPLORE_RUNS=2000
 *   EXPLORE_RUNS=500 pnpm exec vitest run test/explore.test.ts
 *   EXPLORE_SEED=… EXPLORE_PATH=… pnpm exec vitest run test/explore.test.ts   # replay a counterexample
 *                                              # (with the same EXPLORE_WITHOUT, if any: the report prints the line)
 *   EXPLORE_REPEAT=5 …                         # run each program up to 5 times (timing-dependent failures)
 *   EXPLORE_WITHOUT=nested,terminate …         # switch features off (see featureNames in explore/program.ts)
 *   EXPLORE_SHRINK_MS=…                        # time allowed for shrinking after the first failure (default 90000)
 *   EXPLORE_HANG_MS=…                          # bound on one program's ops (default 8000; 4000 while shrinking,
 *                                              # EXPLORE_SHRINK_HANG_MS)
 *   EXPLORE_TIME_LIMIT_MS=…                    # no new program after this long (default 150000 when EXPLORE_RUNS
 *                                              # is not set, else none)
 *   EXPLORE_DEBUG=1                            # one line per program: its phases' durations, backends left
 *
 * The default run (inside `pnpm test`) explores DEFAULT_RUNS programs, about a minute on a 2-core machine.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Data, Duration, Effect, Exit, Fiber, Layer, Option, References, Scope } from "effect"
import type { Connection, DbError, Statement } from "effect-dbpool"
import { Notifications, sql, WritePool } from "effect-dbpool"
import fc from "fast-check"
import { afterAll, beforeAll } from "vitest"
import { type Body, describeOp, describeProgram, parseFeatures, type Program, programArb, type Wrap } from "./explore/program.ts"
import { harness, poll } from "./support.ts"

const h = harness("explore")

// ---------------------------------------------------------------------------
// settings
// ---------------------------------------------------------------------------

const envInt = (name: string, fallback: number): number => {
  const text = process.env[name]
  if (text === undefined || text === "") return fallback
  const n = Number(text)
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got "${text}"`)
  return n
}

/** Sized so that the default run takes about a minute on a 2-core machine, inside `pnpm test`. */
const DEFAULT_RUNS = 1600
const runsFromEnv = process.env["EXPLORE_RUNS"] !== undefined && process.env["EXPLORE_RUNS"] !== ""
const RUNS = envInt("EXPLORE_RUNS", DEFAULT_RUNS)
/** fast-check seeds are 32-bit integers, negative ones included. */
const SEED = ((text) => {
  if (text === undefined || text === "") return undefined
  const n = Number(text)
  if (!Number.isInteger(n)) throw new Error(`EXPLORE_SEED must be an integer, got "${text}"`)
  return n
})(process.env["EXPLORE_SEED"])
const REPLAY_PATH = process.env["EXPLORE_PATH"] === "" ? undefined : process.env["EXPLORE_PATH"]
const REPEAT = Math.max(1, envInt("EXPLORE_REPEAT", 1))
const SHRINK_MS = envInt("EXPLORE_SHRINK_MS", 90_000)
const HANG_MS = envInt("EXPLORE_HANG_MS", 8_000)
/**
 * The bound while shrinking, after a first failure: each candidate that still hangs costs this much, and
 * anything slower than the 2 s acquire timeout plus a margin is suspect anyway.
 */
const SHRINK_HANG_MS = Math.min(HANG_MS, envInt("EXPLORE_SHRINK_HANG_MS", 4_000))
/** In the default run, no new program starts after this long (a slow machine still finishes within bounds). */
const TIME_LIMIT_MS = envInt("EXPLORE_TIME_LIMIT_MS", runsFromEnv ? 0 : 150_000)
const OFF = parseFeatures(process.env["EXPLORE_WITHOUT"])
const DEBUG = process.env["EXPLORE_DEBUG"] !== undefined && process.env["EXPLORE_DEBUG"] !== ""

const ACQUIRE_TIMEOUT_MS = 2000
/** Rows of explore_rows that transactions update and partial transactions lock. */
const ROWS = 4
const CHANNEL = "explore"

// ---------------------------------------------------------------------------
// the world of one program: what its ops recorded
// ---------------------------------------------------------------------------

type Pool = (typeof WritePool)["Service"]
type Notifier = Notifications.NotificationsService
type Row = Connection.Row
type Runner = (statement: Statement.Statement) => Effect.Effect<ReadonlyArray<Row>, DbError.DbError>
type Tagged = { readonly _tag: string }

class Boom extends Data.TaggedError("Boom")<{}> {}
class Sibling extends Data.TaggedError("Sibling")<{}> {}

/** One use of a connection: a single statement (shared), or an interaction / transaction / partial transaction (exclusive). */
interface Lease {
  readonly id: number
  readonly op: number
  readonly exclusive: boolean
  pid: number | undefined
  ended: boolean
}

/** A statement that returned its backend pid and its place in the server's order (a sequence value). */
interface Recorded {
  readonly lease: Lease
  readonly pid: number
  readonly seq: number
}

type Expectation = "present" | "absent" | "either"

/** An INSERT into explore_log and what the model says about it at the end. */
interface Mark {
  readonly id: number
  readonly op: number
  readonly what: string
  expect: Expectation
}

interface OpRecord {
  readonly index: number
  status: "waiting" | "running" | "done"
  outcome: string
}

class World {
  readonly violations: Array<string> = []
  readonly statements: Array<Recorded> = []
  /** Backend pid → the exclusive lease holding it right now (from its first statement to its end). */
  readonly held = new Map<number, Lease>()
  readonly marks: Array<Mark> = []
  readonly ops: Array<OpRecord>
  released = false
  private leases = 0
  readonly program: Program
  readonly id: number
  readonly appName: string
  readonly pool: Pool
  readonly notifications: Notifier
  constructor(program: Program, id: number, appName: string, pool: Pool, notifications: Notifier) {
    this.program = program
    this.id = id
    this.appName = appName
    this.pool = pool
    this.notifications = notifications
    this.ops = program.ops.map((_, index) => ({ index, status: "waiting", outcome: "" }))
  }
  violation(text: string): void {
    // One failure mode tends to repeat: keep the report readable.
    if (this.violations.length < 25) this.violations.push(text)
  }
  lease(op: number, exclusive: boolean): Lease {
    return { id: ++this.leases, op, exclusive, pid: undefined, ended: false }
  }
  mark(op: number, what: string): Mark {
    const m: Mark = { id: this.marks.length + 1, op, what, expect: "either" }
    this.marks.push(m)
    return m
  }
  describe(op: number): string {
    const o = this.program.ops[op]
    return o === undefined ? `#${op}` : describeOp(o, op).replace(/\s+/g, " ")
  }
}

const probeStatement = () => sql`SELECT pg_backend_pid() AS pid, nextval('explore_seq')::int AS seq`
const insertStatement = (w: World, m: Mark) =>
  sql`INSERT INTO explore_log (program, mark, op, what) VALUES (${w.id}, ${m.id}, ${m.op}, ${m.what})
      RETURNING pg_backend_pid() AS pid, nextval('explore_seq')::int AS seq`

/** Notes the backend a statement ran on; an exclusive lease claims it in the pid → lease map at its first statement. */
const record = (w: World, lease: Lease, rows: ReadonlyArray<Row>): void => {
  const pid = Number(rows[0]?.["pid"])
  const seq = Number(rows[0]?.["seq"])
  // Every statement recorded here returns exactly one row: anything else is someone else's result, or a corrupt one.
  if (rows.length !== 1 || !Number.isFinite(pid) || !Number.isFinite(seq)) {
    w.violation(`op #${lease.op}: a statement returned ${JSON.stringify(rows)} instead of one row with pid and seq`)
    return
  }
  w.statements.push({ lease, pid, seq })
  if (!lease.exclusive || lease.ended) return
  if (lease.pid === undefined) {
    lease.pid = pid
    const holder = w.held.get(pid)
    if (holder !== undefined && holder !== lease) {
      w.violation(
        `backend ${pid} held by two exclusive leases at once: op #${holder.op} (${w.describe(holder.op)}) and op #${lease.op} (${
          w.describe(lease.op)
        })`
      )
    } else w.held.set(pid, lease)
  } else if (lease.pid !== pid) {
    w.violation(`op #${lease.op} (${w.describe(lease.op)}): statements of one exclusive lease ran on backends ${lease.pid} and ${pid}`)
  }
}

/** Ends an exclusive lease's claim; runs inside the interaction (before the connection goes back). */
const unclaim = (w: World, lease: Lease) =>
  Effect.sync(() => {
    lease.ended = true
    if (lease.pid !== undefined && w.held.get(lease.pid) === lease) w.held.delete(lease.pid)
  })

const recorded = (w: World, lease: Lease, run: Runner, statement: Statement.Statement) =>
  Effect.flatMap(run(statement), (rows) => Effect.sync(() => record(w, lease, rows)))

/** Input that must be refused with InvalidInput; success is a violation, other errors (PoolTimeout, ConnectionLost, …) are outcomes. */
const mustRefuse = (w: World, op: number, what: string, effect: Effect.Effect<unknown, DbError.DbError>) =>
  effect.pipe(
    Effect.matchEffect({
      onSuccess: () => Effect.sync(() => w.violation(`op #${op} (${w.describe(op)}): ${what} was not refused`)),
      onFailure: (e) => (e._tag === "InvalidInput" ? Effect.void : Effect.fail(e))
    })
  )

const refusedStatement = (input: "BEGIN" | "COMMIT" | "Map"): Statement.Statement =>
  input === "BEGIN" ? sql`BEGIN` : input === "COMMIT" ? sql`COMMIT` :
  // Deliberately outside the Value type: what a JavaScript caller could pass.
  sql`SELECT ${new Map([[1, 2]]) as never} AS v`

/** Sleeps `ms`; 0 means no sleep at all (no async boundary). */
const sleep = (ms: number) => (ms > 0 ? Effect.sleep(Duration.millis(ms)) : Effect.void)
/** When an interruption lands: "now" in the same tick, else after a timer of `ms` (0 included: a timer still lets I/O run). */
const after = (at: number | "now") => (at === "now" ? Effect.void : Effect.sleep(Duration.millis(at)))

// ---------------------------------------------------------------------------
// the ops
// ---------------------------------------------------------------------------

const body = (w: World, op: number, b: Body): Effect.Effect<void, Tagged> => {
  const pool = w.pool
  const run: Runner = (s) => pool.run(s)
  switch (b.kind) {
    case "select": {
      const lease = w.lease(op, false)
      return recorded(w, lease, run, sql`SELECT pg_backend_pid() AS pid, nextval('explore_seq')::int AS seq, pg_sleep(${b.sleepMs / 1000}) AS slept`)
    }
    case "insert": {
      const lease = w.lease(op, false)
      const m = w.mark(op, "autocommit run")
      return Effect.andThen(recorded(w, lease, run, insertStatement(w, m)), Effect.sync(() => { m.expect = "present" }))
    }
    case "refused":
      return mustRefuse(w, op, b.input, pool.run(refusedStatement(b.input)))
    case "notify":
      return w.notifications.notify(CHANNEL, `op ${op}`)
    case "terminate":
      return Effect.gen(function*() {
        const backends = yield* h.observe<{ pid: number }>(
          "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
          [w.appName]
        )
        const victim = backends[b.pick % Math.max(1, backends.length)]
        if (victim !== undefined) yield* h.observe("SELECT pg_terminate_backend($1)", [victim.pid])
      })
    case "interaction": {
      const lease = w.lease(op, true)
      return pool.interaction((conn) =>
        Effect.gen(function*() {
          const crun: Runner = (s) => conn.run(s)
          yield* recorded(w, lease, crun, probeStatement())
          for (const step of b.steps) {
            switch (step) {
              case "probe":
                yield* recorded(w, lease, crun, probeStatement())
                break
              case "insert": {
                const m = w.mark(op, "interaction statement (autocommit)")
                yield* recorded(w, lease, crun, insertStatement(w, m))
                m.expect = "present"
                break
              }
              case "sleep":
                yield* sleep(2)
                break
              case "refused":
                yield* mustRefuse(w, op, "BEGIN inside an interaction", conn.run(sql`BEGIN`))
                break
            }
          }
        }).pipe(Effect.ensuring(unclaim(w, lease)))
      )
    }
    case "transaction": {
      const lease = w.lease(op, true)
      const outer = w.mark(op, "transaction")
      const inner = b.savepoint === "none" ? undefined : w.mark(op, b.savepoint === "ok" ? "savepoint" : "savepoint that fails")
      let bodyDone = false
      let innerDone = false
      const f = (conn: Connection.Connection) =>
        Effect.gen(function*() {
          const crun: Runner = (s) => conn.run(s)
          yield* recorded(w, lease, crun, probeStatement())
          yield* recorded(w, lease, crun, insertStatement(w, outer))
          if (b.row !== undefined) yield* conn.run(sql`UPDATE explore_rows SET val = val + 1 WHERE id = ${b.row}`)
          if (b.notify) yield* conn.notify(CHANNEL, `op ${op}`)
          if (inner !== undefined) {
            yield* conn.transaction((sp) =>
              Effect.gen(function*() {
                const srun: Runner = (s) => sp.run(s)
                yield* recorded(w, lease, srun, insertStatement(w, inner))
                yield* recorded(w, lease, srun, probeStatement())
                innerDone = true
                if (b.savepoint === "fail") return yield* new Boom()
              })
            ).pipe(Effect.catchTag("Boom", () => Effect.void))
          }
          yield* sleep(b.sleepMs)
          yield* recorded(w, lease, crun, probeStatement())
          bodyDone = true
          if (b.fail) return yield* new Boom()
        }).pipe(Effect.ensuring(unclaim(w, lease)))
      return pool.transaction(f, b.isolation === undefined ? undefined : { isolationLevel: b.isolation }).pipe(
        // A finalizer: runs on interruption too.
        Effect.onExit((exit) =>
          Effect.sync(() => {
            // Rolled back for sure when the body failed on purpose or never completed; committed when it succeeded.
            outer.expect = Exit.isSuccess(exit) ? "present" : !bodyDone || b.fail ? "absent" : "either"
            if (inner !== undefined) inner.expect = b.savepoint === "fail" || !innerDone ? "absent" : outer.expect
          })
        )
      )
    }
    case "partial": {
      const lease = w.lease(op, true)
      const marks: Array<Mark> = []
      let commitStarted = false
      let committed = false
      let aborted = false
      return Effect.scoped(Effect.gen(function*() {
        const tx = yield* pool.partialTransaction()
        // Finalizers run last-added first: this one before the partial transaction's own (rollback, check-in).
        yield* Effect.addFinalizer(() => unclaim(w, lease))
        const trun: Runner = (s) => tx.run(s)
        yield* recorded(w, lease, trun, probeStatement())
        yield* tx.run(sql`SELECT id FROM explore_rows WHERE id = ${b.row} FOR UPDATE`)
        const first = w.mark(op, "partial transaction")
        marks.push(first)
        yield* recorded(w, lease, trun, insertStatement(w, first))
        // Steps from other fibers, running while this one goes on.
        const helpers = yield* Effect.forEach(
          Array.from({ length: b.helpers }, (_, i) => i),
          (i) =>
            Effect.forkChild(Effect.gen(function*() {
              const m = w.mark(op, `partial transaction, helper ${i}`)
              marks.push(m)
              yield* recorded(w, lease, trun, insertStatement(w, m))
              yield* recorded(w, lease, trun, probeStatement())
            }))
        )
        if (b.nested) {
          yield* tx.interaction((conn) =>
            Effect.gen(function*() {
              yield* recorded(w, lease, (s) => conn.run(s), probeStatement())
              const m = w.mark(op, "partial transaction, tx.run inside tx.interaction")
              marks.push(m)
              yield* recorded(w, lease, trun, insertStatement(w, m))
            })
          )
        }
        if (b.notify) yield* tx.notify(CHANNEL, `op ${op}`)
        yield* sleep(b.sleepMs)
        yield* Fiber.joinAll(helpers)
        let stepFailed = false
        if (b.failStep) {
          const failing = yield* Effect.exit(tx.run(sql`SELECT 1 / (random() * 0)::int AS x`))
          if (Exit.isSuccess(failing)) w.violation(`op #${op} (${w.describe(op)}): a division by zero succeeded`)
          else {
            const e = Cause.findErrorOption(failing.cause)
            stepFailed = Option.isSome(e) && e.value._tag === "DatabaseError"
            if (!stepFailed) return yield* failing
          }
        } else {
          yield* recorded(w, lease, trun, probeStatement())
        }
        switch (b.end) {
          case "commit": {
            commitStarted = true
            const exit = yield* wrapped(b.endWrap, tx.commit)
            if (Exit.isSuccess(exit)) {
              committed = true
              if (stepFailed) w.violation(`op #${op} (${w.describe(op)}): commit succeeded after a failed step`)
            } else {
              const e = Cause.findErrorOption(exit.cause)
              aborted = Option.isSome(e) && e.value._tag === "TransactionAborted"
              return yield* exit
            }
            break
          }
          case "rollback":
            yield* Effect.flatten(wrapped(b.endWrap, tx.rollback))
            break
          case "close":
            break
        }
      })).pipe(
        Effect.onExit(() =>
          Effect.sync(() => {
            const expect: Expectation = committed && !aborted ? "present" : commitStarted && !aborted ? "either" : "absent"
            for (const m of marks) m.expect = expect
          })
        )
      )
    }
  }
}

/** Runs an op under its wrap and returns how it ended. */
const wrapped = (wrap: Wrap, effect: Effect.Effect<void, Tagged>): Effect.Effect<Exit.Exit<void, Tagged>> => {
  switch (wrap.kind) {
    case "plain":
      return Effect.exit(effect)
    case "timeout":
      return Effect.exit(Effect.timeout(effect, Duration.millis(wrap.ms)))
    case "sibling": {
      const sibling = Effect.andThen(after(wrap.ms), Effect.fail(new Sibling()))
      return Effect.exit(Effect.all([effect, sibling], { concurrency: "unbounded", discard: true }))
    }
    case "interrupt":
      return Effect.gen(function*() {
        const fiber = yield* Effect.forkChild(effect)
        yield* after(wrap.ms)
        yield* Fiber.interrupt(fiber)
        return yield* Fiber.await(fiber)
      })
  }
}

const sampleStats = (w: World, when: string) =>
  Effect.suspend(() => {
    if (w.released) return Effect.void
    return Effect.map(w.pool.stats, (s) => {
      if (w.released) return
      if (s.idle < 0 || s.used < 0 || s.pending < 0 || s.idle + s.used > s.max) {
        w.violation(`stats ${when} do not add up: ${JSON.stringify(s)}`)
      }
    })
  })

const runOp = (w: World, index: number) =>
  Effect.gen(function*() {
    const op = w.program.ops[index]!
    const rec = w.ops[index]!
    yield* sleep(op.delayMs)
    rec.status = "running"
    const exit = yield* wrapped(op.wrap, body(w, index, op.body))
    rec.status = "done"
    if (Exit.isSuccess(exit)) rec.outcome = "ok"
    else if (Cause.hasDies(exit.cause)) {
      rec.outcome = "defect"
      w.violation(`op #${index} (${w.describe(index)}) died: ${Cause.pretty(exit.cause)}`)
    } else {
      const error = Cause.findErrorOption(exit.cause)
      rec.outcome = Option.isNone(error)
        ? "interrupted"
        : error.value._tag === "DatabaseError" && "sqlState" in error.value
        ? `DatabaseError ${String(error.value.sqlState)}`
        : error.value._tag
    }
    yield* sampleStats(w, `after op #${index}`)
  })

// ---------------------------------------------------------------------------
// observing the server
// ---------------------------------------------------------------------------

interface Session {
  readonly pid: number
  readonly state: string | null
  readonly query: string
}

/**
 * Each program's pool has an application_name of its own (the harness's, suffixed with the program's number),
 * so that a fiber or backend an earlier, failed program left behind is never counted as this program's.
 */
const programAppName = (id: number) => `${h.appName}-${id}`
/** Every application_name this file uses, for clean-up. */
const ourAppNames = `${h.appName}%`

const sessionsOf = (appName: string) =>
  h.observe<Session>(
    "SELECT pid, state, left(query, 80) AS query FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
    [appName]
  )

interface LockRow {
  readonly pid: number
  readonly relation: string
  readonly mode: string
}

const tableLocksOf = (appName: string) =>
  h.observe<LockRow>(
    `SELECT l.pid, l.relation::regclass::text AS relation, l.mode
   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
   WHERE a.application_name = $1 AND l.relation::regclass::text IN ('test_values', 'explore_rows', 'explore_log')`,
    [appName]
  )

/** The checks after a program poll often: a leftover is usually gone within milliseconds. */
const pollUntil = <A>(check: Effect.Effect<A>, ok: (a: A) => boolean, millis: number): Effect.Effect<A> =>
  poll(check, ok, millis, 10)

/** Terminates whatever an earlier (failed) program left on the server, so that every program starts from zero. */
const clearLeftovers = Effect.gen(function*() {
  const all = h.observe<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1", [ourAppNames])
  const left = yield* all
  if (left.length === 0) return
  yield* h.observe("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1", [ourAppNames])
  yield* pollUntil(all, (s) => s.length === 0, 3000)
})

/** Awaits a fiber for at most `millis`. */
const awaitWithin = <A, E>(fiber: Fiber.Fiber<A, E>, millis: number) =>
  Effect.timeoutOption(Fiber.await(fiber), Duration.millis(Math.max(0, millis)))

// ---------------------------------------------------------------------------
// one program
// ---------------------------------------------------------------------------

/** Errors that escaped the library as uncaught exceptions or unhandled rejections. */
const escaped: Array<string> = []
const onEscape = (kind: string) => (error: unknown) => {
  escaped.push(`${kind}: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
}
const onUncaught = onEscape("uncaughtException")
const onUnhandled = onEscape("unhandledRejection")

/** Outcomes over the whole run, for the summary line. */
const outcomes = new Map<string, number>()
const count = (key: string) => outcomes.set(key, (outcomes.get(key) ?? 0) + 1)

const runProgram = (program: Program, id: number, hangMs: number): Effect.Effect<ReadonlyArray<string>> =>
  Effect.gen(function*() {
    yield* clearLeftovers
    const maxSize = program.maxSize
    const minSize = Math.min(program.minSize, maxSize)
    const appName = programAppName(id)
    const sessions = sessionsOf(appName)
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(
      h.pools({
        maxSize,
        minSize,
        readMinSize: 0,
        acquireTimeout: Duration.millis(ACQUIRE_TIMEOUT_MS),
        connectTimeout: "3 seconds",
        applicationName: appName
      }),
      scope
    ).pipe(Effect.orDie)
    const w = new World(program, id, appName, Context.get(context, WritePool), Context.get(context, Notifications.Notifications))
    const started = Date.now()

    // Closes the Layer (bounded): a release that hangs is a violation, not a hung test.
    let releaseFiber: Fiber.Fiber<void> | undefined
    const release = Effect.gen(function*() {
      if (releaseFiber === undefined) {
        w.released = true
        releaseFiber = yield* Effect.forkDetach(Scope.close(scope, Exit.void))
      }
      const closed = yield* awaitWithin(releaseFiber, 5000)
      if (Option.isNone(closed)) w.violation("releasing the pool Layer did not end within 5 s")
    })

    // Ops: a fiber per op, except that a chained op runs after the previous one in its fiber.
    const chains: Array<Array<number>> = []
    program.ops.forEach((op, i) => {
      const last = chains[chains.length - 1]
      if (op.chain && last !== undefined) last.push(i)
      else chains.push([i])
    })
    const sampler = yield* Effect.forkDetach(Effect.forever(Effect.andThen(sampleStats(w, "while running"), Effect.sleep("1 millis"))))
    const fibers = yield* Effect.forEach(chains, (chain) =>
      Effect.forkDetach(Effect.forEach(chain, (i) => runOp(w, i), { discard: true })))
    if (program.release.kind === "whileRunning") {
      const ms = program.release.ms
      releaseFiber = yield* Effect.forkDetach(
        Effect.andThen(sleep(ms), Effect.andThen(Effect.sync(() => { w.released = true }), Scope.close(scope, Exit.void)))
      )
    }

    // Every op must end within the bound.
    let hung = false
    for (const fiber of fibers) {
      const done = yield* awaitWithin(fiber, started + hangMs - Date.now())
      if (Option.isNone(done)) hung = true
    }
    yield* Fiber.interrupt(sampler)
    if (hung) {
      for (const rec of w.ops) {
        if (rec.status !== "done") {
          w.violation(`op #${rec.index} (${w.describe(rec.index)}) did not end within ${hangMs} ms (${rec.status})`)
        }
      }
      // What the server sees of the program's backends tells why (a lock wait, a session idle in transaction, …).
      const seen = yield* h.observe<{ pid: number; state: string | null; wait: string | null; query: string; locks: string | null }>(
        `SELECT a.pid, a.state, a.wait_event_type || ':' || a.wait_event AS wait, left(a.query, 60) AS query,
                (SELECT string_agg(l.relation::regclass::text || ' ' || l.mode || CASE WHEN l.granted THEN '' ELSE ' (waiting)' END, ', ')
                 FROM pg_locks l WHERE l.pid = a.pid AND l.relation::regclass::text IN ('test_values', 'explore_rows', 'explore_log')) AS locks
         FROM pg_stat_activity a WHERE a.application_name = $1 ORDER BY a.pid`,
        [appName]
      )
      w.violation(`(the program's backends at that moment: ${JSON.stringify(seen)})`)
      // Bounded clean-up: interrupting a wedged fiber may itself hang.
      const stopping = yield* Effect.forkDetach(Effect.forEach(fibers, Fiber.interrupt, { concurrency: "unbounded", discard: true }))
      yield* awaitWithin(stopping, 2000)
    }

    // While the pool is still open: it settled, nothing is left in a transaction or locked, it still answers.
    if (program.release.kind === "settled" && !hung) {
      const stats = yield* pollUntil(w.pool.stats, (s) => s.used === 0 && s.pending === 0, 2000)
      if (stats.used !== 0 || stats.pending !== 0 || stats.idle < 0 || stats.idle > stats.max) {
        w.violation(`stats after every op ended: ${JSON.stringify(stats)} (expected nothing used or pending)`)
      }
      const server = yield* pollUntil(
        Effect.all([sessions, tableLocksOf(appName)]),
        ([s, l]) => s.every((x) => x.state === "idle") && l.length === 0,
        2000
      )
      const [busy, locks] = server
      const notIdle = busy.filter((s) => s.state !== "idle")
      if (notIdle.length > 0) w.violation(`sessions not idle after every op ended: ${JSON.stringify(notIdle)}`)
      if (locks.length > 0) w.violation(`locks held after every op ended: ${JSON.stringify(locks)}`)
      // The write pool's backends, not counting the listening connection (outside the pool's size) if there is one.
      const listener = yield* w.notifications.listenerPid
      const poolBackends = (s: ReadonlyArray<Session>) => s.filter((x) => x.pid !== listener)
      if (poolBackends(busy).length > maxSize) {
        const again = poolBackends(yield* pollUntil(sessions, (s) => poolBackends(s).length <= maxSize, 1000))
        if (again.length > maxSize) w.violation(`${again.length} backends for a pool of ${maxSize}: ${JSON.stringify(again)}`)
      }
      // Every connection, handed out at once: outside a transaction, and answering.
      const answer = yield* Effect.forEach(
        Array.from({ length: maxSize }, (_, i) => i),
        () =>
          // Two statements outside a transaction get two transaction ids; inside a leftover one, the same.
          w.pool.interaction((conn) =>
            Effect.all([
              conn.run(sql`SELECT pg_backend_pid() AS pid, pg_current_xact_id()::text AS xid`),
              conn.run(sql`SELECT pg_current_xact_id()::text AS xid`)
            ])
          ).pipe(
            Effect.map(([x, y]) => ({ pid: Number(x[0]?.["pid"]), outside: x[0]?.["xid"] !== y[0]?.["xid"] })),
            // A backend terminated while idle is noticed when used; neither is a failure of the pool.
            Effect.catchTags({ ConnectionLost: () => Effect.succeed(undefined), ConnectFailed: () => Effect.succeed(undefined) })
          ),
        { concurrency: "unbounded" }
      ).pipe(Effect.exit, Effect.timeoutOption(Duration.millis(ACQUIRE_TIMEOUT_MS + 3000)))
      if (Option.isNone(answer)) w.violation(`the pool no longer answers: ${maxSize} interactions did not end after every op ended`)
      else if (Exit.isFailure(answer.value)) {
        w.violation(`the pool no longer answers: ${Cause.pretty(answer.value.cause)}`)
      } else {
        for (const a of answer.value.value) {
          if (a !== undefined && !a.outside) w.violation(`backend ${a.pid} was handed out inside a transaction`)
        }
      }
    } else if (program.release.kind === "immediately" && !hung) {
      const stats = yield* w.pool.stats
      if (stats.idle < 0 || stats.used < 0 || stats.pending < 0 || stats.idle + stats.used > stats.max) {
        w.violation(`stats after every op ended do not add up: ${JSON.stringify(stats)}`)
      }
    }

    const tSettled = Date.now()
    yield* release
    const tReleased = Date.now()
    // Every backend closes once the Layer is released.
    const left = yield* pollUntil(sessions, (s) => s.length === 0, OFF.has("leak-check") ? 200 : 4000)
    if (left.length > 0 && !OFF.has("leak-check")) w.violation(`backends left after the Layer was released: ${JSON.stringify(left)}`)
    yield* clearLeftovers
    if (DEBUG) {
      console.log(
        `program ${id}: ops+checks ${tSettled - started} ms, release ${tReleased - tSettled} ms, backends gone ${Date.now() - tReleased} ms${
          left.length > 0 ? ` (left: ${JSON.stringify(left)})\n${describeProgram(program)}` : ""
        }`
      )
    }

    // The model: what must and must not be in the log table.
    const present = new Set(
      (yield* h.observe<{ mark: number }>("SELECT mark FROM explore_log WHERE program = $1", [id])).map((r) => Number(r.mark))
    )
    for (const m of w.marks) {
      if (m.expect === "present" && !present.has(m.id)) {
        w.violation(`op #${m.op} (${w.describe(m.op)}): the ${m.what} INSERT succeeded/committed but is not in the table`)
      }
      if (m.expect === "absent" && present.has(m.id)) {
        w.violation(`op #${m.op} (${w.describe(m.op)}): the ${m.what} INSERT was rolled back but is in the table`)
      }
    }

    // No statement of another lease ran on a backend between the first and last statement of an exclusive lease.
    const byLease = new Map<Lease, Array<Recorded>>()
    for (const s of w.statements) {
      const list = byLease.get(s.lease) ?? []
      list.push(s)
      byLease.set(s.lease, list)
    }
    for (const [lease, list] of byLease) {
      if (!lease.exclusive || list.length < 2) continue
      const pid = list[0]!.pid
      const from = Math.min(...list.map((s) => s.seq))
      const to = Math.max(...list.map((s) => s.seq))
      const intruder = w.statements.find((s) => s.lease !== lease && s.pid === pid && s.seq > from && s.seq < to)
      if (intruder !== undefined) {
        w.violation(
          `op #${intruder.lease.op} (${w.describe(intruder.lease.op)}) ran a statement on backend ${pid} inside the exclusive lease of op #${lease.op} (${
            w.describe(lease.op)
          })`
        )
      }
    }

    // (One that surfaces late, after its program's checks, is reported with the next program.)
    for (const e of escaped.splice(0)) w.violation(`escaped the library: ${e}`)
    for (const rec of w.ops) {
      const kind = program.ops[rec.index]!.body.kind
      // A refused input that was refused ends "ok": say what happened.
      const outcome = kind === "refused" && rec.outcome === "ok" ? "InvalidInput" : rec.outcome === "" ? rec.status : rec.outcome
      count(`${kind}:${outcome}`)
    }
    return w.violations
  }).pipe(
    // Pool start/close lines and warnings of expected trouble would drown the report.
    Effect.provideService(References.MinimumLogLevel, "Error")
  )

// ---------------------------------------------------------------------------
// the property
// ---------------------------------------------------------------------------

describe("exploration", () => {
  beforeAll(async () => {
    process.on("uncaughtException", onUncaught)
    process.on("unhandledRejection", onUnhandled)
    await Effect.runPromise(Effect.gen(function*() {
      yield* h.observe("DROP TABLE IF EXISTS explore_log, explore_rows")
      yield* h.observe("DROP SEQUENCE IF EXISTS explore_seq")
      yield* h.observe("CREATE SEQUENCE explore_seq")
      yield* h.observe("CREATE TABLE explore_log (program int NOT NULL, mark int NOT NULL, op int NOT NULL, what text NOT NULL)")
      yield* h.observe("CREATE INDEX ON explore_log (program)")
      yield* h.observe("CREATE TABLE explore_rows (id int PRIMARY KEY, val int NOT NULL)")
      yield* h.observe("INSERT INTO explore_rows SELECT g, 0 FROM generate_series(1, $1::int) AS g", [ROWS])
    }))
  })
  afterAll(async () => {
    process.off("uncaughtException", onUncaught)
    process.off("unhandledRejection", onUnhandled)
    await Effect.runPromise(Effect.gen(function*() {
      // What failed programs left (each already reported) must not hold locks on the tables dropped here.
      yield* clearLeftovers
      yield* h.observe("DROP TABLE IF EXISTS explore_log, explore_rows")
      yield* h.observe("DROP SEQUENCE IF EXISTS explore_seq")
    }))
  })

  // Generous: a hang costs its bound, and the shrinking budget comes on top.
  const budgetMs = (TIME_LIMIT_MS > 0 ? TIME_LIMIT_MS : RUNS * REPEAT * 1000) + SHRINK_MS + 60_000

  it.live(`random programs keep the pool's invariants (${RUNS} programs)`, () =>
    Effect.gen(function*() {
      let ran = 0
      let skipped = 0
      let failedAt: number | undefined
      const t0 = Date.now()
      const property = fc.asyncProperty(programArb(OFF), async (program) => {
        // Past the time limit, or the shrinking budget after a failure: pass without running.
        if (failedAt === undefined && TIME_LIMIT_MS > 0 && Date.now() - t0 > TIME_LIMIT_MS) {
          skipped++
          return true
        }
        if (failedAt !== undefined && Date.now() - failedAt > SHRINK_MS) return true
        for (let attempt = 0; attempt < REPEAT; attempt++) {
          ran++
          const violations = await Effect.runPromise(runProgram(program, ran, failedAt === undefined ? HANG_MS : SHRINK_HANG_MS))
          if (violations.length > 0) {
            failedAt ??= Date.now()
            throw new Error(`${violations.length} violation(s):\n- ${violations.join("\n- ")}`)
          }
        }
        return true
      })
      const details = yield* Effect.promise(() =>
        fc.check(property, {
          numRuns: RUNS,
          ...(SEED === undefined ? {} : { seed: SEED }),
          ...(REPLAY_PATH === undefined ? {} : { path: REPLAY_PATH }),
          includeErrorInReport: true
        })
      )
      const seconds = ((Date.now() - t0) / 1000).toFixed(1)
      const histogram = [...outcomes.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `${k} ${n}`).join(", ")
      console.log(
        `explore: ${ran} programs run in ${seconds} s (seed ${details.seed}${skipped > 0 ? `, ${skipped} skipped past the time limit` : ""}); outcomes: ${histogram}`
      )
      if (details.failed) {
        const shrunk = details.counterexample?.[0]
        assert.fail(
          [
            fc.defaultReportMessage(details),
            "",
            ...(shrunk === undefined ? [] : ["Shrunk program:", describeProgram(shrunk), ""]),
            `Replay: ${OFF.size > 0 ? `EXPLORE_WITHOUT=${[...OFF].join(",")} ` : ""}EXPLORE_SEED=${details.seed} EXPLORE_PATH=${
              details.counterexamplePath ?? ""
            } pnpm exec vitest run test/explore.test.ts`,
            "(timing-dependent: add EXPLORE_REPEAT=10 to run it up to ten times)"
          ].join("\n")
        )
      }
    }), budgetMs)
})
