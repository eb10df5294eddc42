/**
 * What operators configure on every connection: server-side timeouts (and
 * per-transaction overrides), server settings, a password evaluated at every
 * connect, named prepared statements off, several hosts in the URL — checked
 * from the server (`SHOW`, `pg_stat_activity`, `pg_locks`,
 * `pg_prepared_statements`).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Redacted } from "effect"
import { DbError, sql, WritePool } from "effect-dbpool"
import * as Net from "node:net"
import { databaseUrl, failOnEscapes, harness, poll } from "./support.ts"

const h = harness("session-options")
failOnEscapes()

/** Rows this file locks: far from ids other files use. */
const ROW = 9411

const show = (name: string) =>
  Effect.gen(function*() {
    const pool = yield* WritePool
    const [row] = yield* pool.run(sql`SELECT current_setting(${name}) AS v`)
    return String(row?.["v"])
  })

describe("server-side timeouts", () => {
  it.live("statementTimeout bounds every statement as StatementTimeout, and survives a session reset", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      assert.strictEqual(yield* show("statement_timeout"), "150ms")
      const error = yield* Effect.flip(pool.run(sql`SELECT pg_sleep(2)`))
      assert.strictEqual(error._tag, "StatementTimeout")
      assert.strictEqual(error._tag === "StatementTimeout" ? error.sqlState : "", "57014")
      // A holder that changes it for its session gets it back at the next check-out (RESET ALL returns to startup values).
      yield* pool.interaction((conn) => conn.run(sql`SET statement_timeout = 0`))
      assert.strictEqual(yield* show("statement_timeout"), "150ms")
    }).pipe(Effect.provide(h.pools({ maxSize: 1, statementTimeout: "150 millis" }))))

  it.live("lockTimeout turns a long lock wait into LockNotAvailable", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* Effect.scoped(Effect.gen(function*() {
        const holder = yield* pool.partialTransaction()
        yield* holder.run(sql`SELECT id FROM test_values WHERE id = ${ROW} FOR UPDATE`)
        return yield* Effect.flip(pool.run(sql`SELECT id FROM test_values WHERE id = ${ROW} FOR UPDATE`))
      }))
      assert.strictEqual(error._tag, "LockNotAvailable")
    }).pipe(Effect.provide(h.pools({ maxSize: 2, lockTimeout: "100 millis" }))))

  it.live("idleInTransactionSessionTimeout ends a forgotten partial transaction on the server: lock freed, next step ConnectionLost", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* Effect.scoped(Effect.gen(function*() {
        const tx = yield* pool.partialTransaction()
        yield* tx.run(sql`SELECT id FROM test_values WHERE id = ${ROW} FOR UPDATE`)
        const locks = () => h.observe<{ n: number }>("SELECT count(*)::int AS n FROM pg_locks WHERE pid = $1 AND locktype = 'transactionid'", [tx.pid])
        assert.strictEqual((yield* locks())[0]?.n, 1)
        // Forgotten: the server ends the session after 200 ms idle in the transaction.
        const gone = yield* poll(h.observe("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [tx.pid]), (rows) => rows.length === 0, 5000, 50)
        assert.strictEqual(gone.length, 0, "the forgotten transaction's backend still exists")
        assert.strictEqual((yield* locks())[0]?.n, 0)
        const error = yield* Effect.flip(tx.run(sql`SELECT 1`))
        assert.strictEqual(error._tag, "ConnectionLost")
      }))
      // The pool serves on a new connection.
      const [row] = yield* pool.run(sql`SELECT 1 AS one`)
      assert.strictEqual(row?.["one"], 1)
    }).pipe(Effect.provide(h.pools({ maxSize: 1, idleInTransactionSessionTimeout: "200 millis" }))))

  it.live("per-transaction timeouts are SET LOCAL: they bind inside the transaction only", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* Effect.flip(pool.transaction((conn) => conn.run(sql`SELECT pg_sleep(2)`), { statementTimeout: "100 millis" }))
      assert.strictEqual(error._tag, "StatementTimeout")
      const inside = yield* pool.transaction((conn) => conn.run(sql`SELECT current_setting('lock_timeout') AS v`), { lockTimeout: "1 second" })
      assert.strictEqual(inside[0]?.["v"], "1s")
      assert.strictEqual(yield* show("statement_timeout"), "0")
      assert.strictEqual(yield* show("lock_timeout"), "0")
      // Partial transactions take them too.
      const partial = yield* Effect.scoped(Effect.gen(function*() {
        const tx = yield* pool.partialTransaction({ statementTimeout: "100 millis" })
        return yield* Effect.flip(tx.run(sql`SELECT pg_sleep(2)`))
      }))
      assert.strictEqual(partial._tag, "StatementTimeout")
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))
})

describe("connection settings", () => {
  it.live("serverSettings are sent at connect and are what RESET ALL returns to", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      assert.strictEqual(yield* show("TimeZone"), "Pacific/Auckland")
      assert.strictEqual(yield* show("dbpool.custom"), "on")
      yield* pool.interaction((conn) => conn.run(sql`SET TIME ZONE 'UTC'`))
      assert.strictEqual(yield* show("TimeZone"), "Pacific/Auckland")
    }).pipe(Effect.provide(h.pools({ maxSize: 1, serverSettings: { TimeZone: "Pacific/Auckland", "dbpool.custom": "on" } }))))

  it.live("a password Effect is evaluated at every connect; its failure is ConnectFailed without its message", () =>
    Effect.gen(function*() {
      const url = new URL(Redacted.value(databaseUrl))
      const password = decodeURIComponent(url.password)
      url.password = ""
      let evaluated = 0
      const rotating = Effect.sync(() => {
        evaluated++
        return Redacted.make(password)
      })
      yield* Effect.gen(function*() {
        const pool = yield* WritePool
        yield* Effect.forEach([1, 2, 3], () => pool.interaction((conn) => conn.run(sql`SELECT pg_sleep(0.05)`)), { concurrency: "unbounded" })
      }).pipe(Effect.provide(h.pools({ url: Redacted.make(url.toString()), password: rotating, maxSize: 3 })))
      assert.strictEqual(evaluated, 3)
      const failing = Effect.fail(new Error("vault says: token s3cr3t-t0ken expired"))
      const exit = yield* Effect.exit(Effect.gen(function*() {
        const pool = yield* WritePool
        return yield* pool.run(sql`SELECT 1`)
      }).pipe(Effect.provide(h.pools({ url: Redacted.make(url.toString()), password: failing }))))
      const error = Exit.isFailure(exit) ? Exit.findErrorOption(exit) : undefined
      assert.strictEqual(error?._tag === "Some" ? error.value._tag : undefined, "ConnectFailed")
      assert.notInclude(JSON.stringify(error), "s3cr3t-t0ken")
      assert.isTrue(error?._tag === "Some" && DbError.isRetryable(error.value))
    }))

  it.live("prepare: false sends unnamed statements (nothing in pg_prepared_statements), prepare: true names them", () =>
    Effect.gen(function*() {
      const prepared = (prepare: boolean) =>
        Effect.gen(function*() {
          const pool = yield* WritePool
          return yield* pool.interaction((conn) =>
            Effect.gen(function*() {
              yield* conn.run(sql`SELECT val1 FROM test_values WHERE id = ${1}`)
              yield* conn.run(sql`SELECT val1 FROM test_values WHERE id = ${2}`)
              const [row] = yield* conn.run(sql`SELECT count(*)::int AS n FROM pg_prepared_statements`)
              return Number(row?.["n"])
            })
          )
        }).pipe(Effect.provide(h.pools({ maxSize: 1, prepare })))
      assert.strictEqual(yield* prepared(false), 0)
      assert.isAtLeast(yield* prepared(true), 1)
    }))

  it.live("several hosts in the URL: a host that refuses is skipped", () =>
    Effect.gen(function*() {
      const closed = yield* Effect.promise(() =>
        new Promise<number>((resolve) => {
          const server = Net.createServer()
          server.listen(0, "127.0.0.1", () => {
            const address = server.address()
            server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 1))
          })
        })
      )
      const url = new URL(Redacted.value(databaseUrl))
      const multi = `postgres://${url.username}:${url.password}@127.0.0.1:${closed},127.0.0.1:${url.port}${url.pathname}?target_session_attrs=read-write`
      const rows = yield* Effect.gen(function*() {
        const pool = yield* WritePool
        return yield* pool.run(sql`SELECT inet_server_port() AS port`)
      }).pipe(Effect.provide(h.pools({ url: Redacted.make(multi) })))
      assert.strictEqual(Number(rows[0]?.["port"]), Number(url.port))
    }))
})

describe("the start-up check", () => {
  it.live("checkOnStart: false builds the Layer without connecting", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      assert.deepInclude(yield* pool.stats, { idle: 0, used: 0 })
      const fiber = yield* Effect.forkChild(Effect.flip(pool.run(sql`SELECT 1`)))
      const error = yield* Fiber.join(fiber)
      assert.strictEqual(error._tag, "ConnectFailed")
    }).pipe(Effect.provide(h.pools({ url: Redacted.make("postgres://nobody:nothing@127.0.0.1:1/none"), checkOnStart: false }))))
})
