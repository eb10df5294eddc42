/**
 * Keeping a cache in sync with LISTEN/NOTIFY across a lost listening
 * connection.
 *
 * Postgres keeps no notifications for a listener that is disconnected, so
 * whatever changed meanwhile is never delivered. Every notification stream
 * therefore emits `Subscribed` when its LISTEN is in place — first at start,
 * then after each reconnect — and that is the moment to reload.
 *
 * The program caches val1 of a few rows, kills the listening backend, changes
 * a row while the listener is down, and shows the resync putting it right.
 */
import { EmbeddedPostgres, layer as postgresLayer } from "@effect-dbpool/embedded-postgres"
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Fiber, Layer, Queue, Schema, Stream } from "effect"
import { DbPool, Notifications, sql, WritePool } from "effect-dbpool"

const Change = Schema.Struct({ id: Schema.Number, val1: Schema.Number })
const Row = Schema.Struct({ id: Schema.Number, val1: Schema.Number })
const watched = [1, 2, 3]

const program = Effect.gen(function*() {
  const pool = yield* WritePool
  const notifications = yield* Notifications.Notifications
  const cache = new Map<number, number>()
  const synced = yield* Queue.unbounded<"initial" | "resync">()

  const reload = Effect.gen(function*() {
    const rows = yield* pool.run(sql`SELECT id, val1 FROM test_values WHERE id IN ${sql.in(watched)}`, Row)
    for (const row of rows) cache.set(row.id, row.val1)
  })

  const consumer = yield* notifications.listen("notify_test_values", Change).pipe(
    Stream.runForEach((event) =>
      event._tag === "Subscribed"
        ? reload.pipe(Effect.andThen(Queue.offer(synced, event.resubscribed ? "resync" : "initial")))
        : Effect.sync(() => {
          if (cache.has(event.payload.id)) cache.set(event.payload.id, event.payload.val1)
        })
    ),
    Effect.forkChild
  )

  yield* Queue.take(synced)
  yield* Console.log("initial load:", Object.fromEntries(cache))

  yield* pool.run(sql`UPDATE test_values SET val1 = ${111} WHERE id = ${1}`)
  yield* Effect.sleep("10 millis").pipe(Effect.repeat({ until: () => cache.get(1) === 111 }), Effect.timeout("5 seconds"))
  yield* Console.log("row 1 changed, cache follows through a notification:", Object.fromEntries(cache))

  // The listening connection dies; a change made now has no listener to go to.
  const listenerPid = yield* notifications.listenerPid
  yield* pool.run(sql`SELECT pg_terminate_backend(${listenerPid ?? 0})`)
  yield* pool.run(sql`UPDATE test_values SET val1 = ${222} WHERE id = ${2}`)
  yield* Console.log(`listening backend ${listenerPid} terminated; row 2 changed while it was down`)

  const cue = yield* Queue.take(synced).pipe(Effect.timeout("10 seconds"))
  yield* Console.log(`"Subscribed" again (${cue}) → reloaded:`, Object.fromEntries(cache))

  const truth = yield* pool.run(sql`SELECT id, val1 FROM test_values WHERE id IN ${sql.in(watched)}`, Row)
  const stale = truth.filter((row) => cache.get(row.id) !== row.val1)
  yield* Fiber.interrupt(consumer)
  if (stale.length > 0) return yield* Effect.die(new Error(`cache is stale for ${JSON.stringify(stale)}`))
  yield* Console.log("cache matches the table.")
})

const PoolsLive = Layer.unwrap(Effect.gen(function*() {
  const server = yield* EmbeddedPostgres
  return DbPool.layer({ url: server.url, maxSize: 2 })
}))

program.pipe(
  Effect.provide(PoolsLive.pipe(Layer.provide(postgresLayer({ sqlFile: "sql/test_schema.sql", settings: { "dbpool.seed_rows": "1000" } })))),
  NodeRuntime.runMain
)
