/**
 * Rows as a Stream through a cursor: memory stays flat over a million rows,
 * ending or interrupting the stream closes the cursor and returns the
 * connection clean (seen in pg_stat_activity), and it works inside
 * transactions and partial transactions.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Schema, Stream } from "effect"
import { sql, Statement, WritePool } from "effect-dbpool"
import { failOnEscapes, harness, outsideTransaction, poll } from "./support.ts"

const h = harness("stream")
failOnEscapes()

const million = sql`SELECT g AS id, repeat('x', 100) AS pad FROM generate_series(1, 1000000) g`

describe("pool.stream", () => {
  it.live("a million rows stream with bounded memory", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      globalThis.gc?.()
      const before = process.memoryUsage().rss
      let peak = before
      let count = 0
      let sum = 0
      yield* pool.stream(million, { batchSize: 2000 }).pipe(
        Stream.runForEach((row) =>
          Effect.sync(() => {
            count++
            sum += Number(row["id"])
            if ((count & 0x3fff) === 0) peak = Math.max(peak, process.memoryUsage().rss)
          })
        )
      )
      assert.strictEqual(count, 1_000_000)
      assert.strictEqual(sum, 500_000_500_000)
      const growthMb = (peak - before) / 2 ** 20
      // Buffered, these rows take several hundred MB of heap; streamed, a few batches of 2000 at a time.
      assert.isBelow(growthMb, 120, `RSS grew by ${growthMb.toFixed(0)} MB while streaming`)
      console.log(`streamed 1,000,000 rows; RSS grew by ${growthMb.toFixed(1)} MB`)
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))), 120_000)

  it.live("taking a few rows closes the cursor: the connection goes back idle and serves the next caller", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const first = yield* pool.stream(million, { batchSize: 100 }).pipe(Stream.take(5), Stream.runCollect)
      assert.deepStrictEqual(first.map((r) => r["id"]), [1, 2, 3, 4, 5])
      // The Sync that closes the cursor is on its way when the stream ends; the server is idle a moment later.
      const sessions = yield* poll(h.sessions, (s) => s[0]?.state === "idle", 2000, 10)
      assert.strictEqual(sessions.length, 1)
      assert.strictEqual(sessions[0]?.state, "idle")
      assert.deepInclude(yield* pool.stats, { idle: 1, used: 0 })
      const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid`)
      assert.strictEqual(Number(row?.["pid"]), sessions[0]?.pid)
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("interrupting a stream whose first batch is still running cancels it on the server", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const fiber = yield* Effect.forkChild(Stream.runDrain(pool.stream(sql`SELECT pg_sleep(30), 1 AS x`)))
      const running = yield* poll(h.sessions, (s) => s.some((x) => x.state === "active" && x.query.includes("pg_sleep")), 3000, 20)
      assert.isTrue(running.some((x) => x.state === "active" && x.query.includes("pg_sleep")), "the first batch runs on the server")
      yield* Fiber.interrupt(fiber)
      const after = yield* poll(h.sessions, (s) => s.every((x) => x.state !== "active"), 3000, 20)
      assert.isTrue(after.every((x) => x.state !== "active"), JSON.stringify(after))
      const [row] = yield* pool.run(sql`SELECT 1 AS one`)
      assert.strictEqual(row?.["one"], 1)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("rows decode with a Schema; a row that does not match fails the stream with RowDecodeError", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const Row = Schema.Struct({ id: Schema.Number })
      const rows = yield* pool.stream(sql`SELECT g AS id FROM generate_series(1, 2500) g`, Row, { batchSize: 1000 }).pipe(Stream.runCollect)
      assert.strictEqual(rows.length, 2500)
      assert.strictEqual(rows[2499]?.id, 2500)
      const bad = yield* Effect.flip(Stream.runDrain(pool.stream(sql`SELECT 'x' AS id`, Row)))
      assert.strictEqual(bad._tag, "RowDecodeError")
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("a statement failing mid-stream is a typed error after the rows before it; the connection stays usable", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      let seen = 0
      const error = yield* Effect.flip(
        pool.stream(sql`SELECT 1 / (3000 - g) AS x FROM generate_series(1, 5000) g`, { batchSize: 500 }).pipe(
          Stream.runForEach(() => Effect.sync(() => void seen++))
        )
      )
      assert.strictEqual(error._tag, "DatabaseError")
      assert.strictEqual(error._tag === "DatabaseError" ? error.sqlState : "", "22012")
      assert.isAtLeast(seen, 2500)
      const rows = yield* pool.run(sql`SELECT g FROM generate_series(1, 3) g`)
      assert.deepStrictEqual(rows.map((r) => r["g"]), [1, 2, 3])
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("transaction control is refused before a connection is taken", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* Effect.flip(Stream.runDrain(pool.stream(Statement.text("BEGIN"))))
      assert.strictEqual(error._tag, "InvalidInput")
      assert.deepInclude(yield* pool.stats, { idle: 0, used: 0 })
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))
})

describe("conn.stream inside transactions", () => {
  it.live("a transaction streams its own uncommitted rows, and stopping early leaves the transaction usable", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const result = yield* pool.transaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`CREATE TEMP TABLE streamed ON COMMIT DROP AS SELECT g AS id FROM generate_series(1, 3000) g`)
          const firstTen = yield* conn.stream(sql`SELECT id FROM streamed ORDER BY id`, { batchSize: 100 }).pipe(Stream.take(10), Stream.runCollect)
          const [count] = yield* conn.run(sql`SELECT count(*)::int AS n FROM streamed`)
          return { firstTen: firstTen.map((r) => r["id"]), count: count?.["n"] }
        })
      )
      assert.deepStrictEqual(result.firstTen, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
      assert.strictEqual(result.count, 3000)
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("a partial transaction streams through tx.interaction, holding its lock meanwhile", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const n = yield* Effect.scoped(Effect.gen(function*() {
        const tx = yield* pool.partialTransaction()
        yield* tx.run(sql`SELECT id FROM test_values WHERE id = ${9511} FOR UPDATE`)
        const rows = yield* tx.interaction((conn) => conn.stream(sql`SELECT id FROM test_values WHERE id <= 1000`).pipe(Stream.runCount))
        const locks = yield* h.observe<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_locks WHERE pid = $1 AND locktype = 'transactionid'",
          [tx.pid]
        )
        assert.strictEqual(locks[0]?.n, 1)
        yield* tx.commit
        return rows
      }))
      assert.strictEqual(n, 1000)
    }).pipe(Effect.provide(h.pools({ maxSize: 2 }))))
})
