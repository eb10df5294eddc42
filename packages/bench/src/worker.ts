/**
 * One client on one workload, in a process of its own so that its memory is
 * its own. Prints one JSON line: { ops, seconds, p50Ms, p99Ms, peakRssMb }.
 *
 *   node worker.ts <client> <workload> <concurrency> <poolSize> <durationMs> <warmupMs>
 *
 * The server URL comes in BENCH_DATABASE_URL.
 */
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Queue, Redacted, Stream } from "effect"
import { SqlClient } from "effect/sql"
import { DbPool, EffectSql, Notifications, sql as dbsql, WritePool } from "effect-dbpool"
import pg from "pg"
import pgListen from "pg-listen"
import postgres from "postgres"
import { percentile, randomId, runEffectLoad, runPromiseLoad, type Sample } from "./load.ts"

const [client, workload, concurrencyArg, poolArg, durationArg, warmupArg, slicesArg] = process.argv.slice(2)
/** The measured run is split into this many consecutive slices, each reported, so that slow-down over time shows. */
const slices = Math.max(1, Number(slicesArg ?? "1"))
const concurrency = Number(concurrencyArg)
const poolSize = Number(poolArg)
const durationMs = Number(durationArg)
const warmupMs = Number(warmupArg)
const url = process.env["BENCH_DATABASE_URL"] ?? ""
const rows = Number(process.env["BENCH_ROWS"] ?? "1000000")
const channel = "bench_notify"

let peakRss = process.memoryUsage().rss
const rssTimer = setInterval(() => {
  peakRss = Math.max(peakRss, process.memoryUsage().rss)
}, 25)

const pointText = "SELECT * FROM test_values WHERE id = $1"
const lockText = "SELECT * FROM test_values WHERE id = $1 FOR UPDATE"
const updateText = "UPDATE test_values SET val2 = val2 + 1 WHERE id = $1"

type Run = (ms: number) => Promise<Sample>

/** The operations through effect/sql's SqlClient (for @effect/sql-pg and for effect-dbpool's bridge alike). */
const sqlClientOps = (sql: SqlClient.SqlClient) =>
  workload === "point-select"
    ? () => sql`SELECT * FROM test_values WHERE id = ${randomId(rows)}`
    : workload === "write-transaction"
    ? () => {
      const id = randomId(rows)
      return sql.withTransaction(
        Effect.andThen(sql`SELECT * FROM test_values WHERE id = ${id} FOR UPDATE`, sql`UPDATE test_values SET val2 = val2 + 1 WHERE id = ${id}`)
      )
    }
    : () => {
      const id = randomId(rows)
      // No partial transactions: the nearest is a transaction with a yield between its steps.
      return sql.withTransaction(
        Effect.gen(function*() {
          yield* sql`SELECT * FROM test_values WHERE id = ${id} FOR UPDATE`
          yield* Effect.yieldNow
          yield* sql`UPDATE test_values SET val2 = val2 + 1 WHERE id = ${id}`
        })
      )
    }

/** Point select, write transaction, partial transaction: per client. */
const queryWorkload = async (): Promise<{ run: Run; close: () => Promise<void> }> => {
  switch (client) {
    case "effect-dbpool": {
      const layer = DbPool.layer({ url: Redacted.make(url), minSize: poolSize, maxSize: poolSize })
      const op = Effect.gen(function*() {
        const pool = yield* WritePool
        // Steady state: the minSize connections are open before anything is measured (bounded: 10 s).
        for (let i = 0; i < 1000 && (yield* pool.stats).idle < poolSize; i++) yield* Effect.sleep("10 millis")
        return workload === "point-select"
          ? () => pool.run(dbsql`SELECT * FROM test_values WHERE id = ${randomId(rows)}`)
          : workload === "write-transaction"
          ? () => {
            const id = randomId(rows)
            return pool.transaction((conn) =>
              Effect.andThen(
                conn.run(dbsql`SELECT * FROM test_values WHERE id = ${id} FOR UPDATE`),
                conn.run(dbsql`UPDATE test_values SET val2 = val2 + 1 WHERE id = ${id}`)
              )
            )
          }
          : () => {
            const id = randomId(rows)
            return Effect.scoped(Effect.gen(function*() {
              const tx = yield* pool.partialTransaction()
              yield* tx.run(dbsql`SELECT * FROM test_values WHERE id = ${id} FOR UPDATE`)
              yield* Effect.yieldNow
              yield* tx.run(dbsql`UPDATE test_values SET val2 = val2 + 1 WHERE id = ${id}`)
              yield* tx.commit
            }))
          }
      })
      return effectRunner(layer, op)
    }
    case "effect-dbpool (SqlClient)": {
      // effect/sql's SqlClient over effect-dbpool's write pool: the same operations as @effect/sql-pg's.
      const layer = EffectSql.layer().pipe(
        Layer.provideMerge(DbPool.layer({ url: Redacted.make(url), minSize: poolSize, maxSize: poolSize }))
      )
      const op = Effect.gen(function*() {
        const pool = yield* WritePool
        for (let i = 0; i < 1000 && (yield* pool.stats).idle < poolSize; i++) yield* Effect.sleep("10 millis")
        return sqlClientOps(yield* SqlClient.SqlClient)
      })
      return effectRunner(layer, op)
    }
    case "Effect over postgres.js": {
      // The floor for any Effect wrapper: raw postgres.js called from fibers through Effect.promise, no pool logic.
      // A transaction: a reserved connection, each of BEGIN, the statements and COMMIT awaited from the fiber.
      const sql = postgres(url, { max: poolSize, prepare: true, onnotice: () => {} })
      const op = workload === "point-select"
        ? () => Effect.promise(() => sql.unsafe(pointText, [randomId(rows)], { prepare: true }))
        : () => {
          const id = randomId(rows)
          return Effect.acquireUseRelease(
            Effect.promise(() => sql.reserve()),
            (reserved) =>
              Effect.gen(function*() {
                yield* Effect.promise(() => reserved.unsafe("BEGIN"))
                yield* Effect.promise(() => reserved.unsafe(lockText, [id], { prepare: true }))
                if (workload === "partial-transaction") yield* Effect.yieldNow
                yield* Effect.promise(() => reserved.unsafe(updateText, [id], { prepare: true }))
                yield* Effect.promise(() => reserved.unsafe("COMMIT"))
              }),
            (reserved) => Effect.sync(() => reserved.release())
          )
        }
      return { ...effectRunner(Layer.empty, Effect.succeed(op)), close: () => sql.end({ timeout: 2 }) }
    }
    case "effect-sql-pg":
    case "effect-sql-pg-multiplex": {
      const layer = PgClient.layer({
        url: Redacted.make(url),
        minConnections: poolSize,
        maxConnections: poolSize,
        multiplex: client === "effect-sql-pg-multiplex"
      })
      const op = Effect.map(SqlClient.SqlClient, sqlClientOps)
      return effectRunner(layer, op)
    }
    case "postgres.js": {
      const sql = postgres(url, { max: poolSize, prepare: true, onnotice: () => {} })
      const op = workload === "point-select"
        ? () => sql.unsafe(pointText, [randomId(rows)], { prepare: true })
        : workload === "write-transaction"
        ? () => {
          const id = randomId(rows)
          return sql.begin(async (tx) => {
            await tx.unsafe(lockText, [id], { prepare: true })
            await tx.unsafe(updateText, [id], { prepare: true })
          })
        }
        : async () => {
          // A reserved connection with explicit BEGIN/COMMIT, a tick between the steps.
          const id = randomId(rows)
          const reserved = await sql.reserve()
          try {
            await reserved.unsafe("BEGIN")
            await reserved.unsafe(lockText, [id], { prepare: true })
            await new Promise((r) => setImmediate(r))
            await reserved.unsafe(updateText, [id], { prepare: true })
            await reserved.unsafe("COMMIT")
          } finally {
            reserved.release()
          }
        }
      return { run: (ms) => runPromiseLoad(op, concurrency, ms), close: () => sql.end({ timeout: 2 }) }
    }
    case "pg-pool": {
      // pg.Pool is node-postgres's pg-pool.
      const pool = new pg.Pool({ connectionString: url, max: poolSize, min: poolSize })
      const op = workload === "point-select"
        ? () => pool.query({ name: "point", text: pointText, values: [randomId(rows)] })
        : async () => {
          const id = randomId(rows)
          const c = await pool.connect()
          try {
            await c.query("BEGIN")
            await c.query({ name: "lock", text: lockText, values: [id] })
            if (workload === "partial-transaction") await new Promise((r) => setImmediate(r))
            await c.query({ name: "update", text: updateText, values: [id] })
            await c.query("COMMIT")
          } finally {
            c.release()
          }
        }
      return { run: (ms) => runPromiseLoad(op, concurrency, ms), close: () => pool.end() }
    }
    default:
      throw new Error(`unknown client ${client}`)
  }
}

/** Runs an Effect client's load in one runtime, its layer built once for warm-up and measurement. */
const effectRunner = <S, E>(
  layer: Layer.Layer<S, E>,
  makeOp: Effect.Effect<() => Effect.Effect<unknown, unknown, never>, never, S>
): { run: Run; close: () => Promise<void> } => {
  let runs: Array<{ ms: number; resolve: (s: Sample) => void }> = []
  let wake: (() => void) | undefined
  let closed = false
  const program = Effect.gen(function*() {
    const op = yield* makeOp
    while (!closed) {
      const next = runs.shift()
      if (next === undefined) {
        yield* Effect.promise(() => new Promise<void>((r) => (wake = r)))
        continue
      }
      next.resolve(yield* Effect.orDie(runEffectLoad(op, concurrency, next.ms)))
    }
  }).pipe(Effect.provide(layer), Effect.orDie)
  const done = Effect.runPromise(program as Effect.Effect<void, never, never>)
  return {
    run: (ms) =>
      new Promise((resolve) => {
        runs.push({ ms, resolve })
        wake?.()
      }),
    close: async () => {
      closed = true
      wake?.()
      await done
      runs = []
    }
  }
}

/** NOTIFY delivery: a sender in this process, the client's subscriber counts and times what arrives. */
const notifyWorkload = async (): Promise<{ run: Run; close: () => Promise<void> }> => {
  const latencies: Array<number> = []
  let counting = false
  const receive = (payload: string) => {
    if (counting) latencies.push(performance.now() - Number(payload))
  }
  let close: () => Promise<void>
  switch (client) {
    case "effect-dbpool": {
      let stop: () => void = () => {}
      const ready = new Promise<void>((resolve) => {
        const program = Effect.gen(function*() {
          const notifications = yield* Notifications.Notifications
          yield* notifications.listen(channel, { bufferSize: 1 << 16 }).pipe(
            Stream.runForEach((event) =>
              Effect.sync(() => (event._tag === "Subscribed" ? resolve() : receive(event.payload)))
            )
          )
        }).pipe(Effect.provide(DbPool.layer({ url: Redacted.make(url), maxSize: 1 })))
        const fiber = Effect.runFork(program)
        stop = () => fiber.interruptUnsafe()
      })
      await ready
      close = async () => stop()
      break
    }
    case "postgres.js": {
      const sql = postgres(url, { max: 1, onnotice: () => {} })
      await sql.listen(channel, receive)
      close = () => sql.end({ timeout: 2 })
      break
    }
    case "effect-sql-pg": {
      let stop: () => void = () => {}
      const ready = new Promise<void>((resolve) => {
        const program = Effect.gen(function*() {
          const pgClient = yield* PgClient.PgClient
          const queue = yield* pgClient.listen(channel)
          resolve()
          while (true) {
            const n = yield* Queue.take(queue)
            receive(n.payload)
          }
        }).pipe(Effect.scoped, Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 })))
        const fiber = Effect.runFork(program)
        stop = () => fiber.interruptUnsafe()
      })
      await ready
      close = async () => stop()
      break
    }
    case "pg-listen": {
      // pg-listen is CommonJS with its function on `exports.default`.
      const subscriber = pgListen.default({ connectionString: url }, { parse: (s: string) => s })
      subscriber.notifications.on(channel, (payload: unknown) => receive(String(payload)))
      subscriber.events.on("error", () => {})
      await subscriber.connect()
      await subscriber.listenTo(channel)
      close = () => subscriber.close()
      break
    }
    default:
      throw new Error(`unknown notify client ${client}`)
  }
  const sender = postgres(url, { max: 4, onnotice: () => {} })
  const send = () => sender.unsafe("SELECT pg_notify($1, $2)", [channel, String(performance.now())], { prepare: true })
  return {
    run: async (ms) => {
      latencies.length = 0
      counting = true
      const start = performance.now()
      await runPromiseLoad(send, concurrency, ms)
      await new Promise((r) => setTimeout(r, 200)) // let the last ones arrive
      counting = false
      return { ops: latencies.length, seconds: (performance.now() - start - 200) / 1000, latenciesMs: Float64Array.from(latencies) }
    },
    close: async () => {
      await close()
      await sender.end({ timeout: 2 })
    }
  }
}

const main = async () => {
  const target = workload === "notify" ? await notifyWorkload() : await queryWorkload()
  if (warmupMs > 0) await target.run(warmupMs)
  // Client CPU per operation: this process's user + system time over the measured run, divided by its operations.
  const cpuBefore = process.cpuUsage()
  const samples: Array<Sample> = []
  for (let i = 0; i < slices; i++) samples.push(await target.run(durationMs / slices))
  const cpu = process.cpuUsage(cpuBefore)
  await target.close()
  clearInterval(rssTimer)
  const ops = samples.reduce((n, x) => n + x.ops, 0)
  const seconds = samples.reduce((n, x) => n + x.seconds, 0)
  const all = new Float64Array(samples.reduce((n, x) => n + x.latenciesMs.length, 0))
  let at = 0
  for (const x of samples) {
    all.set(x.latenciesMs, at)
    at += x.latenciesMs.length
  }
  const sorted = all.sort()
  process.stdout.write(
    JSON.stringify({
      ops,
      seconds,
      opsPerSec: ops / seconds,
      p50Ms: percentile(sorted, 50),
      p99Ms: percentile(sorted, 99),
      peakRssMb: peakRss / (1024 * 1024),
      cpuUsPerOp: ops === 0 ? null : (cpu.user + cpu.system) / ops,
      sliceOpsPerSec: samples.map((x) => x.ops / x.seconds)
    }) + "\n"
  )
  process.exit(0)
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`)
  process.exit(1)
})
