import { EmbeddedPostgres, layer as postgresLayer } from "@effect-dbpool/embedded-postgres"
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Redacted, Scope } from "effect"
import { DbPool, sql, WritePool } from "effect-dbpool"
import * as Proxy from "./faults/proxy.ts"
import { databaseUrl, harness } from "./support.ts"

const h = harness("faults")

const unhandled: Array<unknown> = []
process.on("unhandledRejection", (e) => unhandled.push(e))
process.on("uncaughtException", (e) => unhandled.push(e))

const throughProxy = (port: number) => {
  const u = new URL(Redacted.value(databaseUrl))
  u.port = String(port)
  return Redacted.make(u.toString())
}

/** A proxy (closed with the scope) in front of the test server. */
const proxyToServer = Effect.suspend(() => Proxy.make(Number(new URL(Redacted.value(databaseUrl)).port)))

describe("faults", () => {
  it.live("releasing the Layer under a running statement while the server refuses new connections: no unhandled rejection", () =>
    Effect.gen(function*() {
      const proxy = yield* proxyToServer
      const scope = yield* Scope.make()
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      const pools = DbPool.layer({ url: throughProxy(proxy.port), maxSize: 1, applicationName: h.appName })
      const pool = Context.get(yield* Layer.buildWithScope(pools, scope), WritePool)
      const sleeper = yield* Effect.forkDetach(pool.run(sql`SELECT pg_sleep(5)`))
      yield* Effect.repeat(h.sessions, { until: (ss) => ss.some((s) => s.state === "active" && s.query.includes("pg_sleep(5)")) })
      // The cancel request the release sends for the running statement cannot connect.
      proxy.refuseNew()
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual((yield* Fiber.await(sleeper))._tag, "Failure")
      // A rejected cancel request surfaces (if unhandled) on a later turn of the event loop.
      yield* Effect.sleep("300 millis")
      assert.deepStrictEqual(unhandled, [])
    }))

  it.live("an interruption storm leaves nothing running on the server and the pool whole", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      for (let round = 0; round < 10; round++) {
        const fibers = yield* Effect.forEach(
          Array.from({ length: 200 }, (_, i) => i),
          (i) =>
            Effect.forkChild(
              i % 2 === 0
                ? pool.run(sql`SELECT pg_sleep(5)`)
                : pool.transaction((conn) => conn.run(sql`SELECT pg_sleep(5)`))
            )
        )
        yield* Effect.sleep(`${5 + round * 3} millis`)
        yield* Effect.forEach(fibers, (f) => Fiber.interrupt(f), { concurrency: "unbounded", discard: true })
      }
      // Nothing of ours still sleeping, nothing idle in transaction, and the pool answers at once.
      let running: ReadonlyArray<unknown> = []
      for (let i = 0; i < 50; i++) {
        running = (yield* h.sessions).filter((s) => s.state !== "idle")
        if (running.length === 0) break
        yield* Effect.sleep("100 millis")
      }
      assert.deepStrictEqual(running, [])
      assert.deepStrictEqual(yield* pool.run(sql`SELECT 1 AS ok`), [{ ok: 1 }])
      const stats = yield* pool.stats
      assert.strictEqual(stats.used, 0)
      assert.strictEqual(stats.pending, 0)
      assert.isAtMost((yield* h.sessions).length, 4 + 4)
      assert.deepStrictEqual(unhandled, [])
    }).pipe(Effect.provide(h.pools({ maxSize: 4 }))), 60_000)

  it.live("added network latency slows but breaks nothing; a blackhole stalls until it lifts", () =>
    Effect.gen(function*() {
      const proxy = yield* proxyToServer
      const pools = DbPool.layer({ url: throughProxy(proxy.port), maxSize: 2, applicationName: h.appName })
      yield* Effect.gen(function*() {
        const pool = yield* WritePool
        proxy.latencyMs = 50
        const t0 = Date.now()
        assert.deepStrictEqual(yield* pool.run(sql`SELECT 1 AS ok`), [{ ok: 1 }])
        assert.isAtLeast(Date.now() - t0, 100) // a round trip is two delayed hops
        proxy.latencyMs = 0
        proxy.blackhole = true
        const stalled = yield* Effect.forkChild(pool.run(sql`SELECT 2 AS ok`))
        yield* Effect.sleep("500 millis")
        assert.isUndefined(stalled.pollUnsafe())
        proxy.blackhole = false
        assert.deepStrictEqual(yield* Fiber.join(stalled), [{ ok: 2 }])
      }).pipe(Effect.provide(pools))
    }).pipe(Effect.scoped))

  it.live("a BEGIN never answered: an interrupted transaction gives up on it after the grace period, and the connection is retired rather than waited on again", () =>
    Effect.gen(function*() {
      const proxy = yield* proxyToServer
      const pools = DbPool.layer({ url: throughProxy(proxy.port), maxSize: 1, applicationName: h.appName })
      yield* Effect.gen(function*() {
        const pool = yield* WritePool
        const seen = yield* pool.interaction((conn) =>
          Effect.gen(function*() {
            proxy.blackhole = true
            // BEGIN goes into the blackhole; the statement waits for its answer.
            const tx = yield* Effect.forkChild(conn.transaction((t) => t.run(sql`SELECT 1`)))
            yield* Effect.sleep("200 millis")
            const t0 = Date.now()
            yield* Fiber.interrupt(tx) // its rollback waits for BEGIN's answer, boundedly
            const gaveUpAfter = Date.now() - t0
            const t1 = Date.now()
            const next = yield* Effect.flip(conn.run(sql`SELECT 2`))
            return { gaveUpAfter, next, failedAfter: Date.now() - t1 }
          })
        )
        proxy.blackhole = false
        assert.isAtLeast(seen.gaveUpAfter, 4000)
        assert.isBelow(seen.gaveUpAfter, 10_000)
        // The interaction's next statement fails at once: it does not wait on the BEGIN that was given up on.
        assert.strictEqual(seen.next._tag, "ConnectionLost")
        assert.isBelow(seen.failedAfter, 1000)
        // The pool serves again, on a new connection.
        assert.deepStrictEqual(yield* pool.run(sql`SELECT 3 AS ok`), [{ ok: 3 }])
        assert.deepStrictEqual(unhandled, [])
      }).pipe(Effect.provide(pools))
    }).pipe(Effect.scoped), 30_000)

  it.live("a connect to a blackholed server fails with ConnectFailed after connectTimeout", () =>
    Effect.gen(function*() {
      const proxy = yield* proxyToServer
      proxy.blackhole = true
      const t0 = Date.now()
      const error = yield* Effect.flip(
        Effect.gen(function*() {
          const pool = yield* WritePool
          return yield* pool.run(sql`SELECT 1`)
        }).pipe(
          Effect.provide(
            DbPool.layer({ url: throughProxy(proxy.port), connectTimeout: "1 second", acquireTimeout: "5 seconds", applicationName: h.appName })
          )
        )
      )
      assert.strictEqual(error._tag, "ConnectFailed")
      assert.isBelow(Date.now() - t0, 4000)
      proxy.blackhole = false
    }).pipe(Effect.scoped))

  it.live("a server restart: typed errors while it is down, the pool serves again once it is back", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      // Closed below; these finalizers only matter when an assertion fails first (no server left running).
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      const context = yield* Layer.buildWithScope(postgresLayer({ alwaysEmbedded: true }), scope)
      const server = Context.get(context, EmbeddedPostgres)
      const poolScope = yield* Scope.make()
      yield* Effect.addFinalizer(() => Scope.close(poolScope, Exit.void))
      const pools = yield* Layer.buildWithScope(
        DbPool.layer({ url: server.url, maxSize: 2, connectTimeout: "1 second", acquireTimeout: "2 seconds", applicationName: "dbpool-test-restart" }),
        poolScope
      )
      const pool = Context.get(pools, WritePool)
      assert.deepStrictEqual(yield* pool.run(sql`SELECT 1 AS ok`), [{ ok: 1 }])
      yield* server.stop
      const down = yield* Effect.flip(pool.run(sql`SELECT 1 AS ok`))
      assert.include(["ConnectionLost", "ConnectFailed"], down._tag)
      const stillDown = yield* Effect.flip(pool.run(sql`SELECT 1 AS ok`))
      assert.strictEqual(stillDown._tag, "ConnectFailed")
      yield* server.start
      assert.deepStrictEqual(yield* pool.run(sql`SELECT 1 AS ok`), [{ ok: 1 }])
      yield* Scope.close(poolScope, Exit.void)
      yield* Scope.close(scope, Exit.void)
      assert.deepStrictEqual(unhandled, [])
    }).pipe(Effect.scoped), 60_000)
})
