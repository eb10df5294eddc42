/**
 * Spans and metrics as an operator reads them: spans recorded by an installed
 * tracer (names, parents, OpenTelemetry attributes, failures, interruption),
 * and metrics read back from the registry after real work on the server.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Metric, Redacted, Stream, Tracer } from "effect"
import { Notifications, sql, WritePool } from "effect-dbpool"
import { databaseUrl, failOnEscapes, harness, poll } from "./support.ts"

const h = harness("telemetry")
failOnEscapes()

const url = new URL(Redacted.value(databaseUrl))

/** A tracer that keeps every span it makes (Effect's native spans: name, parent, attributes, status). */
const recording = () => {
  const spans: Array<Tracer.Span> = []
  const tracer = Tracer.make({
    span: (options) => {
      const span = Tracer.nativeTracer.span(options)
      spans.push(span)
      return span
    }
  })
  const named = (name: string) => spans.filter((s) => s.name === name)
  return { spans, tracer, named }
}

const attr = (span: Tracer.Span | undefined, key: string): unknown => span?.attributes.get(key)
const parentName = (span: Tracer.Span | undefined): string | undefined =>
  span?.parent._tag === "Some" && span.parent.value._tag === "Span" ? span.parent.value.name : undefined

describe("spans", () => {
  it.live("a statement is a client span under the caller's, with the OpenTelemetry database attributes and no values", () => {
    const rec = recording()
    return Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.run(sql`SELECT val1 FROM test_values WHERE id = ${4242}`).pipe(Effect.withSpan("request"))
      const span = rec.named("SELECT").at(-1)
      assert.isDefined(span, `spans: ${rec.spans.map((s) => s.name).join(", ")}`)
      assert.strictEqual(span?.kind, "client")
      assert.strictEqual(parentName(span), "request")
      assert.strictEqual(attr(span, "db.system.name"), "postgresql")
      assert.strictEqual(attr(span, "db.namespace"), url.pathname.slice(1))
      assert.strictEqual(attr(span, "server.address"), url.hostname)
      assert.strictEqual(attr(span, "server.port"), Number(url.port))
      assert.strictEqual(attr(span, "db.operation.name"), "SELECT")
      assert.strictEqual(attr(span, "db.client.connection.pool.name"), "default/write")
      assert.strictEqual(attr(span, "db.query.text"), "SELECT val1 FROM test_values WHERE id = $1")
      assert.notInclude(JSON.stringify([...span!.attributes.entries()]), "4242")
      assert.strictEqual(span?.status._tag, "Ended")
      // The pool's first connection was opened for this statement: its connect is traced under the wait for it.
      const connect = rec.named("connect")[0]
      assert.strictEqual(parentName(connect), "acquire")
      assert.strictEqual(parentName(rec.named("acquire")[0]), "SELECT")
    }).pipe(Effect.provide(h.pools({ maxSize: 2 })), Effect.withTracer(rec.tracer))
  })

  it.live("a stream is one client span from its first pull to its end, under the caller's; an abandoned one ends too", () => {
    const rec = recording()
    return Effect.gen(function*() {
      const pool = yield* WritePool
      const text = "SELECT id FROM test_values WHERE id <= $1 ORDER BY id"
      const rows = yield* pool.stream(sql`SELECT id FROM test_values WHERE id <= ${2500} ORDER BY id`).pipe(
        Stream.runCount,
        Effect.withSpan("export")
      )
      assert.strictEqual(rows, 2500)
      const span = rec.spans.find((s) => s.name === "SELECT" && attr(s, "db.query.text") === text)
      assert.isDefined(span, `spans: ${rec.spans.map((s) => s.name).join(", ")}`)
      assert.strictEqual(span?.kind, "client")
      assert.strictEqual(parentName(span), "export")
      assert.strictEqual(attr(span, "effect_dbpool.stream"), true)
      assert.strictEqual(attr(span, "db.client.connection.pool.name"), "default/write")
      assert.isTrue(span?.status._tag === "Ended" && Exit.isSuccess(span.status.exit))
      // Taken two rows of: the stream ends there, and so does its span.
      yield* pool.stream(sql`SELECT id FROM test_values WHERE id <= ${9000} ORDER BY id`).pipe(Stream.take(2), Stream.runDrain)
      const partial = rec.spans.filter((s) => attr(s, "db.query.text") === text).at(-1)
      assert.notStrictEqual(partial, span)
      assert.strictEqual(partial?.status._tag, "Ended")
    }).pipe(Effect.provide(h.pools({ maxSize: 2 })), Effect.withTracer(rec.tracer))
  })

  it.live("a failed statement carries its SQLSTATE; an interrupted one says so", () => {
    const rec = recording()
    return Effect.gen(function*() {
      const pool = yield* WritePool
      yield* Effect.flip(pool.run(sql`SELEC 1`))
      const failed = rec.named("SELEC").at(-1)
      assert.strictEqual(attr(failed, "db.response.status_code"), "42601")
      assert.strictEqual(attr(failed, "error.type"), "SyntaxError")
      assert.isTrue(failed?.status._tag === "Ended" && Exit.isFailure(failed.status.exit))
      const sleeper = yield* Effect.forkChild(pool.run(sql`SELECT pg_sleep(10)`))
      yield* poll(h.sessions, (s) => s.some((x) => x.query.includes("pg_sleep") && x.state === "active"), 3000, 20)
      yield* Fiber.interrupt(sleeper)
      const interrupted = rec.spans.filter((s) => attr(s, "db.query.text") === "SELECT pg_sleep(10)").at(-1)
      assert.strictEqual(attr(interrupted, "effect_dbpool.interrupted"), true)
    }).pipe(Effect.provide(h.pools({ maxSize: 2 })), Effect.withTracer(rec.tracer))
  })

  it.live("transactions, their statements, a wait for a connection, partial-transaction steps and notify are spans", () => {
    const rec = recording()
    return Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.transaction((conn) =>
        Effect.andThen(conn.run(sql`SELECT 1`), conn.run(sql`SELECT pg_advisory_xact_lock(${77001})`))
      )
      const tx = rec.named("transaction").at(-1)
      assert.isDefined(tx)
      const inside = rec.spans.filter((s) => s.name === "SELECT" && parentName(s) === "transaction")
      assert.strictEqual(inside.length, 2)
      // A wait: the only connection is held by an interaction.
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(pool.interaction(() => Deferred.await(release)))
      yield* poll(pool.stats, (s) => s.used === 1, 2000, 10)
      const waiter = yield* Effect.forkChild(pool.run(sql`SELECT 2`))
      yield* poll(pool.stats, (s) => s.pending === 1, 2000, 10)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(waiter)
      assert.isAtLeast(rec.named("acquire").length, 1)
      yield* Effect.scoped(Effect.gen(function*() {
        const partial = yield* pool.partialTransaction()
        yield* partial.run(sql`SELECT 3`)
        yield* partial.commit
      }))
      assert.strictEqual(rec.named("COMMIT").length, 1)
      const notifications = yield* Notifications.Notifications
      yield* notifications.notify("telemetry_test", "x")
      assert.strictEqual(attr(rec.named("notify").at(-1), "effect_dbpool.channel"), "telemetry_test")
    }).pipe(Effect.provide(h.pools({ maxSize: 1 })), Effect.withTracer(rec.tracer))
  })
})

/** The registry's series of a metric with the given attributes (a subset). */
const series = (id: string, attributes: Record<string, string> = {}) =>
  Effect.map(Metric.snapshot, (all) =>
    all.filter((m) =>
      m.id === id && Object.entries(attributes).every(([k, v]) => m.attributes?.[k] === v)
    ))

const value = (id: string, attributes: Record<string, string> = {}) =>
  Effect.map(series(id, attributes), (found) => {
    const m = found[0]
    if (m === undefined) return undefined
    const state = m.state as { readonly value?: number; readonly count?: number } // gauge, counter or histogram state
    return state.value ?? state.count
  })

describe("metrics", () => {
  it.live("connection counts, pending requests, operation durations, timeouts and discarded connections read back", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const poolName = { "db.client.connection.pool.name": "default/write" }
      yield* Effect.forEach([1, 2, 3, 4, 5], (i) => pool.run(sql`SELECT ${i}::int AS i`), { discard: true })
      yield* pool.transaction((conn) => conn.run(sql`SELECT 1`))
      const selects = yield* value("db.client.operation.duration", { ...poolName, "db.operation.name": "SELECT" })
      assert.isAtLeast(selects ?? 0, 5)
      assert.isAtLeast((yield* value("db.client.operation.duration", { ...poolName, "db.operation.name": "transaction" })) ?? 0, 1)
      // Gauges: sampled whenever the figures are read.
      const release = yield* Deferred.make<void>()
      const holders = yield* Effect.forkChild(
        Effect.forEach([1, 2], () => pool.interaction(() => Deferred.await(release)), { concurrency: "unbounded", discard: true })
      )
      yield* poll(pool.stats, (s) => s.used === 2, 2000, 10)
      assert.strictEqual(yield* value("db.client.connection.count", { ...poolName, "db.client.connection.state": "used" }), 2)
      assert.strictEqual(yield* value("db.client.connection.max", poolName), 2)
      // A caller that gives up waiting.
      const timeout = yield* Effect.flip(pool.run(sql`SELECT 1`))
      assert.strictEqual(timeout._tag, "PoolTimeout")
      assert.strictEqual(yield* value("db.client.connection.timeouts", poolName), 1)
      assert.isAtLeast((yield* value("db.client.connection.wait_time", poolName)) ?? 0, 1)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holders)
      yield* pool.stats
      assert.strictEqual(yield* value("db.client.connection.count", { ...poolName, "db.client.connection.state": "idle" }), 2)
      // A connection killed while idle is discarded as dead when next met.
      const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid`)
      yield* h.observe("SELECT pg_terminate_backend($1)", [row?.["pid"]])
      yield* poll(h.sessions, (ss) => !ss.some((s) => s.pid === Number(row?.["pid"])))
      yield* Effect.sleep("100 millis")
      yield* Effect.forEach([1, 2, 3], () => pool.run(sql`SELECT 1`), { concurrency: "unbounded", discard: true })
      assert.strictEqual(yield* value("db.client.connection.discarded", { ...poolName, cause: "dead" }), 1)
    }).pipe(
      Effect.provide(h.pools({ maxSize: 2, acquireTimeout: "150 millis" })),
      Effect.provideService(Metric.MetricRegistry, new Map())
    ))

  it.live("failed connects are counted", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* Effect.flip(pool.run(sql`SELECT 1`))
      yield* Effect.flip(pool.run(sql`SELECT 1`))
      assert.strictEqual(yield* value("db.client.connection.connect_failures", { "db.client.connection.pool.name": "default/write" }), 2)
    }).pipe(
      Effect.provide(h.pools({ url: Redacted.make(`postgres://u:p@127.0.0.1:1/none`) })),
      Effect.provideService(Metric.MetricRegistry, new Map())
    ))

  it.live("notifications: subscribers, delivered, listener reconnects and the time to resubscribe", () =>
    Effect.gen(function*() {
      const notifications = yield* Notifications.Notifications
      const pool = { "db.client.connection.pool.name": "default/listen" }
      const subscribed = yield* Deferred.make<void>()
      const fiber = yield* notifications.listen("telemetry_metrics").pipe(
        Stream.tap((e) => e._tag === "Subscribed" ? Deferred.succeed(subscribed, undefined) : Effect.void),
        Notifications.payloads,
        Stream.take(2),
        Stream.runDrain,
        Effect.forkChild
      )
      yield* Deferred.await(subscribed)
      yield* notifications.notify("telemetry_metrics", "one")
      yield* poll(notifications.stats, (s) => s.delivered >= 1, 2000, 10)
      assert.strictEqual(yield* value("effect_dbpool.notifications.subscribers", pool), 1)
      assert.strictEqual(yield* value("effect_dbpool.notifications.delivered", pool), 1)
      // Kill the listening connection: it comes back, and the time it took is recorded.
      const pid = yield* notifications.listenerPid
      yield* h.observe("SELECT pg_terminate_backend($1)", [pid])
      yield* poll(notifications.stats, (s) => s.reconnects >= 1 && s.connected, 5000, 20)
      assert.strictEqual(yield* value("effect_dbpool.notifications.reconnects", pool), 1)
      assert.strictEqual(yield* value("effect_dbpool.notifications.resubscribe_time", pool), 1)
      yield* notifications.notify("telemetry_metrics", "two")
      yield* Fiber.join(fiber)
    }).pipe(
      Effect.provide(h.pools({ maxSize: 2 })),
      Effect.provideService(Metric.MetricRegistry, new Map())
    ))
})

