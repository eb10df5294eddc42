/**
 * Pool behaviour, observed from Postgres wherever possible: sizes, timeouts,
 * lifetimes, dead and dirty connections, stats, read and named pools,
 * configuration, the postgres.js hazards the pool must absorb, and connect
 * failures.
 */
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Context, Deferred, type Duration, Effect, Exit, Fiber, Layer, Option, Redacted, References, Scope } from "effect"
import { DbPool, ReadPool, sql, WritePool } from "effect-dbpool"
import type { DbError, InteractionPool } from "effect-dbpool"
import * as Net from "node:net"
import { afterAll, afterEach, expect } from "vitest"
import { databaseUrl, harness, otherHostName, poll } from "./support.ts"

const h = harness("pool")

// When a connection dies under it, postgres.js 3.4.9 can throw uncaught TypeErrors from socket callbacks
// and reject promises nobody awaits (its array-type fetch on connect); none of that may reach the user's
// process, where an unhandled rejection ends the process by default.
const uncaught: Array<unknown> = []
const onUncaught = (error: unknown) => {
  uncaught.push(error)
}
process.on("uncaughtException", onUncaught)
process.on("unhandledRejection", onUncaught)
/** The error, and the driver's query it came from when postgres.js attached one (it does, non-enumerably). */
const describeEscape = (error: unknown): string => {
  const query = typeof error === "object" && error !== null && "query" in error ? String(error.query).replace(/\s+/g, " ").trim() : ""
  return query === "" ? String(error) : `${String(error)} (from the driver's query: ${query.slice(0, 100)})`
}
afterEach(() => {
  // Emptied on every check, so that one test's escape fails that test only.
  expect(uncaught.splice(0).map(describeEscape)).toEqual([])
})
afterAll(() => {
  process.off("uncaughtException", onUncaught)
  process.off("unhandledRejection", onUncaught)
})

const quiet = Layer.succeed(References.MinimumLogLevel, "Warn")

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/** Polls `get` until `ok`, failing the test (with the last value) after `timeoutMillis`. */
const eventually = <A>(
  what: string,
  get: Effect.Effect<A>,
  ok: (a: A) => boolean,
  timeoutMillis = 5000
): Effect.Effect<A> =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMillis
    while (true) {
      const a = yield* get
      if (ok(a)) return a
      if (Date.now() > deadline) {
        return yield* Effect.die(new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(a)}`))
      }
      yield* Effect.sleep("20 millis")
    }
  })

const sessionCount = Effect.map(h.sessions, (s) => s.length)

const pidOf = (rows: ReadonlyArray<{ readonly [column: string]: unknown }>): number => Number(rows[0]?.["pid"])

const backendPid = (pool: InteractionPool.InteractionPool) => Effect.map(pool.run(sql`SELECT pg_backend_pid() AS pid`), pidOf)

/**
 * Is the next connection the pool hands out inside an open transaction? A
 * transaction-local setting made by one statement is still there for the next
 * only inside a transaction block. Use on a maxSize 1 pool, so that both
 * statements land on the same connection (checked).
 */
const insideTransaction = (pool: InteractionPool.InteractionPool) =>
  Effect.gen(function*() {
    const first = yield* pool.run(sql`SELECT pg_backend_pid() AS pid, set_config('dbpool.probe', 'inside', true) AS v`)
    const second = yield* pool.run(sql`SELECT pg_backend_pid() AS pid, coalesce(current_setting('dbpool.probe', true), '') AS v`)
    assert.strictEqual(pidOf(first), pidOf(second), "the probe needs both statements on one connection")
    return { pid: pidOf(second), inside: second[0]?.["v"] === "inside" }
  })

/** Makes the pool open `n` connections: holds `n` at once, then lets them all go back. */
const openConnections = (pool: InteractionPool.InteractionPool, n: number) =>
  Effect.gen(function*() {
    const release = yield* Deferred.make<void>()
    const holders = yield* Effect.forkChild(Effect.forEach(
      Array.from({ length: n }, (_, i) => i),
      () => pool.interaction(() => Deferred.await(release)),
      { concurrency: "unbounded" }
    ))
    yield* eventually(`${n} connections in use`, pool.stats, (s) => s.used === n)
    yield* Deferred.succeed(release, undefined)
    yield* Fiber.join(holders)
  })

/** Is this backend still known to the server? */
const backendExists = (pid: number) =>
  Effect.map(h.observe("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [pid]), (rows) => rows.length > 0)

/** Terminates one backend from the observer and waits until the server no longer lists it. */
const terminate = (pid: number) =>
  Effect.gen(function*() {
    yield* h.observe("SELECT pg_terminate_backend($1)", [pid])
    yield* eventually(`backend ${pid} to exit`, backendExists(pid), (exists) => !exists)
    // The client sees the socket close a moment after the backend exits.
    yield* Effect.sleep("100 millis")
  })

/** Waits until the observer sees `pid` in `state` (and, optionally, running a query containing `query`). */
const waitForState = (pid: number, state: string, query?: string) =>
  eventually(
    `backend ${pid} to be ${state}`,
    h.observe<{ state: string | null; query: string }>("SELECT state, query FROM pg_stat_activity WHERE pid = $1", [pid]),
    (rows) => rows[0]?.state === state && (query === undefined || rows[0].query.includes(query))
  )

/** Any session of this file's pools left idle in a transaction, as the server sees it, while the pools are open. */
const idleInTransaction = Effect.map(
  h.sessions,
  (s) => s.filter((x) => x.state === "idle in transaction" || x.state === "idle in transaction (aborted)")
)

/**
 * Runs `body` with the file's pools, then releases the pool Layer and asserts
 * that the release finished, and within a bound: a release that hangs on a
 * connection the driver got confused about is a process that never exits.
 */
const withPools = <A, E>(config: Partial<DbPool.Config>, body: Effect.Effect<A, E, WritePool | ReadPool>) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    // Closed below; this finalizer only matters when the test is interrupted first.
    yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
    const context = yield* Layer.buildWithScope(h.pools(config), scope)
    const exit = yield* Effect.exit(Effect.provideContext(body, context))
    const started = Date.now()
    const closing = yield* Effect.forkDetach(Scope.close(scope, Exit.void))
    const closed = yield* Effect.timeoutOption(Fiber.await(closing), "8 seconds")
    assert.isTrue(Option.isSome(closed), "releasing the pool Layer hung")
    assert.isBelow(Date.now() - started, 4000, "releasing the pool Layer took too long")
    return yield* exit
  })

/** Lets late socket callbacks run, then asserts that nothing escaped as an uncaught exception or rejection. */
const noUncaught = Effect.gen(function*() {
  yield* Effect.sleep("150 millis")
  assert.deepStrictEqual(uncaught.splice(0).map(describeEscape), [])
})

// ---------------------------------------------------------------------------
// lifecycle and sizes
// ---------------------------------------------------------------------------

describe("pool lifecycle and sizes", () => {
  it.live("releasing the pool Layer closes every connection; minSize connections exist while it is open", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      // Closed here by the test; this finalizer only matters when an assertion fails first.
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      const context = yield* Layer.buildWithScope(h.pools({ minSize: 2, maxSize: 4 }), scope)
      const write = Context.get(context, WritePool)
      const read = Context.get(context, ReadPool)
      // minSize is the write pool's: 2 write connections opened without any use; the read pool opens none until used.
      yield* eventually("the minSize connections", write.stats, (w) => w.idle === 2)
      assert.strictEqual(yield* sessionCount, 2)
      // Both pools and the listener on one server: up to 4 + 4 + 1 backends.
      assert.deepStrictEqual(yield* write.stats, { pool: "default/write", idle: 2, used: 0, pending: 0, min: 2, max: 4, serverMax: 9 })
      assert.deepStrictEqual(yield* read.stats, { pool: "default/read", idle: 0, used: 0, pending: 0, min: 0, max: 4, serverMax: 9 })
      yield* read.run(sql`SELECT 1`)
      assert.strictEqual(yield* sessionCount, 3)
      // Grow the write pool to its max, so that release has connections above minSize to close too.
      yield* openConnections(write, 4)
      assert.strictEqual(yield* sessionCount, 5)

      const started = Date.now()
      yield* Scope.close(scope, Exit.void)
      assert.isBelow(Date.now() - started, 3000)
      yield* eventually("every connection to close", sessionCount, (n) => n === 0, 2000)
      // Late callers get a typed error, not an interruption or a hang.
      const late = yield* Effect.flip(write.run(sql`SELECT 1`))
      assert.strictEqual(late._tag, "PoolClosed")
      const lateRead = yield* Effect.flip(read.run(sql`SELECT 1`))
      assert.strictEqual(lateRead._tag, "PoolClosed")
    }))

  it.live("opens minSize connections and never exceeds maxSize under load", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* eventually("the minSize connections", pool.stats, (s) => s.idle === 2)
      assert.strictEqual(yield* sessionCount, 2)
      let maxBackends = 0
      let maxUsed = 0
      let maxPending = 0
      const sampler = yield* Effect.forkChild(Effect.forever(Effect.gen(function*() {
        maxBackends = Math.max(maxBackends, yield* sessionCount)
        const s = yield* pool.stats
        maxUsed = Math.max(maxUsed, s.used)
        maxPending = Math.max(maxPending, s.pending)
        yield* Effect.sleep("10 millis")
      })))
      const started = Date.now()
      const rows = yield* Effect.forEach(
        Array.from({ length: 20 }, (_, i) => i),
        () => pool.run(sql`SELECT pg_sleep(0.2), pg_backend_pid() AS pid`),
        { concurrency: "unbounded" }
      )
      const elapsed = Date.now() - started
      yield* Fiber.interrupt(sampler)
      const pids = new Set(rows.map(pidOf))
      assert.strictEqual(pids.size, 3, "the load spreads over exactly maxSize backends")
      assert.strictEqual(maxBackends, 3, "the server never saw more than maxSize backends")
      assert.strictEqual(maxUsed, 3)
      assert.isAbove(maxPending, 0, "callers beyond maxSize wait")
      // 20 sleeps of 0.2 s on 3 connections take at least 7 rounds.
      assert.isAtLeast(elapsed, 1300)
      const s = yield* pool.stats
      assert.deepStrictEqual({ used: s.used, pending: s.pending, min: s.min, max: s.max }, { used: 0, pending: 0, min: 2, max: 3 })
      assert.strictEqual(s.idle, 3)
    }).pipe(Effect.provide(h.pools({ minSize: 2, maxSize: 3, readMinSize: 0 }))))

  it.live("acquire timeout: an exhausted pool fails with PoolTimeout and its stats, and works afterwards", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(pool.interaction(() => Deferred.await(release)))
      yield* eventually("the holder to hold the connection", pool.stats, (s) => s.used === 1)

      const started = Date.now()
      const error = yield* Effect.flip(pool.run(sql`SELECT 1`))
      const elapsed = Date.now() - started
      assert.strictEqual(error._tag, "PoolTimeout")
      if (error._tag !== "PoolTimeout") return
      assert.isAtLeast(elapsed, 350)
      assert.isBelow(elapsed, 1500)
      assert.strictEqual(error.pool, "default/write")
      assert.strictEqual(error.timeoutMillis, 400)
      assert.strictEqual(error.stats.used, 1)
      assert.strictEqual(error.stats.max, 1)
      assert.include(error.message, "400 ms")
      // Transactions and function interactions wait with the same bound.
      const txError = yield* Effect.flip(pool.transaction((conn) => conn.run(sql`SELECT 1`)))
      assert.strictEqual(txError._tag, "PoolTimeout")
      // The timed-out callers left the queue.
      assert.strictEqual((yield* pool.stats).pending, 0)

      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      // Served, not timed out: nothing the timed-out callers left behind holds the connection.
      const rows = yield* pool.run(sql`SELECT 1 AS one`)
      assert.strictEqual(rows[0]?.["one"], 1)
    }).pipe(Effect.provide(h.pools({ maxSize: 1, acquireTimeout: "400 millis" }))))
})

// ---------------------------------------------------------------------------
// lifetimes
// ---------------------------------------------------------------------------

describe("max lifetime and idle timeout", () => {
  it.live("a connection used after its max lifetime is replaced and its backend ends", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const first = yield* backendPid(pool)
      // Still young: reused.
      assert.strictEqual(yield* backendPid(pool), first)
      yield* Effect.sleep("400 millis")
      const second = yield* backendPid(pool)
      assert.notStrictEqual(second, first)
      yield* eventually("the expired backend to end", backendExists(first), (exists) => !exists, 2000)
      assert.deepStrictEqual((yield* h.sessions).map((s) => s.pid), [second])
    }).pipe(Effect.provide(h.pools({ maxSize: 1, maxLifetime: "300 millis" }))))

  it.live("a connection that expires while held is retired when it comes back", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const held = yield* pool.interaction((conn) => Effect.as(Effect.sleep("400 millis"), conn.pid))
      yield* eventually("the expired backend to end", backendExists(held), (exists) => !exists, 2000)
      assert.notStrictEqual(yield* backendPid(pool), held)
    }).pipe(Effect.provide(h.pools({ maxSize: 1, maxLifetime: "300 millis" }))))

  it.live("idle connections are closed after idleTimeout (minSize 0)", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* openConnections(pool, 3)
      const started = Date.now()
      assert.strictEqual(yield* sessionCount, 3)
      assert.strictEqual((yield* pool.stats).idle, 3)
      yield* eventually("idle connections to close", sessionCount, (n) => n === 0, 3000)
      assert.isAtLeast(Date.now() - started, 150, "not closed before idleTimeout")
      assert.strictEqual((yield* pool.stats).idle, 0)
      // And the pool opens connections again when needed.
      assert.isAbove(yield* backendPid(pool), 0)
    }).pipe(Effect.provide(h.pools({ minSize: 0, maxSize: 3, idleTimeout: "200 millis" }))))

  it.live("idle timeout closes connections down to minSize, not below", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* openConnections(pool, 3)
      assert.strictEqual(yield* sessionCount, 3)
      yield* eventually("idle connections above minSize to close", sessionCount, (n) => n === 1, 3000)
      yield* Effect.sleep("600 millis")
      assert.strictEqual(yield* sessionCount, 1)
    }).pipe(Effect.provide(h.pools({ minSize: 1, readMinSize: 0, maxSize: 3, idleTimeout: "200 millis" }))))
})

// ---------------------------------------------------------------------------
// dead and dirty connections
// ---------------------------------------------------------------------------

describe("dead and dirty connections", () => {
  it.live("a connection whose backend was terminated while idle is discarded, never handed out", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* eventually("the minSize connections", pool.stats, (s) => s.idle === 2)
      const before = (yield* h.sessions).map((s) => s.pid)
      yield* h.observe("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [h.appName])
      yield* eventually("the terminated backends to exit", sessionCount, (n) => n === 0)
      yield* Effect.sleep("100 millis")
      const rows = yield* Effect.forEach(
        [1, 2],
        () => pool.run(sql`SELECT pg_backend_pid() AS pid, pg_sleep(0.05)`),
        { concurrency: "unbounded" }
      )
      for (const pid of rows.map(pidOf)) assert.notInclude(before, pid)
      // Function interactions and transactions get live connections too.
      const pid = yield* pool.transaction((conn) => Effect.succeed(conn.pid))
      assert.notInclude(before, pid)
      yield* noUncaught
    }).pipe(Effect.provide(h.pools({ minSize: 2, maxSize: 2, readMinSize: 0 }))))

  it.live("minSize connections whose backends were terminated are replaced at once, and stats stop counting them", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* eventually("the minSize connections", pool.stats, (s) => s.idle === 3)
      const before = (yield* h.sessions).map((s) => s.pid)
      yield* h.observe("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [h.appName])
      // Maintenance runs every 30 s here (idleTimeout 10 minutes): without a use, the pool must notice by itself.
      const after = yield* eventually("three new backends", h.sessions, (ss) => ss.length === 3 && ss.every((s) => !before.includes(s.pid)), 5000)
      assert.strictEqual(after.length, 3)
      // A backend shows in pg_stat_activity a moment before the pool has its connection.
      assert.deepStrictEqual(yield* eventually("three idle", Effect.map(pool.stats, (s) => [s.idle, s.used]), ([i]) => i === 3), [3, 0])
    }).pipe(Effect.provide(h.pools({ minSize: 3, maxSize: 4, readMinSize: 0 }))))

  it.live("releasing the Layer while a statement runs ends it on the server, not only the socket", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      const pool = Context.get(yield* Layer.buildWithScope(h.pools(), scope), WritePool)
      // Forked outside the pool's scope: closing the pool does not interrupt it, it closes the connection under it.
      const sleeper = yield* Effect.forkDetach(pool.run(sql`SELECT pg_sleep(30)`))
      yield* eventually("the statement running", h.sessions, (ss) => ss.some((s) => s.state === "active" && s.query.includes("pg_sleep(30)")))
      yield* Scope.close(scope, Exit.void)
      yield* eventually("no backend left", sessionCount, (n) => n === 0, 3000)
      const exit = yield* Fiber.await(sleeper)
      assert.isTrue(Exit.isFailure(exit))
    }))

  it.live("transaction control through run is refused with InvalidInput; the connection stays outside a transaction", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const pid = yield* backendPid(pool)
      for (
        const statement of [
          sql`BEGIN`,
          sql`begin isolation level serializable`,
          sql`  /* sneaky */ START TRANSACTION`,
          sql`COMMIT`,
          sql`ROLLBACK`,
          sql`SAVEPOINT s1`
        ]
      ) {
        const error = yield* Effect.flip(pool.run(statement))
        assert.strictEqual(error._tag, "InvalidInput", statement.text)
      }
      const inInteraction = yield* Effect.flip(pool.interaction((conn) => conn.run(sql`BEGIN`)))
      assert.strictEqual(inInteraction._tag, "InvalidInput")
      assert.deepStrictEqual(yield* idleInTransaction, [])
      const probe = yield* insideTransaction(pool)
      assert.strictEqual(probe.pid, pid, "the same connection, so the check means something")
      assert.isFalse(probe.inside)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("a multi-statement text cannot smuggle a BEGIN past the check and leave the connection in a transaction", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const pid = yield* backendPid(pool)
      const smuggled = yield* Effect.exit(pool.run(sql`SELECT 1; BEGIN`))
      // Whatever the outcome, the connection must go back outside a transaction.
      assert.deepStrictEqual(yield* idleInTransaction, [], "the pooled connection sits idle in a transaction")
      const probe = yield* insideTransaction(pool)
      assert.strictEqual(probe.pid, pid)
      assert.isFalse(probe.inside, "the next statements ran inside the smuggled transaction")
      assert.isTrue(Exit.isFailure(smuggled), "a multi-statement text must not run")
      // The same through a transaction: a smuggled COMMIT must not end it half-way.
      const committed = yield* Effect.exit(pool.transaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`CREATE TEMP TABLE smuggled_commit (x int)`)
          yield* conn.run(sql`SELECT 1; COMMIT`)
          return yield* Effect.fail("roll back" as const)
        })
      ))
      assert.isTrue(Exit.isFailure(committed))
      const [after] = yield* pool.run(sql`SELECT to_regclass('pg_temp.smuggled_commit') AS t`)
      assert.strictEqual(after?.["t"], null, "the transaction was committed half-way by a smuggled COMMIT")
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("a transaction interrupted during a statement is rolled back; the next holder is outside any transaction", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const pid = yield* backendPid(pool)
      const fiber = yield* Effect.forkChild(pool.transaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`CREATE TEMP TABLE interrupted_tx (x int)`)
          yield* conn.run(sql`SELECT pg_sleep(30)`)
        })
      ))
      yield* waitForState(pid, "active", "pg_sleep")
      const started = Date.now()
      yield* Fiber.interrupt(fiber)
      assert.isBelow(Date.now() - started, 3000, "interruption cancels the statement rather than waiting 30 s")
      assert.deepStrictEqual(yield* idleInTransaction, [])
      const [row] = yield* pool.run(sql`
        SELECT pg_backend_pid() AS pid, to_regclass('pg_temp.interrupted_tx') AS t, txid_current_if_assigned() AS tx`)
      assert.strictEqual(row?.["pid"], pid, "the same connection, so the checks below mean something")
      assert.strictEqual(row?.["t"], null, "the temp table was rolled back")
      assert.strictEqual(row?.["tx"], null)
      assert.isFalse((yield* insideTransaction(pool)).inside)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("a transaction interrupted between statements is rolled back; the next holder is outside any transaction", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const pid = yield* backendPid(pool)
      const done = yield* Deferred.make<void>()
      const fiber = yield* Effect.forkChild(pool.transaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`CREATE TEMP TABLE interrupted_idle_tx (x int)`)
          yield* conn.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${7}`)
          yield* Deferred.succeed(done, undefined)
          yield* Effect.never
        })
      ))
      yield* Deferred.await(done)
      yield* waitForState(pid, "idle in transaction")
      // The row lock is held while the transaction is open…
      const locks = yield* h.observe("SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'transactionid'", [pid])
      assert.strictEqual(locks.length, 1)
      yield* Fiber.interrupt(fiber)
      // …and released with it.
      assert.deepStrictEqual(yield* idleInTransaction, [])
      const after = yield* h.observe("SELECT 1 FROM pg_locks WHERE pid = $1 AND locktype = 'transactionid'", [pid])
      assert.strictEqual(after.length, 0)
      const [row] = yield* pool.run(sql`
        SELECT pg_backend_pid() AS pid, to_regclass('pg_temp.interrupted_idle_tx') AS t,
               txid_current_if_assigned() AS tx`)
      assert.strictEqual(row?.["pid"], pid)
      assert.strictEqual(row?.["t"], null)
      assert.strictEqual(row?.["tx"], null)
      assert.isFalse((yield* insideTransaction(pool)).inside)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("concurrent transactions never share a connection", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const results = yield* Effect.forEach(
        Array.from({ length: 12 }, (_, i) => i),
        () =>
          pool.transaction((conn) =>
            Effect.gen(function*() {
              const [a] = yield* conn.run(sql`SELECT txid_current()::text AS tx, pg_backend_pid() AS pid`)
              yield* Effect.sleep("30 millis")
              const [b] = yield* conn.run(sql`SELECT txid_current()::text AS tx, pg_backend_pid() AS pid`)
              return { a, b }
            })
          ),
        { concurrency: "unbounded" }
      )
      for (const { a, b } of results) assert.deepStrictEqual(a, b, "a transaction stays on its connection")
      assert.strictEqual(new Set(results.map((r) => r.a?.["tx"])).size, 12, "every transaction is a transaction of its own")
      assert.isAtMost(new Set(results.map((r) => r.a?.["pid"])).size, 3)
    }).pipe(Effect.provide(h.pools({ maxSize: 3 }))))
})

// ---------------------------------------------------------------------------
// stats
// ---------------------------------------------------------------------------

describe("stats", () => {
  it.live("report idle, used and pending under held connections and waiters", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const readPool = yield* ReadPool
      const s0 = yield* eventually("the minSize connection", pool.stats, (s) => s.idle === 1)
      assert.deepStrictEqual(s0, { pool: "default/write", idle: 1, used: 0, pending: 0, min: 1, max: 2, serverMax: 5 })

      const release = yield* Deferred.make<void>()
      const holders = yield* Effect.forkChild(
        Effect.forEach([1, 2], () => pool.interaction(() => Deferred.await(release)), { concurrency: "unbounded" })
      )
      const s1 = yield* eventually("two held connections", pool.stats, (s) => s.used === 2)
      assert.deepStrictEqual(s1, { pool: "default/write", idle: 0, used: 2, pending: 0, min: 1, max: 2, serverMax: 5 })

      const waiters = yield* Effect.forkChild(
        Effect.forEach([1, 2, 3], () => pool.run(sql`SELECT 1`), { concurrency: "unbounded" })
      )
      const s2 = yield* eventually("three waiters", pool.stats, (s) => s.pending === 3)
      assert.deepStrictEqual(s2, { pool: "default/write", idle: 0, used: 2, pending: 3, min: 1, max: 2, serverMax: 5 })
      // The read pool is a pool of its own.
      assert.deepStrictEqual(yield* readPool.stats, { pool: "default/read", idle: 0, used: 0, pending: 0, min: 0, max: 2, serverMax: 5 })

      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holders)
      yield* Fiber.join(waiters)
      const s3 = yield* pool.stats
      assert.deepStrictEqual(s3, { pool: "default/write", idle: 2, used: 0, pending: 0, min: 1, max: 2, serverMax: 5 })
      assert.strictEqual(yield* sessionCount, 2)
    }).pipe(Effect.provide(h.pools({ minSize: 1, readMinSize: 0, maxSize: 2 }))))
})

// ---------------------------------------------------------------------------
// read pool, named pools, configuration
// ---------------------------------------------------------------------------

const isReadOnlyTransaction = (e: DbError.DbError): e is DbError.ReadOnlyTransaction => e._tag === "ReadOnlyTransaction"

describe("read pool", () => {
  it.live("refuses writes with a typed ReadOnlyTransaction and serves reads in read-only sessions", () =>
    Effect.gen(function*() {
      const read = yield* ReadPool
      const write = yield* WritePool
      assert.strictEqual(read.name, "default/read")
      const error = yield* Effect.flip(read.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${1}`))
      assert.isTrue(isReadOnlyTransaction(error), error._tag)
      if (!isReadOnlyTransaction(error)) return
      assert.strictEqual(error.sqlState, "25006")
      assert.strictEqual(error.sqlStateClass, "25 Invalid Transaction State")
      const txError = yield* Effect.flip(read.transaction((conn) => conn.run(sql`INSERT INTO test_values (val1, val2) VALUES (1, 1)`)))
      assert.strictEqual(txError._tag, "ReadOnlyTransaction")

      const [count] = yield* read.run(sql`SELECT count(*)::int AS n FROM test_values`)
      assert.isAbove(Number(count?.["n"]), 0)
      const [ro] = yield* read.run(sql`SHOW default_transaction_read_only`)
      assert.strictEqual(ro?.["default_transaction_read_only"], "on")
      const [rw] = yield* write.run(sql`SHOW default_transaction_read_only`)
      assert.strictEqual(rw?.["default_transaction_read_only"], "off")
      assert.deepStrictEqual(yield* idleInTransaction, [])
    }).pipe(Effect.provide(h.pools())))

  it.live("a read-write transaction cannot be requested through the read pool", () =>
    Effect.gen(function*() {
      const read = yield* ReadPool
      const write = yield* WritePool
      const [before] = yield* write.run(sql`SELECT val1 FROM test_values WHERE id = ${31}`)
      const attempts = [
        read.transaction((conn) => conn.run(sql`UPDATE test_values SET val1 = val1 + 1 WHERE id = ${31}`), { readOnly: false }),
        read.interaction((conn) =>
          conn.transaction((tx) => tx.run(sql`UPDATE test_values SET val1 = val1 + 1 WHERE id = ${31}`), { readOnly: false })
        )
      ]
      for (const attempt of attempts) {
        const error = yield* Effect.flip(attempt)
        assert.strictEqual(error._tag, "ReadOnlyTransaction")
      }
      const [after] = yield* write.run(sql`SELECT val1 FROM test_values WHERE id = ${31}`)
      assert.deepStrictEqual(after, before, "a write went through the read pool")
      // Read-only options are fine.
      const rows = yield* read.transaction((conn) => conn.run(sql`SELECT 1 AS one`), { readOnly: true, isolationLevel: "repeatable read" })
      assert.strictEqual(rows[0]?.["one"], 1)
    }).pipe(Effect.provide(h.pools())))

  it.live("readUrl: reads go to the read URL, still in read-only sessions, with the read pool's own sizes", () => {
    // The same server, told apart by a setting the read URL sets at connect time.
    const readUrl = new URL(Redacted.value(databaseUrl))
    readUrl.searchParams.set("dbpool.replica", "yes")
    return Effect.gen(function*() {
      const read = yield* ReadPool
      const write = yield* WritePool
      const [r] = yield* read.run(sql`
        SELECT current_setting('dbpool.replica', true) AS replica, current_setting('default_transaction_read_only') AS ro`)
      assert.deepStrictEqual(r, { replica: "yes", ro: "on" })
      const [w] = yield* write.run(sql`
        SELECT coalesce(current_setting('dbpool.replica', true), '') AS replica, current_setting('default_transaction_read_only') AS ro`)
      assert.deepStrictEqual(w, { replica: "", ro: "off" })
      const error = yield* Effect.flip(read.run(sql`DELETE FROM test_values WHERE id = ${-1}`))
      assert.strictEqual(error._tag, "ReadOnlyTransaction")
      assert.strictEqual((yield* read.stats).max, 1)
      assert.strictEqual((yield* write.stats).max, 4)
    }).pipe(Effect.provide(h.pools({ readUrl: Redacted.make(readUrl.toString()), readMaxSize: 1 })))
  })
})

const Analytics = DbPool.named("analytics")

describe("named pools", () => {
  it.live("a named pool has service keys of its own and can be provided next to the default pools", () =>
    Effect.gen(function*() {
      const write = yield* WritePool
      const analytics = yield* Analytics.Write
      const analyticsRead = yield* Analytics.Read
      assert.notStrictEqual(Analytics.Write.key, WritePool.key)
      assert.notStrictEqual(Analytics.Read.key, ReadPool.key)
      assert.strictEqual(analytics.name, "analytics/write")
      assert.strictEqual(analyticsRead.name, "analytics/read")
      assert.strictEqual((yield* analytics.stats).pool, "analytics/write")
      assert.strictEqual((yield* write.stats).pool, "default/write")
      assert.strictEqual((yield* analytics.stats).max, 2)

      // Separate capacity: with the default write pool (max 1) exhausted, the analytics pool still serves.
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(write.interaction((conn) => Effect.as(Deferred.await(release), conn.pid)))
      yield* eventually("the default pool to be exhausted", write.stats, (s) => s.used === 1)
      const analyticsPid = yield* backendPid(analytics)
      const [ro] = yield* analyticsRead.run(sql`SHOW default_transaction_read_only`)
      assert.strictEqual(ro?.["default_transaction_read_only"], "on")
      yield* Deferred.succeed(release, undefined)
      const defaultPid = yield* Fiber.join(holder)
      assert.notStrictEqual(analyticsPid, defaultPid)
    }).pipe(
      Effect.provide(Layer.mergeAll(
        h.pools({ maxSize: 1 }),
        Analytics.layer({ url: databaseUrl, maxSize: 2, applicationName: h.appName }).pipe(Layer.provide(quiet))
      ))
    ))
})

/** The default pools from `DbPool.layerConfig()`, reading `env` as the environment. */
const fromEnv = (env: Record<string, string>) =>
  DbPool.layerConfig().pipe(Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env }))), Layer.provide(quiet))

describe("configuration from the environment", () => {
  it.live("DbPool.layerConfig reads DATABASE_URL, DATABASE_POOL_* and the durations", () =>
    Effect.gen(function*() {
      const write = yield* WritePool
      const read = yield* ReadPool
      yield* eventually("the configured minSize", write.stats, (s) => s.idle === 1)
      assert.strictEqual(yield* sessionCount, 1)
      assert.deepStrictEqual(yield* write.stats, { pool: "default/write", idle: 1, used: 0, pending: 0, min: 1, max: 2, serverMax: 6 })
      assert.deepStrictEqual(yield* read.stats, { pool: "default/read", idle: 0, used: 0, pending: 0, min: 0, max: 3, serverMax: 6 })
      // DATABASE_ACQUIRE_TIMEOUT
      const release = yield* Deferred.make<void>()
      const holders = yield* Effect.forkChild(
        Effect.forEach([1, 2], () => write.interaction(() => Deferred.await(release)), { concurrency: "unbounded" })
      )
      yield* eventually("the pool to be exhausted", write.stats, (s) => s.used === 2)
      const error = yield* Effect.flip(write.run(sql`SELECT 1`))
      assert.strictEqual(error._tag, "PoolTimeout")
      if (error._tag === "PoolTimeout") assert.strictEqual(error.timeoutMillis, 300)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holders)
    }).pipe(Effect.provide(fromEnv({
      DATABASE_URL: Redacted.value(databaseUrl),
      DATABASE_POOL_MIN: "1",
      DATABASE_POOL_MAX: "2",
      DATABASE_READ_POOL_MIN: "0",
      DATABASE_READ_POOL_MAX: "3",
      DATABASE_ACQUIRE_TIMEOUT: "300 millis",
      DATABASE_APPLICATION_NAME: h.appName
    }))))

  it.live("DbPool.layerConfig reads the session timeouts, DATABASE_PREPARE, DATABASE_READ_URL and DATABASE_PIPELINE_MAX_DEPTH", () =>
    Effect.gen(function*() {
      const write = yield* WritePool
      const read = yield* ReadPool
      // The session settings, as the server reports them on a pooled connection.
      const [settings] = yield* write.run(sql`SELECT current_setting('statement_timeout') AS statement,
        current_setting('lock_timeout') AS lock, current_setting('idle_in_transaction_session_timeout') AS idle`)
      assert.deepStrictEqual(settings, { statement: "1500ms", lock: "2s", idle: "3s" })
      // DATABASE_PREPARE=false: no named prepared statement is left on the connection.
      const prepared = yield* write.interaction((conn) =>
        Effect.andThen(
          conn.run(sql`SELECT ${1}::int AS one`),
          conn.run(sql`SELECT count(*)::int AS n FROM pg_prepared_statements`)
        )
      )
      assert.deepStrictEqual(prepared, [{ n: 0 }])
      // DATABASE_READ_URL (another name for the same machine): the read pool counts as on a server of its own.
      assert.strictEqual((yield* write.stats).serverMax, 3, "write: 2 + 1 listening")
      assert.strictEqual((yield* read.stats).serverMax, 4, "read: its own max")
      assert.isTrue((yield* read.run(sql`SELECT current_setting('transaction_read_only') = 'on' AS ro`))[0]?.["ro"] === true)
      // DATABASE_PIPELINE_MAX_DEPTH=1: single statements are not pipelined, so 4 of them on 2 connections queue.
      const fiber = yield* Effect.forkChild(
        Effect.forEach([1, 2, 3, 4], () => write.run(sql`SELECT pg_sleep(0.3)`), { concurrency: "unbounded", discard: true })
      )
      const queued = yield* poll(write.stats, (s) => s.pending === 2)
      assert.strictEqual(queued.pending, 2)
      yield* Fiber.join(fiber)
    }).pipe(Effect.provide(fromEnv({
      DATABASE_URL: Redacted.value(databaseUrl),
      DATABASE_READ_URL: Redacted.value(otherHostName()),
      DATABASE_POOL_MAX: "2",
      DATABASE_READ_POOL_MAX: "4",
      DATABASE_STATEMENT_TIMEOUT: "1500 millis",
      DATABASE_LOCK_TIMEOUT: "2 seconds",
      DATABASE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT: "3 seconds",
      DATABASE_PREPARE: "false",
      DATABASE_PIPELINE_MAX_DEPTH: "1",
      DATABASE_APPLICATION_NAME: h.appName
    }))))

  it.live("a named pool reads its own prefixed variables (ANALYTICS_DATABASE_URL, …)", () =>
    Effect.gen(function*() {
      const analytics = yield* Analytics.Write
      // idle 1: the start-up check's connection, kept for the first caller.
      assert.deepStrictEqual(yield* analytics.stats, { pool: "analytics/write", idle: 1, used: 0, pending: 0, min: 0, max: 3, serverMax: 7 })
      assert.isAbove(yield* backendPid(analytics), 0)
      assert.strictEqual(yield* sessionCount, 1)
    }).pipe(Effect.provide(
      Analytics.layerConfig().pipe(
        Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({
          env: {
            // The unprefixed variables belong to the default pools and must not be picked up.
            DATABASE_URL: "postgres://nobody:nothing@127.0.0.1:1/none",
            DATABASE_POOL_MAX: "9",
            ANALYTICS_DATABASE_URL: Redacted.value(databaseUrl),
            ANALYTICS_DATABASE_POOL_MAX: "3",
            ANALYTICS_DATABASE_APPLICATION_NAME: h.appName
          }
        }))),
        Layer.provide(quiet)
      )
    )))

  it.live("missing or malformed variables fail the Layer with a ConfigError", () =>
    Effect.gen(function*() {
      const missing = yield* Effect.flip(Layer.build(fromEnv({ DATABASE_POOL_MAX: "2" })))
      assert.strictEqual(missing._tag, "ConfigError")
      const malformed = yield* Effect.flip(Layer.build(fromEnv({ DATABASE_URL: Redacted.value(databaseUrl), DATABASE_POOL_MAX: "many" })))
      assert.strictEqual(malformed._tag, "ConfigError")
    }))

  it.live("settings no pool can have fail the Layer with InvalidInput naming them, before anything connects", () =>
    Effect.gen(function*() {
      const invalid: ReadonlyArray<readonly [string, Partial<DbPool.Config>]> = [
        // Every connection born expired: a storm of connects (91 backends in 3 s) and a Layer that never built.
        ["maxLifetime", { maxLifetime: 0 }],
        ["maxLifetime", { maxLifetime: Number.NaN }],
        // NaN compared false with every size: no upper bound at all.
        ["maxSize", { maxSize: Number.NaN }],
        ["maxSize", { maxSize: 0 }],
        ["maxSize", { maxSize: 1.5 }],
        ["minSize", { minSize: -2 }],
        ["minSize", { minSize: 5, maxSize: 2 }],
        ["readMinSize", { readMinSize: 3, readMaxSize: 2 }],
        ["idleTimeout", { idleTimeout: -1 }],
        // -5 s became statement_timeout 0: no timeout at all.
        ["statementTimeout", { statementTimeout: "-5 seconds" }],
        ["acquireTimeout", { acquireTimeout: 0 }],
        // Untyped callers: a defect before.
        ["acquireTimeout", { acquireTimeout: "abc" as Duration.Input }],
        ["pipelining.maxDepth", { pipelining: { maxDepth: 0 } }]
      ]
      for (const [name, config] of invalid) {
        const error = yield* Effect.flip(Layer.build(h.pools({ ...config, minSize: config.minSize ?? 1 })))
        assert.strictEqual(error._tag, "InvalidInput", name)
        assert.include(error.message, name)
      }
      const env = yield* Effect.flip(Layer.build(fromEnv({ DATABASE_URL: Redacted.value(databaseUrl), DATABASE_POOL_MAX: "-1" })))
      assert.strictEqual(env._tag, "InvalidInput")
      assert.strictEqual(yield* sessionCount, 0, "nothing connected")
      // What stays valid: a minimum alone raises the default maximum (the read pool's defaults to maxSize); a zero
      // statement timeout is the server's "none".
      const built = yield* Layer.build(h.pools({ minSize: 12, maxSize: undefined, readMinSize: 6, statementTimeout: 0 }))
      assert.strictEqual((yield* Context.get(built, WritePool).stats).max, 12)
      assert.strictEqual((yield* Context.get(built, ReadPool).stats).max, 10)
    }).pipe(Effect.scoped))
})

// ---------------------------------------------------------------------------
// postgres.js hazards
// ---------------------------------------------------------------------------

describe("postgres.js hazards do not reach users", () => {
  it.live("a query in flight on a dying connection fails with ConnectionLost; the pool serves afterwards", () =>
    withPools(
      { maxSize: 1 },
      Effect.gen(function*() {
        const pool = yield* WritePool
        const pid = yield* backendPid(pool)
        const fiber = yield* Effect.forkChild(Effect.flip(pool.run(sql`SELECT pg_sleep(30)`)))
        yield* waitForState(pid, "active", "pg_sleep")
        yield* h.observe("SELECT pg_terminate_backend($1)", [pid])
        const error = yield* Effect.timeoutOption(Fiber.join(fiber), "5 seconds")
        assert.isTrue(Option.isSome(error), "the query settles")
        if (Option.isSome(error)) {
          assert.strictEqual(error.value._tag, "ConnectionLost")
          assert.include(error.value.message, "lost")
        }
        const next = yield* backendPid(pool)
        assert.notStrictEqual(next, pid)
        yield* noUncaught
      })
    ))

  it.live("a backend terminated inside pool.transaction: typed error, no uncaught TypeError, no hang, the pool serves", () =>
    withPools(
      { maxSize: 1 },
      Effect.gen(function*() {
        const pool = yield* WritePool
        // Terminated while idle in the transaction, between two statements.
        const between = yield* Deferred.make<number>()
        const proceed = yield* Deferred.make<void>()
        const fiber = yield* Effect.forkChild(Effect.flip(pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${11}`)
            yield* Deferred.succeed(between, conn.pid)
            yield* Deferred.await(proceed)
            yield* conn.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${12}`)
          })
        )))
        const pid = yield* Deferred.await(between)
        yield* terminate(pid)
        yield* Deferred.succeed(proceed, undefined)
        const error = yield* Effect.timeoutOption(Fiber.join(fiber), "5 seconds")
        assert.isTrue(Option.isSome(error), "the transaction settles")
        if (Option.isSome(error)) assert.strictEqual(error.value._tag, "ConnectionLost")
        yield* noUncaught

        // Terminated while a statement of the transaction runs.
        const pid2 = yield* backendPid(pool)
        assert.notStrictEqual(pid2, pid)
        const fiber2 = yield* Effect.forkChild(Effect.flip(pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${13}`)
            yield* conn.run(sql`SELECT pg_sleep(30)`)
          })
        )))
        yield* waitForState(pid2, "active", "pg_sleep")
        yield* h.observe("SELECT pg_terminate_backend($1)", [pid2])
        const error2 = yield* Effect.timeoutOption(Fiber.join(fiber2), "5 seconds")
        assert.isTrue(Option.isSome(error2), "the transaction settles")
        if (Option.isSome(error2)) assert.strictEqual(error2.value._tag, "ConnectionLost")

        // The pool serves transactions afterwards, on a new backend, outside any leftover transaction.
        const [row] = yield* pool.transaction((conn) => conn.run(sql`SELECT pg_backend_pid() AS pid`))
        assert.notInclude([pid, pid2], row?.["pid"])
        const probe = yield* insideTransaction(pool)
        assert.strictEqual(probe.pid, row?.["pid"])
        assert.isFalse(probe.inside)
        yield* noUncaught
      })
    ))

  it.live("a backend terminated between two statements of an interaction: ConnectionLost, not a silent new connection", () =>
    withPools(
      { maxSize: 1 },
      Effect.gen(function*() {
        const pool = yield* WritePool
        const between = yield* Deferred.make<number>()
        const proceed = yield* Deferred.make<void>()
        const interaction = yield* Effect.forkChild(Effect.flip(pool.interaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(sql`CREATE TEMP TABLE scratch_between (x int)`)
            yield* Deferred.succeed(between, conn.pid)
            yield* Deferred.await(proceed)
            // Relies on the temp table: on a fresh connection it would not exist, on a dead one nothing may run.
            return yield* conn.run(sql`INSERT INTO scratch_between VALUES (1) RETURNING pg_backend_pid() AS pid`)
          })
        )))
        const pid = yield* Deferred.await(between)
        // A caller queued behind the doomed connection (postgres.js strands queued reserve() calls here).
        const waiter = yield* Effect.forkChild(backendPid(pool))
        yield* eventually("the waiter to queue", pool.stats, (s) => s.pending === 1)
        yield* terminate(pid)
        yield* Deferred.succeed(proceed, undefined)
        const error = yield* Effect.timeoutOption(Fiber.join(interaction), "5 seconds")
        assert.isTrue(Option.isSome(error), "the interaction settles")
        if (Option.isSome(error)) assert.strictEqual(error.value._tag, "ConnectionLost")
        const waiterPid = yield* Effect.timeoutOption(Fiber.join(waiter), "5 seconds")
        assert.isTrue(Option.isSome(waiterPid), "the queued caller is served")
        if (Option.isSome(waiterPid)) assert.notStrictEqual(waiterPid.value, pid)
        // And afterwards the pool serves function interactions on live connections.
        const pids = yield* pool.interaction((conn) =>
          Effect.map(conn.run(sql`SELECT pg_backend_pid() AS pid`), (rows) => ({ handle: conn.pid, server: pidOf(rows) }))
        )
        assert.strictEqual(pids.handle, pids.server)
        assert.notStrictEqual(pids.server, pid)
        yield* noUncaught
      })
    ))

  it.live("a partial transaction whose backend was terminated: ConnectionLost on the next step, its scope closes", () =>
    withPools(
      { maxSize: 1 },
      Effect.gen(function*() {
        const pool = yield* WritePool
        const outcome = yield* Effect.scoped(Effect.gen(function*() {
          const tx = yield* pool.partialTransaction()
          yield* tx.run(sql`SELECT * FROM test_values WHERE id = ${21} FOR UPDATE`)
          yield* terminate(tx.pid)
          const step = yield* Effect.flip(tx.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${21}`))
          const commit = yield* Effect.flip(tx.commit)
          return { pid: tx.pid, step: step._tag, commit: commit._tag }
        })).pipe(Effect.timeoutOption("5 seconds"))
        assert.isTrue(Option.isSome(outcome), "the partial transaction settles and its scope closes")
        if (Option.isSome(outcome)) {
          assert.strictEqual(outcome.value.step, "ConnectionLost")
          assert.strictEqual(outcome.value.commit, "ConnectionLost")
          assert.notStrictEqual(yield* backendPid(pool), outcome.value.pid)
        }
        yield* noUncaught
      })
    ))

  it.live("releasing the Layer while connections are dead, doubtful or freshly replaced is bounded", () =>
    withPools(
      { minSize: 2, readMinSize: 2, maxSize: 3 },
      Effect.gen(function*() {
        const pool = yield* WritePool
        const read = yield* ReadPool
        yield* eventually("the minSize connections", Effect.all([pool.stats, read.stats]), ([w, r]) => w.idle === 2 && r.idle === 2)
        // Every connection terminated, nothing used since: release must not wait on any of them (nor on the
        // replacements the pool opens at once).
        const terminated = (yield* h.sessions).map((s) => s.pid)
        yield* h.observe("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [h.appName])
        yield* eventually("the terminated backends to exit", h.sessions, (ss) => !ss.some((s) => terminated.includes(s.pid)))
        // An interrupted statement, whose connection may be retired.
        yield* Effect.timeoutOption(pool.run(sql`SELECT pg_sleep(5)`), "200 millis")
        assert.isAbove(yield* backendPid(read), 0)
        yield* noUncaught
      })
    ))
})

// ---------------------------------------------------------------------------
// connect failures
// ---------------------------------------------------------------------------

/** A local TCP port with nothing listening on it. */
const closedPort = Effect.callback<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

/** A listener that accepts connections and never says a word, so that connecting hangs. */
const deafListener = Effect.acquireRelease(
  Effect.callback<{ readonly server: Net.Server; readonly sockets: Set<Net.Socket>; readonly port: number }>((resume) => {
    const sockets = new Set<Net.Socket>()
    const server = Net.createServer((socket) => {
      sockets.add(socket)
      socket.on("error", () => {})
      socket.on("close", () => sockets.delete(socket))
    })
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      resume(Effect.succeed({ server, sockets, port }))
    })
  }),
  ({ server, sockets }) =>
    Effect.callback<void>((resume) => {
      for (const socket of sockets) socket.destroy()
      server.close(() => resume(Effect.void))
    })
)

const withPort = (port: number, password?: string): Redacted.Redacted<string> => {
  const url = new URL(Redacted.value(databaseUrl))
  url.port = String(port)
  if (password !== undefined) url.password = password
  return Redacted.make(url.toString())
}

/** Everything a user might log about an error. */
const renderings = (error: unknown): ReadonlyArray<string> => [
  String(error),
  JSON.stringify(error),
  error instanceof Error ? error.message : "",
  error instanceof Error ? error.stack ?? "" : ""
]

/**
 * A TCP proxy in front of the test server that can fail like a network or a
 * server does: refuse connections (server down), or cut a connection at the
 * first query the client sends after authenticating (a connection dying while
 * it is being opened).
 */
interface FaultyProxy {
  readonly port: number
  down: boolean
  cutAtFirstQuery: "reset" | "close" | undefined
  cuts: number
}

const faultyProxy = (upstreamPort: number) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly proxy: FaultyProxy; readonly server: Net.Server; readonly sockets: Set<Net.Socket> }>((resume) => {
      const sockets = new Set<Net.Socket>()
      const proxy: FaultyProxy = { port: 0, down: false, cutAtFirstQuery: undefined, cuts: 0 }
      const server = Net.createServer((client) => {
        client.on("error", () => {})
        if (proxy.down) {
          client.resetAndDestroy()
          return
        }
        const upstream = Net.connect(upstreamPort, "127.0.0.1")
        upstream.on("error", () => {})
        sockets.add(client)
        sockets.add(upstream)
        client.on("close", () => {
          sockets.delete(client)
          upstream.destroy()
        })
        upstream.on("close", () => {
          sockets.delete(upstream)
          client.destroy()
        })
        upstream.on("data", (data) => client.write(data))
        client.on("data", (data) => {
          // The startup message begins with a length, authentication messages with 'p'; the first
          // ordinary message is a Query ('Q') or a Parse ('P').
          const cut = proxy.cutAtFirstQuery
          if (cut !== undefined && (data[0] === 0x51 || data[0] === 0x50)) {
            proxy.cutAtFirstQuery = undefined
            proxy.cuts++
            if (cut === "reset") client.resetAndDestroy()
            else client.destroy()
            upstream.destroy()
            return
          }
          upstream.write(data)
        })
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        // The proxy's port is known only once it listens.
        ;(proxy as { port: number }).port = typeof address === "object" && address !== null ? address.port : 0
        resume(Effect.succeed({ proxy, server, sockets }))
      })
    }),
    ({ server, sockets }) =>
      Effect.callback<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ proxy }) => proxy))

const serverPort = Number(new URL(Redacted.value(databaseUrl)).port)

describe("connections that die while being opened", () => {
  for (const cut of ["reset", "close"] as const) {
    it.live(`a connection cut (${cut}) right after authenticating: typed outcome, no unhandled rejection, the pool serves`, () =>
      Effect.gen(function*() {
        const proxy = yield* faultyProxy(serverPort)
        proxy.cutAtFirstQuery = cut
        yield* withPools(
          { url: withPort(proxy.port), maxSize: 1 },
          Effect.gen(function*() {
            const pool = yield* WritePool
            const first = yield* Effect.timeoutOption(Effect.exit(backendPid(pool)), "5 seconds")
            assert.isTrue(Option.isSome(first), "the first statement settles")
            assert.strictEqual(proxy.cuts, 1)
            if (Option.isSome(first) && Exit.isFailure(first.value)) {
              const error = yield* Effect.flip(first.value)
              assert.include(["ConnectFailed", "ConnectionLost"], error._tag)
            }
            // The handle's pid is the backend the statements run on.
            const pids = yield* pool.interaction((conn) =>
              Effect.map(conn.run(sql`SELECT pg_backend_pid() AS pid`), (rows) => ({ handle: conn.pid, server: pidOf(rows) }))
            )
            assert.strictEqual(pids.handle, pids.server)
            assert.deepStrictEqual((yield* h.sessions).map((s) => s.pid), [pids.server])
            yield* noUncaught
          })
        )
      }))
  }

  it.live("while the server is unreachable calls fail fast with ConnectFailed; once it is back the pool connects again", () =>
    Effect.gen(function*() {
      const proxy = yield* faultyProxy(serverPort)
      proxy.down = true
      yield* withPools(
        { url: withPort(proxy.port), minSize: 1, maxSize: 2, readMinSize: 0 },
        Effect.gen(function*() {
          const pool = yield* WritePool
          for (let i = 0; i < 3; i++) {
            const started = Date.now()
            const error = yield* Effect.flip(pool.run(sql`SELECT 1`))
            assert.strictEqual(error._tag, "ConnectFailed")
            assert.isBelow(Date.now() - started, 1500, "fails fast, not after acquireTimeout")
          }
          proxy.down = false
          const rows = yield* Effect.forEach([1, 2], () => pool.run(sql`SELECT 1 AS one, pg_sleep(0.05)`), {
            concurrency: "unbounded"
          })
          assert.deepStrictEqual(rows.map((r) => r[0]?.["one"]), [1, 1])
          yield* eventually("minSize connections again", pool.stats, (s) => s.idle >= 1)
          yield* noUncaught
        })
      )
    }))
})

describe("connect failures", () => {
  it.live("by default a wrong password fails the Layer itself with ConnectFailed, before any query", () =>
    Effect.gen(function*() {
      const url = new URL(Redacted.value(databaseUrl))
      url.password = "Wr0ng-Secret-Pa55"
      const exit = yield* Effect.exit(Layer.build(DbPool.layer({ url: Redacted.make(url.toString()), applicationName: h.appName }).pipe(Layer.provide(quiet))).pipe(Effect.scoped))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? Option.getOrUndefined(Exit.findErrorOption(exit)) : undefined
      assert.strictEqual(error?._tag, "ConnectFailed")
      assert.strictEqual(error?._tag === "ConnectFailed" ? error.sqlState : undefined, "28P01")
      for (const text of renderings(error!)) assert.notInclude(text, "Wr0ng-Secret-Pa55")
    }))

  it.live("by default the Layer opens one write connection when built (the check) and keeps it for the first caller", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const read = yield* ReadPool
      assert.strictEqual(yield* h.sessions.pipe(Effect.map((s) => s.length)), 1)
      assert.deepInclude(yield* pool.stats, { idle: 1, used: 0 })
      assert.deepInclude(yield* read.stats, { idle: 0, used: 0 })
      const before = (yield* h.sessions)[0]?.pid
      const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid`)
      assert.strictEqual(Number(row?.["pid"]), before)
    }).pipe(Effect.provide(DbPool.layer({ url: databaseUrl, applicationName: h.appName }).pipe(Layer.provide(quiet)))))

  it.live("with minSize, the start-up check (a caller arriving while the pool fills) takes one of those connections, not one more", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* Effect.sleep("300 millis")
      assert.deepInclude(yield* poll(pool.stats, (s) => s.idle === 2), { idle: 2, used: 0 })
      assert.strictEqual((yield* h.sessions).length, 2)
    }).pipe(Effect.provide(h.pools({ minSize: 2, maxSize: 8, checkOnStart: true }))))

  it.live("a wrong password fails with ConnectFailed that names neither the password nor the URL", () => {
    const url = new URL(Redacted.value(databaseUrl))
    const realPassword = decodeURIComponent(url.password)
    const wrongPassword = "Wr0ng-Secret-Pa55"
    url.password = wrongPassword
    const badUrl = url.toString()
    return Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* Effect.flip(pool.run(sql`SELECT 1`))
      assert.strictEqual(error._tag, "ConnectFailed")
      if (error._tag !== "ConnectFailed") return
      assert.strictEqual(error.sqlState, "28P01")
      assert.strictEqual(error.server, `127.0.0.1:${url.port}/postgres`)
      for (const text of renderings(error)) {
        assert.notInclude(text, wrongPassword)
        assert.notInclude(text, realPassword)
        assert.notInclude(text, badUrl)
        assert.notInclude(text, "postgres://")
      }
      // No half-open connection is left behind, and the failure repeats rather than hangs.
      const again = yield* Effect.flip(pool.transaction((conn) => conn.run(sql`SELECT 1`)))
      assert.strictEqual(again._tag, "ConnectFailed")
    }).pipe(Effect.provide(h.pools({ url: Redacted.make(badUrl) })))
  })

  it.live("a port where nothing listens fails quickly with ConnectFailed", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const url = withPort(port)
      const started = Date.now()
      const error = yield* Effect.flip(Effect.gen(function*() {
        const pool = yield* WritePool
        return yield* pool.run(sql`SELECT 1`)
      })).pipe(
        Effect.provide(h.pools({ url, connectTimeout: "1 second" }))
      )
      assert.isBelow(Date.now() - started, 1500)
      assert.strictEqual(error._tag, "ConnectFailed")
      if (error._tag === "ConnectFailed") assert.strictEqual(error.server, `127.0.0.1:${port}/postgres`)
      for (const text of renderings(error)) assert.notInclude(text, Redacted.value(url))
    }))

  it.live("a server that accepts but never answers fails with ConnectFailed after connectTimeout", () =>
    Effect.gen(function*() {
      const deaf = yield* deafListener
      const started = Date.now()
      const error = yield* Effect.flip(Effect.gen(function*() {
        const pool = yield* WritePool
        return yield* pool.run(sql`SELECT 1`)
      })).pipe(
        Effect.provide(h.pools({ url: withPort(deaf.port), connectTimeout: "1 second", acquireTimeout: "10 seconds" }))
      )
      const elapsed = Date.now() - started
      assert.strictEqual(error._tag, "ConnectFailed")
      assert.isAtLeast(elapsed, 900)
      assert.isBelow(elapsed, 3000)
    }))

  it.live("acquireTimeout bounds the wait even while a connection is slow to open; releasing the Layer is bounded too", () =>
    Effect.gen(function*() {
      const deaf = yield* deafListener
      const started = Date.now()
      const error = yield* withPools(
        { url: withPort(deaf.port), connectTimeout: "1 second", acquireTimeout: "300 millis" },
        Effect.flip(Effect.gen(function*() {
          const pool = yield* WritePool
          return yield* pool.run(sql`SELECT 1`)
        }))
      )
      assert.strictEqual(error._tag, "PoolTimeout")
      assert.isBelow(Date.now() - started, 4000)
    }))
})
