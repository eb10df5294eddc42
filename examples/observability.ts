/**
 * Observability: effect-dbpool's metrics served for Prometheus, its spans sent
 * to an OpenTelemetry collector.
 *
 * - Metrics: `PrometheusMetrics.layerHttp()` from effect/observability on an
 *   `HttpRouter`, served by Node at http://127.0.0.1:$PORT/metrics (PORT
 *   defaults to 9464, Prometheus' exporter port; PORT=0 picks a free one).
 *   The pools record into the metric registry of the context their Layer is
 *   built in: here the default one, which the endpoint reads.
 * - Spans: the OTLP exporter of effect/observability, JSON over HTTP, to
 *   `$OTEL_EXPORTER_OTLP_ENDPOINT/v1/traces` (e.g. http://localhost:4318 for a
 *   local collector or Jaeger). Unset, no spans are exported, and the pools
 *   make none: they trace only when a tracer other than Effect's built-in one
 *   is installed.
 *
 * A small workload runs under one parent span, `example-request`: statements,
 * a transaction, a failing statement, a notification. Then the program reads
 * its own /metrics endpoint, prints the pool's lines, flushes the exporter and
 * exits.
 *
 * Runs on an embedded Postgres, or on the server at DATABASE_URL, into which
 * it loads nothing: its only table is a temporary one, dropped at commit.
 *
 *   pnpm exec node --experimental-strip-types --no-warnings --conditions=@effect-dbpool/source examples/observability.ts
 *   OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 PORT=0 pnpm exec node … examples/observability.ts
 */
import { EmbeddedPostgres, layer as postgresLayer } from "@effect-dbpool/embedded-postgres"
import { NodeHttpClient, NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Config, Console, Deferred, Effect, Fiber, Layer, Option, Schema, Stream } from "effect"
import { HttpClient, HttpMiddleware, HttpRouter, HttpServer } from "effect/http"
import { OtlpExporter, OtlpSerialization, OtlpTracer, PrometheusMetrics } from "effect/observability"
import { DbPool, Notifications, ReadPool, sql, WritePool } from "effect-dbpool"
import * as Http from "node:http"

const step = (title: string) => Console.log(`\n── ${title} ${"─".repeat(Math.max(0, 70 - title.length))}`)

const Order = Schema.Struct({ id: Schema.Number, amount: Schema.Number })

/** What a request handler of an application might do; every statement below becomes a span under the caller's. */
const request = Effect.gen(function*() {
  const pool = yield* WritePool
  const readPool = yield* ReadPool
  const notifications = yield* Notifications.Notifications

  yield* step("1. Statements: a span each, with the text but not the values")
  // Three at once, so the pools open connections: a `connect` span each, in a trace of its own (the pool's
  // fibers open connections, not the caller's); the caller's wait for one is its `acquire` span.
  const rows = yield* Effect.all([
    pool.run(sql`SELECT ${"customer-271828"}::text AS customer, now() AS at`),
    pool.run(sql`SELECT count(*)::int AS n FROM generate_series(1, ${1000}) g`),
    readPool.run(sql`SELECT current_setting('transaction_read_only') AS read_only`)
  ], { concurrency: "unbounded" })
  yield* Console.log(rows.map((r) => r[0]))

  yield* step("2. A transaction: a span with its statements inside")
  const total = yield* pool.transaction((conn) =>
    Effect.gen(function*() {
      yield* conn.run(sql`CREATE TEMP TABLE observability_orders (id int PRIMARY KEY, amount int NOT NULL) ON COMMIT DROP`)
      yield* conn.run(sql`INSERT INTO observability_orders SELECT g, g * ${10} FROM generate_series(1, ${5}) g`)
      yield* conn.run(sql`UPDATE observability_orders SET amount = amount + ${1} WHERE id = ${3}`)
      const orders = yield* conn.run(sql`SELECT id, amount FROM observability_orders ORDER BY id`, Order)
      return orders.reduce((sum, o) => sum + o.amount, 0)
    })
  )
  yield* Console.log(`committed; total amount ${total}`)

  yield* step("3. A failing statement: its span carries the SQLSTATE")
  const failed = yield* pool.run(sql`SELECT * FROM observability_no_such_table WHERE id = ${42}`).pipe(Effect.flip)
  yield* Console.log(`${failed._tag} (SQLSTATE ${"sqlState" in failed ? failed.sqlState : "-"}), caught`)

  yield* step("4. A notification: a `notify` span")
  const subscribed = yield* Deferred.make<void>()
  const listener = yield* notifications.listen("observability_example").pipe(
    Stream.tap((event) => event._tag === "Subscribed" ? Deferred.succeed(subscribed, undefined) : Effect.void),
    Notifications.payloads,
    Stream.take(1),
    Stream.runCollect,
    Effect.forkChild
  )
  yield* Deferred.await(subscribed)
  yield* notifications.notify("observability_example", "order 3 changed")
  yield* Console.log("received:", yield* Fiber.join(listener))
}).pipe(Effect.withSpan("example-request"))

const program = Effect.gen(function*() {
  yield* request

  yield* step("5. Pool statistics (reading them also samples the gauges)")
  const pool = yield* WritePool
  const readPool = yield* ReadPool
  const notifications = yield* Notifications.Notifications
  yield* Console.log(yield* pool.stats, yield* readPool.stats, yield* notifications.stats)

  yield* step("6. GET /metrics: effect-dbpool's lines, as Prometheus scrapes them")
  const server = yield* HttpServer.HttpServer
  const url = `${HttpServer.formatAddress(server.address)}/metrics`
  const client = HttpClient.filterStatusOk(yield* HttpClient.HttpClient)
  const body = yield* client.get(url).pipe(
    Effect.flatMap((response) => response.text),
    Effect.withTracerEnabled(false) // the scrape is not part of the workload
  )
  const ours = body.split("\n").filter((line) => /db_client|effect_dbpool/.test(line))
  const buckets = ours.filter((line) => /_bucket\{/.test(line))
  yield* Console.log(`GET ${url} (${buckets.length} histogram bucket lines left out)`)
  yield* Console.log(ours.filter((line) => !buckets.includes(line)).join("\n"))

  // Spans still buffered go out now (the exporter's release would send them too, within its shutdown timeout).
  const flusher = yield* OtlpExporter.Flusher
  yield* flusher.flush
})

// -- layers -------------------------------------------------------------------------

/** Spans to the collector at OTEL_EXPORTER_OTLP_ENDPOINT, when set; a Flusher either way. */
const TracingLive = Layer.unwrap(Effect.gen(function*() {
  const endpoint = yield* Config.option(Config.String("OTEL_EXPORTER_OTLP_ENDPOINT"))
  if (Option.isNone(endpoint) || endpoint.value === "") {
    yield* Console.log("OTEL_EXPORTER_OTLP_ENDPOINT is not set: spans are not exported")
    return OtlpExporter.layerFlusher
  }
  const traces = `${endpoint.value.replace(/\/+$/, "")}/v1/traces`
  yield* Console.log(`exporting spans to ${traces}`)
  return OtlpTracer.layer({
    url: traces,
    resource: { serviceName: "effect-dbpool-example" },
    exportInterval: "500 millis"
  }).pipe(Layer.provide([OtlpSerialization.layerJson, NodeHttpClient.layerUndici]))
}))

/** GET /metrics in Prometheus' text format, on PORT (0: any free port). */
const MetricsServerLive = Layer.unwrap(Effect.gen(function*() {
  const port = yield* Config.Int("PORT").pipe(Config.withDefault(9464))
  const printAddress = Layer.effectDiscard(
    HttpServer.addressFormattedWith((address) => Console.log(`Prometheus metrics at ${address}/metrics`))
  )
  return HttpRouter.serve(PrometheusMetrics.layerHttp(), { disableLogger: true, disableListenLog: true }).pipe(
    Layer.merge(printAddress),
    // Scrapes are not traced: one span every scrape interval would be noise.
    Layer.provide(HttpMiddleware.layerTracerDisabledForUrls(["/metrics"])),
    Layer.provideMerge(NodeHttpServer.layer(Http.createServer, { port, host: "127.0.0.1" }))
  )
}))

const PoolsLive = Layer.unwrap(Effect.gen(function*() {
  const server = yield* EmbeddedPostgres
  yield* Console.log(server.embedded ? `embedded Postgres on port ${server.port}` : "Postgres at DATABASE_URL")
  return DbPool.layer({ url: server.url, maxSize: 4, applicationName: "effect-dbpool-observability-example" })
}))

// No sqlFile: on a server at DATABASE_URL nothing is loaded or dropped.
const ServerLive = postgresLayer()

program.pipe(
  Effect.provide(
    Layer.mergeAll(PoolsLive.pipe(Layer.provide(ServerLive)), MetricsServerLive, NodeHttpClient.layerUndici).pipe(
      // The tracer is provided to the pools' Layer too: connects, run by the pool's own fibers, are traced.
      Layer.provideMerge(TracingLive)
    )
  ),
  NodeRuntime.runMain
)
