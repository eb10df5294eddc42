/**
 * Spans and metrics, named after the OpenTelemetry database client
 * conventions (`db.system.name`, `db.client.connection.count`, …).
 *
 * Spans are made only when a tracer other than Effect's built-in one is
 * installed, so an application that exports no traces pays one reference
 * read per operation. Metrics on hot paths are sampled (gauges, every
 * {@link sampleEvery} and whenever a pool's figures are read) rather than
 * updated per statement; events off the hot path (a wait, a timeout, a discarded
 * connection, a failed connect) are recorded as they happen.
 */
import { type Context, Duration, Effect, type Fiber, Metric, References, Stream, Tracer } from "effect"
import * as Server from "./server.ts"

/** How often gauges are sampled: well inside any scrape interval, and few wake-ups for an idle pool. */
export const sampleEvery = Duration.seconds(5)

/** What spans and metrics say about the server and the pool. */
export interface Target {
  /** `db.client.connection.pool.name`, e.g. `default/write`. */
  readonly pool: string
  /** `db.namespace`: the database name. */
  readonly namespace: string
  readonly address: string
  readonly port: number
}

/** The server of a URL (its first host, for several), as a Target: the URL itself, with its password, goes nowhere. */
export const target = (pool: string, url: string): Target => {
  const server = Server.parse(url)
  const first = server?.hosts[0]
  return server === undefined || first === undefined
    ? { pool, namespace: "", address: "", port: 0 }
    : { pool, namespace: server.database, address: first.host, port: first.port }
}

const attributesOf = (t: Target): Record<string, unknown> => ({
  "db.system.name": "postgresql",
  "db.namespace": t.namespace,
  "server.address": t.address,
  "server.port": t.port,
  "db.client.connection.pool.name": t.pool
})

/** Is a tracer installed that exports spans (anything but Effect's built-in one)? */
export const tracing = (fiber: Fiber.Fiber<unknown, unknown>): boolean =>
  fiber.getRef(References.TracerEnabled) && fiber.getRef(Tracer.Tracer) !== Tracer.nativeTracer

/** The SQLSTATE of a failure, and its kind, on the current span. */
const outcome = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  effect.pipe(
    Effect.tapError((e) => {
      const tagged = typeof e === "object" && e !== null ? e as { readonly _tag?: unknown; readonly sqlState?: unknown } : {} // any failure: read what it has
      return Effect.annotateCurrentSpan({
        "error.type": typeof tagged._tag === "string" ? tagged._tag : "error",
        ...(typeof tagged.sqlState === "string" ? { "db.response.status_code": tagged.sqlState } : {})
      })
    }),
    Effect.onInterrupt(() => Effect.annotateCurrentSpan({ "error.type": "interrupted", "effect_dbpool.interrupted": true }))
  )

/**
 * Runs `effect` in a client span under the caller's span (or `parent`, for
 * work done on a caller's behalf in another fiber), when traces are exported;
 * `effect` itself otherwise.
 */
export const span = <A, E, R>(
  t: Target,
  name: string,
  attributes: Record<string, unknown>,
  effect: Effect.Effect<A, E, R>,
  parent?: Tracer.AnySpan | undefined
): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) =>
    tracing(fiber)
      ? Effect.withSpan(outcome(effect), name, {
        kind: "client",
        attributes: { ...attributesOf(t), ...attributes },
        ...(parent === undefined ? {} : { parent })
      })
      : effect
  )

/**
 * A stream of a statement's rows in a client span, from its first pull (the
 * wait for a connection included) until it ends, fails or is interrupted, when
 * traces are exported; the stream itself otherwise.
 */
export const streamSpan = <A, E, R>(t: Target, text: string, operation: string, stream: Stream.Stream<A, E, R>): Stream.Stream<A, E, R> =>
  Stream.unwrap(Effect.withFiber((fiber) =>
    Effect.succeed(
      tracing(fiber)
        ? Stream.withSpan(stream, operation, {
          kind: "client",
          attributes: { ...attributesOf(t), ...statementAttributes(text, operation), "effect_dbpool.stream": true }
        })
        : stream
    )
  ))

/** Span attributes of a statement: its text (placeholders, never values) and operation. */
export const statementAttributes = (text: string, operation: string): Record<string, unknown> => ({
  "db.query.text": text,
  "db.operation.name": operation
})

// -- metrics --------------------------------------------------------------------------

const seconds = Metric.exponentialBoundaries({ start: 0.0001, factor: 2, count: 18 }) // 0.1 ms … 13 s

const names = {
  count: "db.client.connection.count",
  max: "db.client.connection.max",
  min: "db.client.connection.idle.min",
  pending: "db.client.connection.pending_requests",
  timeouts: "db.client.connection.timeouts",
  waitTime: "db.client.connection.wait_time",
  operation: "db.client.operation.duration",
  discarded: "db.client.connection.discarded",
  connectFailures: "db.client.connection.connect_failures"
} as const

const descriptions = {
  count: "Open connections by state (idle, used)",
  max: "The most open connections allowed",
  min: "Connections kept open when idle",
  pending: "Callers waiting for a connection",
  timeouts: "Callers that gave up waiting for a connection (PoolTimeout)",
  waitTime: "Seconds a caller waited for a connection (callers that found none free)",
  operation: "Seconds per operation: statement, interaction or transaction, acquire included",
  discarded: "Connections retired by cause (dead, doubtful, lifetime, idle)",
  connectFailures: "Connection attempts that failed"
} as const

/** Why a connection was retired. */
export type DiscardCause = "dead" | "doubtful" | "lifetime" | "idle"

/** A pool's metrics, recorded into the metric registry of the context the pool was built in. */
export interface PoolMetrics {
  readonly sample: (counts: { readonly idle: number; readonly used: number; readonly pending: number; readonly min: number; readonly max: number }) => void
  readonly timeout: () => void
  readonly discarded: (cause: DiscardCause) => void
  readonly connectFailed: () => void
  readonly waited: (millis: number) => void
  readonly operation: (name: string, millis: number) => void
}

export const poolMetrics = (t: Target, context: Context.Context<never>): PoolMetrics => {
  const pool = { "db.client.connection.pool.name": t.pool }
  // Each series is its own metric with its attributes built in: updating it is a plain lookup, where a metric
  // wrapped by `withAttributes` merges the attributes on every update (twice the cost, measured).
  const gauge = (id: string, description: string, attributes: Record<string, string>) =>
    Metric.gauge(id, { description, attributes: { ...pool, ...attributes } })
  const counter = (id: string, description: string, attributes: Record<string, string>) =>
    Metric.counter(id, { description, attributes: { ...pool, ...attributes }, incremental: true })
  const histogram = (id: string, description: string, attributes: Record<string, string>) =>
    Metric.histogram(id, { description, attributes: { ...pool, ...attributes }, boundaries: seconds })
  const idle = gauge(names.count, descriptions.count, { "db.client.connection.state": "idle" })
  const used = gauge(names.count, descriptions.count, { "db.client.connection.state": "used" })
  const max = gauge(names.max, descriptions.max, {})
  const min = gauge(names.min, descriptions.min, {})
  const waiting = gauge(names.pending, descriptions.pending, {})
  const timedOut = counter(names.timeouts, descriptions.timeouts, {})
  const wait = histogram(names.waitTime, descriptions.waitTime, {})
  const failed = counter(names.connectFailures, descriptions.connectFailures, {})
  const byCause = new Map<DiscardCause, Metric.Metric<number, unknown>>()
  const byOperation = new Map<string, Metric.Metric<number, unknown>>()
  return {
    sample: (c) => {
      idle.updateUnsafe(c.idle, context)
      used.updateUnsafe(c.used, context)
      waiting.updateUnsafe(c.pending, context)
      max.updateUnsafe(c.max, context)
      min.updateUnsafe(c.min, context)
    },
    timeout: () => timedOut.updateUnsafe(1, context),
    discarded: (cause) => {
      let m = byCause.get(cause)
      if (m === undefined) byCause.set(cause, m = counter(names.discarded, descriptions.discarded, { cause }))
      m.updateUnsafe(1, context)
    },
    connectFailed: () => failed.updateUnsafe(1, context),
    waited: (millis) => wait.updateUnsafe(millis / 1000, context),
    operation: (name, millis) => {
      let m = byOperation.get(name)
      if (m === undefined) {
        byOperation.set(name, m = histogram(names.operation, descriptions.operation, { "db.system.name": "postgresql", "db.operation.name": name }))
      }
      m.updateUnsafe(millis / 1000, context)
    }
  }
}

const subscribers = Metric.gauge("effect_dbpool.notifications.subscribers", { description: "Notification streams subscribed" })
const delivered = Metric.counter("effect_dbpool.notifications.delivered", { description: "Notifications delivered to subscribers", incremental: true })
const dropped = Metric.counter("effect_dbpool.notifications.dropped", {
  description: "Notifications dropped for subscribers whose buffer was full",
  incremental: true
})
const reconnects = Metric.counter("effect_dbpool.notifications.reconnects", { description: "Times the listening connection was re-established", incremental: true })
const resubscribeTime = Metric.histogram("effect_dbpool.notifications.resubscribe_time", {
  description: "Seconds from losing the listening connection to listening again",
  boundaries: seconds
})

/** The listener's metrics: sampled from its cumulative figures (counters grow by the difference). */
export interface ListenerMetrics {
  readonly sample: (stats: { readonly subscribers: number; readonly delivered: number; readonly dropped: number; readonly reconnects: number }) => void
  readonly resubscribed: (millis: number) => void
}

export const listenerMetrics = (pool: string, context: Context.Context<never>): ListenerMetrics => {
  const attrs = { "db.client.connection.pool.name": pool }
  const subs = Metric.withAttributes(subscribers, attrs)
  const del = Metric.withAttributes(delivered, attrs)
  const drop = Metric.withAttributes(dropped, attrs)
  const rec = Metric.withAttributes(reconnects, attrs)
  const resub = Metric.withAttributes(resubscribeTime, attrs)
  let last = { delivered: 0, dropped: 0, reconnects: 0 }
  return {
    sample: (s) => {
      subs.updateUnsafe(s.subscribers, context)
      if (s.delivered > last.delivered) del.updateUnsafe(s.delivered - last.delivered, context)
      if (s.dropped > last.dropped) drop.updateUnsafe(s.dropped - last.dropped, context)
      if (s.reconnects > last.reconnects) rec.updateUnsafe(s.reconnects - last.reconnects, context)
      last = { delivered: s.delivered, dropped: s.dropped, reconnects: s.reconnects }
    },
    resubscribed: (millis) => resub.updateUnsafe(millis / 1000, context)
  }
}
