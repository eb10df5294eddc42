import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { DbPool, sql, Statement, WritePool } from "effect-dbpool"
import { inject } from "vitest"
import { harness } from "./support.ts"

const h = harness("hostile")
const password = new URL(inject("databaseUrl")).password

/** Nothing about the server's secret may leak through an error. */
const assertNoSecret = (error: unknown) => {
  const text = `${String(error)} ${JSON.stringify(error)} ${error instanceof Error ? error.stack : ""}`
  assert.notInclude(text, password)
  assert.notInclude(text, inject("databaseUrl"))
}

describe("hostile input", () => {
  it.live("a 64 MB parameter round-trips and the pool stays healthy", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const big = "x".repeat(64 * 1024 * 1024)
      const [row] = yield* pool.run(sql`SELECT length(${big}::text) AS n, md5(${big}::text) = md5(repeat('x', ${big.length})) AS same`)
      assert.deepStrictEqual(row, { n: big.length, same: true })
      assert.deepStrictEqual(yield* pool.run(sql`SELECT 1 AS ok`), [{ ok: 1 }])
    }).pipe(Effect.provide(h.pools())))

  it.live("lone UTF-16 surrogates are sent as U+FFFD, as in the dry run; NUL is a typed error", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const statement = sql`SELECT ${"a\uD800b"}::text AS v`
      assert.deepStrictEqual(yield* pool.run(statement), [{ v: "a\uFFFDb" }])
      assert.deepStrictEqual(yield* pool.run(Statement.text(Statement.dryRun(statement))), [{ v: "a\uFFFDb" }])
      const nul = yield* Effect.flip(pool.run(sql`SELECT ${"a\u0000b"}::text AS v`))
      assert.include(["DatabaseError", "InvalidInput"], nul._tag)
      assert.deepStrictEqual(yield* pool.run(sql`SELECT 1 AS ok`), [{ ok: 1 }])
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("values the driver would turn into '[object …]' are refused with InvalidInput", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      for (const value of [new Map([[1, 2]]), new Set([1]), new (class Point {})(), Symbol("s"), () => 1]) {
        // Deliberately outside the Value type: what a JavaScript caller could pass.
        const error = yield* Effect.flip(pool.run(sql`SELECT ${value as never} AS v`))
        assert.strictEqual(error._tag, "InvalidInput")
      }
      const wrongType = yield* Effect.flip(pool.run(sql`SELECT ${"not a number"}::int AS v`))
      assert.strictEqual(wrongType._tag, "DatabaseError")
      assert.strictEqual("sqlState" in wrongType ? wrongType.sqlState : "", "22P02")
    }).pipe(Effect.provide(h.pools())))

  it.live("an invalid DSN, a wrong password and an unreachable port give typed errors without secrets", () =>
    Effect.gen(function*() {
      const u = new URL(inject("databaseUrl"))
      const urls = [
        "not a url at all",
        `postgres://${u.username}:${password}-wrong@${u.host}${u.pathname}`,
        `postgres://${u.username}:${password}@127.0.0.1:1${u.pathname}`
      ]
      for (const url of urls) {
        const error = yield* Effect.flip(
          Effect.gen(function*() {
            const pool = yield* WritePool
            return yield* pool.run(sql`SELECT 1`)
          }).pipe(
            Effect.provide(
              // The start-up check fails the Layer itself, with the same typed error.
              DbPool.layer({ url: Redacted.make(url), connectTimeout: "2 seconds", acquireTimeout: "3 seconds", applicationName: h.appName })
            )
          )
        )
        assert.include(["ConnectFailed", "PoolTimeout"], error._tag)
        assertNoSecret(error)
      }
    }))

  it.live("SQL injection through values, identifiers and dry-run output is inert", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const evil = "'); DROP TABLE test_values; --"
      const statement = sql`SELECT ${evil}::text AS v, 1 AS ${sql.id(`x"; DROP TABLE test_values; --`)}`
      const bound = yield* pool.run(statement)
      const inlined = yield* pool.run(Statement.text(Statement.dryRun(statement)))
      assert.deepStrictEqual(inlined, bound)
      assert.strictEqual(bound[0]?.["v"], evil)
      const [count] = yield* pool.run(sql`SELECT count(*)::int AS n FROM test_values`)
      assert.isAbove(Number(count?.["n"]), 0)
    }).pipe(Effect.provide(h.pools())))
})
