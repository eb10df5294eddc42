/**
 * LISTEN/NOTIFY against the real server: Subscribed before any notification
 * can be missed, reference-counted LISTEN/UNLISTEN seen in pg_stat_activity,
 * one listening connection per pool outside the pool's size, Schema payloads
 * and decode failures, reconnects after a terminated backend, a silently
 * dead network (health check) and a full server restart, PoolClosed and
 * ListenerGaveUp, payload limits, notify in transactions, hostile channel
 * names, slow subscribers.
 *
 * `pg_listening_channels()` only answers for the session that runs it, so
 * the LISTEN state is checked through the listening backend's last statement
 * in pg_stat_activity, `stats.channels`, and by delivery itself.
 */
import { EmbeddedPostgres, layer as embeddedPostgres } from "@effect-dbpool/embedded-postgres"
import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Logger,
  Context,
  Data,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Option,
  Pull,
  Queue,
  Redacted,
  References,
  Schedule,
  Schema,
  Scope,
  Stream
} from "effect"
import { DbPool, Notifications, ReadPool, sql, WritePool } from "effect-dbpool"
import type { Connection } from "effect-dbpool"
import * as Net from "node:net"
import { databaseUrl, failOnEscapes, harness } from "./support.ts"

const h = harness("notifications")

failOnEscapes()

class Boom extends Data.TaggedError("Boom")<{}> {}

type Event<A> = Notifications.ListenEvent<A>

/** A channel name of this file, unique per call so that tests never hear each other. */
let channelCounter = 0
const channel = (name: string) => `notif_${name}_${process.pid}_${++channelCounter}`

// ---------------------------------------------------------------------------------------------------------
// Reading a notification stream on demand

type Step<A, E> =
  | { readonly _tag: "Event"; readonly event: Event<A> }
  | { readonly _tag: "Timeout" }
  | { readonly _tag: "End" }
  | { readonly _tag: "Failure"; readonly cause: Cause.Cause<E> }

/**
 * A subscriber that consumes only when asked to: each `next` pulls one event.
 * Not pulling leaves the notifications in the subscriber's own buffer, which
 * is what a slow consumer does.
 */
interface Reader<A, E> {
  /** The next event within `within`; a timeout, the end or a failure of the stream fails the test. */
  readonly next: (within?: Duration.Input) => Effect.Effect<Event<A>>
  /** The next event, which must be a notification. */
  readonly notification: (within?: Duration.Input) => Effect.Effect<Notifications.Notification<A>>
  /** The next event, which must be `Subscribed` with this `resubscribed`. */
  readonly subscribed: (resubscribed: boolean, within?: Duration.Input) => Effect.Effect<Notifications.Subscribed>
  /** Fails the test if any event arrives (or the stream ends or fails) within `within`. */
  readonly nothing: (within: Duration.Input) => Effect.Effect<void>
  /** The error the stream fails with within `within`; any event before it fails the test. */
  readonly failure: (within?: Duration.Input) => Effect.Effect<E>
  /** Every event until the stream fails (waiting at most `within` for each), and the error; the end or a timeout fails the test. */
  readonly eventsThenFailure: (within?: Duration.Input) => Effect.Effect<readonly [ReadonlyArray<Event<A>>, E]>
  /** Ends this subscriber: closes the scope its stream runs in. */
  readonly close: Effect.Effect<void>
}

const describeStep = <A, E>(step: Step<A, E>): string =>
  step._tag === "Event"
    ? `event ${JSON.stringify(step.event)}`
    : step._tag === "Failure"
    ? `failure ${Cause.pretty(step.cause)}`
    : step._tag === "End"
    ? "the end of the stream"
    : "nothing (timeout)"

const read = <A, E, R>(stream: Stream.Stream<Event<A>, E, R>): Effect.Effect<Reader<A, E>, never, R> =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const pull = yield* Stream.toPull(stream).pipe(Scope.provide(scope))
    const buffered: Array<Event<A>> = []
    let finished: Step<A, E> | undefined
    const step = (within: Duration.Input): Effect.Effect<Step<A, E>> =>
      Effect.suspend((): Effect.Effect<Step<A, E>> => {
        const head = buffered.shift()
        if (head !== undefined) return Effect.succeed({ _tag: "Event", event: head })
        if (finished !== undefined) return Effect.succeed(finished)
        return pull.pipe(
          Effect.map((chunk): Step<A, E> => {
            const [first, ...rest] = chunk
            buffered.push(...rest)
            return { _tag: "Event", event: first }
          }),
          Effect.catchCause((cause) => {
            const done = Pull.filterDone(cause)
            finished = done._tag === "Success" ? { _tag: "End" } : { _tag: "Failure", cause: done.failure }
            return Effect.succeed(finished)
          }),
          Effect.timeoutOption(within),
          Effect.map(Option.getOrElse((): Step<A, E> => ({ _tag: "Timeout" })))
        )
      })
    const next = (within: Duration.Input = "5 seconds") =>
      Effect.flatMap(step(within), (s) =>
        s._tag === "Event" ? Effect.succeed(s.event) : Effect.die(new Error(`expected an event, got ${describeStep(s)}`)))
    return {
      next,
      notification: (within) =>
        Effect.flatMap(next(within), (event) =>
          event._tag === "Notification"
            ? Effect.succeed(event)
            : Effect.die(new Error(`expected a notification, got ${JSON.stringify(event)}`))),
      subscribed: (resubscribed, within) =>
        Effect.flatMap(next(within), (event) =>
          event._tag === "Subscribed" && event.resubscribed === resubscribed
            ? Effect.succeed(event)
            : Effect.die(new Error(`expected Subscribed { resubscribed: ${resubscribed} }, got ${JSON.stringify(event)}`))),
      nothing: (within) =>
        Effect.flatMap(step(within), (s) =>
          s._tag === "Timeout" ? Effect.void : Effect.die(new Error(`expected nothing, got ${describeStep(s)}`))),
      failure: (within = "5 seconds") =>
        Effect.flatMap(step(within), (s) => {
          if (s._tag === "Failure") {
            const error = Cause.findErrorOption(s.cause)
            if (Option.isSome(error)) return Effect.succeed(error.value)
          }
          return Effect.die(new Error(`expected the stream to fail, got ${describeStep(s)}`))
        }),
      eventsThenFailure: (within = "5 seconds") =>
        Effect.gen(function*() {
          const events: Array<Event<A>> = []
          while (true) {
            const s = yield* step(within)
            if (s._tag === "Event") {
              events.push(s.event)
              continue
            }
            const error = s._tag === "Failure" ? Cause.findErrorOption(s.cause) : Option.none()
            if (Option.isSome(error)) return [events, error.value] as const
            return yield* Effect.die(new Error(`expected the stream to fail, got ${describeStep(s)} after ${events.length} events`))
          }
        }),
      close: Scope.close(scope, Exit.void)
    }
  })

/** Repeats `check` until it succeeds, for server state that settles a moment after the client acts; reports its last failure. */
const eventually = <A>(check: Effect.Effect<A>, within: Duration.Input = "5 seconds"): Effect.Effect<A> =>
  check.pipe(
    Effect.sandbox,
    Effect.retry({ schedule: Schedule.spaced("50 millis"), times: Math.ceil(Duration.toMillis(Duration.fromInputUnsafe(within)) / 50) }),
    Effect.catch((cause) => Effect.die(new Error(`not settled within ${Duration.format(Duration.fromInputUnsafe(within))}: ${Cause.pretty(cause)}`)))
  )

/**
 * A subscriber that runs its stream to the end in a fiber of its own, as an
 * application would: what it receives goes to `received`; its fiber ends
 * (and leaves the channel) when the stream ends or fails, or is interrupted.
 */
const background = <A, E, R>(stream: Stream.Stream<Event<A>, E, R>) =>
  Effect.gen(function*() {
    const received = yield* Queue.unbounded<Notifications.Notification<A>>()
    const subscribed = yield* Deferred.make<void>()
    const fiber = yield* stream.pipe(
      Stream.runForEach((event) =>
        event._tag === "Subscribed" ? Deferred.succeed(subscribed, undefined) : Queue.offer(received, event)
      ),
      Effect.forkChild
    )
    yield* Deferred.await(subscribed).pipe(
      Effect.timeout("5 seconds"),
      Effect.catchCause((cause) => Effect.die(new Error(`no Subscribed: ${Cause.pretty(cause)}`)))
    )
    const next = Queue.take(received).pipe(
      Effect.timeout("5 seconds"),
      Effect.catchCause((cause) => Effect.die(new Error(`no notification: ${Cause.pretty(cause)}`)))
    )
    return { received, fiber, next }
  })

/** `assert` inside an Effect: a failed assertion is a defect, which `eventually` retries. */
const check = (f: () => void): Effect.Effect<void> => Effect.sync(f)

interface Backend {
  readonly pid: number
  readonly state: string | null
  readonly query: string
  readonly application_name: string
}

/** The server's view of one backend, if it exists. */
const backend = (pid: number | undefined): Effect.Effect<Backend | undefined> =>
  pid === undefined
    ? Effect.succeed(undefined)
    : Effect.map(
      h.observe<Backend>("SELECT pid, state, query, application_name FROM pg_stat_activity WHERE pid = $1", [pid]),
      (rows) => rows[0]
    )

const listenerPid = Effect.gen(function*() {
  const n = yield* Notifications.Notifications
  const pid = yield* n.listenerPid
  if (pid === undefined) return yield* Effect.die(new Error("the listening connection is not connected"))
  return pid
})

/** The listening backend's last statement, as pg_stat_activity reports it. */
const listenerQuery = Effect.gen(function*() {
  const pid = yield* listenerPid
  const row = yield* backend(pid)
  assert.isDefined(row, `the listening backend ${pid} exists`)
  return row?.query
})

const quoted = (name: string) => `"${name.replaceAll("\"", "\"\"")}"`

/** The error `self` fails with; a success fails the test. */
const failure = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<E, never, R> =>
  Effect.flip(self).pipe(
    Effect.mapError((a) => new Error(`expected a failure, got a success: ${JSON.stringify(a)}`)),
    Effect.orDie
  )

/** The test server's URL on another port. */
const withPort = (port: number): Redacted.Redacted<string> => {
  const url = new URL(Redacted.value(databaseUrl))
  url.port = String(port)
  return Redacted.make(url.toString())
}

/**
 * A TCP proxy in front of the test server whose connections can be frozen:
 * from then on their bytes are dropped both ways and no FIN or RST is sent,
 * like a network that died silently. Connections made afterwards pass.
 * Releasing it closes every connection, so the frozen backends go too.
 */
const freezableProxy = Effect.acquireRelease(
  Effect.callback<{ readonly port: number; readonly freeze: () => void; readonly release: Effect.Effect<void> }>((resume) => {
    const upstreamPort = Number(new URL(Redacted.value(databaseUrl)).port)
    const sockets = new Set<Net.Socket>()
    const pairs = new Set<{ frozen: boolean }>()
    const server = Net.createServer((client) => {
      const pair = { frozen: false }
      pairs.add(pair)
      const upstream = Net.connect(upstreamPort, "127.0.0.1")
      for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
        sockets.add(from)
        from.on("error", () => {})
        from.on("data", (data) => {
          if (!pair.frozen) to.write(data)
        })
        from.on("close", () => {
          sockets.delete(from)
          if (!pair.frozen) to.destroy()
        })
      }
    })
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      resume(Effect.succeed({
        port: typeof address === "object" && address !== null ? address.port : 0,
        freeze: () => {
          for (const pair of pairs) pair.frozen = true
        },
        release: Effect.callback<void>((done) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => done(Effect.void))
        })
      }))
    })
  }),
  (proxy) => proxy.release
)

/** The restart test's pools log their reconnect warnings; the test checks the events instead. */
const quietLogs = Layer.succeed(References.MinimumLogLevel, "Error")

// ---------------------------------------------------------------------------------------------------------

describe("subscribing", () => {
  it.live("a notification sent after Subscribed is never missed (50 fresh subscriptions)", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const pool = yield* WritePool
      const ch = channel("no_miss")
      for (let i = 0; i < 50; i++) {
        yield* Effect.scoped(Effect.gen(function*() {
          const r = yield* read(n.listen(ch))
          const first = yield* r.subscribed(false)
          assert.deepStrictEqual(first, { _tag: "Subscribed", channel: ch, resubscribed: false })
          // Sent from a pool connection right after Subscribed: the LISTEN is in place, nothing may be lost.
          const sender = yield* pool.interaction((conn) => Effect.as(conn.notify(ch, `m-${i}`), conn.pid))
          const event = yield* r.notification()
          assert.deepStrictEqual(event, { _tag: "Notification", channel: ch, payload: `m-${i}`, pid: sender })
          yield* r.close
          // The last subscriber left: the next iteration LISTENs afresh.
          const stats = yield* n.stats
          assert.deepStrictEqual(stats.channels, [])
          assert.strictEqual(stats.subscribers, 0)
        }))
      }
      assert.strictEqual((yield* n.stats).delivered, 50)
    }).pipe(Effect.provide(h.pools())))

  it.live("the last subscriber leaving (interrupted or ended) UNLISTENs; until then the channel stays", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const ch = channel("refcount")
      const other = channel("refcount_other")

      const subscriber = background(n.listen(ch))
      const a = yield* subscriber
      assert.strictEqual(yield* listenerQuery, `LISTEN ${quoted(ch)}`)
      assert.deepStrictEqual((yield* n.stats).channels, [ch])
      // Another channel's LISTEN becomes the listener's last statement…
      const o = yield* background(n.listen(other).pipe(Stream.take(2)))
      assert.strictEqual(yield* listenerQuery, `LISTEN ${quoted(other)}`)
      // …and a second subscriber of `ch` sends no LISTEN of its own.
      const b = yield* subscriber
      assert.strictEqual(yield* listenerQuery, `LISTEN ${quoted(other)}`)
      assert.strictEqual((yield* n.stats).subscribers, 3)

      // One of two leaves: no UNLISTEN, and the other still receives.
      yield* Fiber.interrupt(a.fiber)
      const afterOne = yield* n.stats
      assert.sameMembers([...afterOne.channels], [ch, other])
      assert.strictEqual(afterOne.subscribers, 2)
      assert.strictEqual(yield* listenerQuery, `LISTEN ${quoted(other)}`)
      yield* n.notify(ch, "to-b")
      assert.strictEqual((yield* b.next).payload, "to-b")

      // The last one leaves: UNLISTEN, seen by the server.
      yield* Fiber.interrupt(b.fiber)
      const afterBoth = yield* n.stats
      assert.deepStrictEqual(afterBoth.channels, [other])
      assert.strictEqual(afterBoth.subscribers, 1)
      assert.strictEqual(yield* listenerQuery, `UNLISTEN ${quoted(ch)}`)
      // Nothing sent to `ch` now reaches anyone, while `other` still works.
      const before = (yield* n.stats).delivered
      yield* n.notify(ch, "to-nobody")
      yield* n.notify(other, "to-other")
      assert.strictEqual((yield* o.next).payload, "to-other")
      assert.strictEqual((yield* n.stats).delivered, before + 1)
      assert.strictEqual(yield* Queue.size(a.received), 0)
      assert.strictEqual(yield* Queue.size(b.received), 0)

      // A stream that ends by itself (Stream.take: Subscribed and one notification) leaves too.
      yield* Fiber.join(o.fiber).pipe(Effect.timeout("5 seconds"), Effect.orDie)
      const stats = yield* n.stats
      assert.deepStrictEqual(stats.channels, [])
      assert.strictEqual(stats.subscribers, 0)
      assert.strictEqual(yield* listenerQuery, `UNLISTEN ${quoted(other)}`)
    }).pipe(Effect.scoped, Effect.provide(h.pools({ listenHealthCheckInterval: "1 hour" }))))
})

describe("the listening connection", () => {
  it.live("is one backend per pool, outside the pool, shared by every channel and subscriber", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const write = yield* WritePool
      const readPool = yield* ReadPool
      // No subscriber, no listening connection.
      yield* write.run(sql`SELECT 1`)
      assert.isUndefined(yield* n.listenerPid)
      assert.strictEqual((yield* h.sessions).length, 1)

      const channels = [channel("one_a"), channel("one_b"), channel("one_c")]
      const readers: Array<Reader<string, unknown>> = []
      for (const ch of channels) {
        for (let i = 0; i < 3; i++) {
          const r = yield* read(n.listen(ch))
          yield* r.subscribed(false)
          readers.push(r)
        }
      }
      const pid = yield* listenerPid
      // Every write connection the pool has, held at once: none of them is the listener.
      const held = yield* Deferred.make<void>()
      const pids = yield* Effect.forEach(
        [1, 2],
        () => write.interaction((conn) => Effect.as(Deferred.await(held), conn.pid)),
        { concurrency: "unbounded" }
      ).pipe(Effect.forkChild)
      yield* eventually(Effect.flatMap(write.stats, (s) => check(() => assert.strictEqual(s.used, 2))))
      yield* readPool.run(sql`SELECT 1`)
      const sessions = yield* h.sessions
      const listening = sessions.filter((s) => /^(UN)?LISTEN /.test(s.query))
      assert.deepStrictEqual(listening.map((s) => s.pid), [pid])
      const writeStats = yield* write.stats
      const readStats = yield* readPool.stats
      assert.strictEqual(
        sessions.length,
        1 + writeStats.idle + writeStats.used + readStats.idle + readStats.used,
        "the pools' connections and one listening connection"
      )
      yield* Deferred.succeed(held, undefined)
      assert.notInclude(yield* Fiber.join(pids), pid)
      const stats = yield* n.stats
      assert.sameMembers([...stats.channels], channels)
      assert.strictEqual(stats.subscribers, 9)
      assert.isTrue(stats.connected)
      // Each subscriber gets its channel's notification.
      for (const ch of channels) yield* n.notify(ch, `to ${ch}`)
      for (const [i, r] of readers.entries()) {
        const event = yield* r.notification()
        assert.strictEqual(event.channel, channels[Math.floor(i / 3)])
        assert.strictEqual(event.payload, `to ${event.channel}`)
      }
      assert.strictEqual(yield* n.listenerPid, pid)
    }).pipe(Effect.scoped, Effect.provide(h.pools({ maxSize: 2 }))))

  it.live("works with maxSize 1 while the only connection of each pool is held", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const write = yield* WritePool
      const readPool = yield* ReadPool
      const ch = channel("held")
      const release = yield* Deferred.make<void>()
      const writeHeld = yield* Deferred.make<{ readonly pid: number; readonly notify: (p: string) => Effect.Effect<void, unknown> }>()
      const writer = yield* write.interaction((conn) =>
        Effect.gen(function*() {
          yield* Deferred.succeed(writeHeld, { pid: conn.pid, notify: (p) => conn.notify(ch, p) })
          yield* Deferred.await(release)
        })
      ).pipe(Effect.forkChild)
      const readHeld = yield* Deferred.make<void>()
      const reader = yield* readPool.interaction(() =>
        Effect.andThen(Deferred.succeed(readHeld, undefined), Deferred.await(release))
      ).pipe(Effect.forkChild)
      const conn = yield* Deferred.await(writeHeld)
      yield* Deferred.await(readHeld)
      assert.strictEqual((yield* write.stats).used, 1)
      assert.strictEqual((yield* write.stats).max, 1)

      const r = yield* read(n.listen(ch))
      yield* r.subscribed(false, "2 seconds")
      yield* conn.notify("while held")
      const event = yield* r.notification()
      assert.deepStrictEqual(event, { _tag: "Notification", channel: ch, payload: "while held", pid: conn.pid })
      // Three backends: the two held pool connections and the listener.
      const sessions = yield* h.sessions
      assert.strictEqual(sessions.length, 3)
      assert.include(sessions.map((s) => s.pid), yield* listenerPid)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(writer)
      yield* Fiber.join(reader)
    }).pipe(Effect.scoped, Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("many subscribers of one channel each get every notification, in order", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const ch = channel("many")
      const count = 20
      const messages = Array.from({ length: 10 }, (_, i) => `msg-${i}`)
      const subscribed = yield* Effect.forEach(Array.from({ length: count }), () => Deferred.make<void>())
      const fibers = yield* Effect.forEach(subscribed, (ready) =>
        n.listen(ch).pipe(
          Stream.tap((event) => (event._tag === "Subscribed" ? Deferred.succeed(ready, undefined) : Effect.void)),
          Notifications.payloads,
          Stream.take(messages.length),
          Stream.runCollect,
          Effect.forkChild
        ))
      yield* Effect.forEach(subscribed, (d) => Deferred.await(d)).pipe(Effect.timeout("5 seconds"), Effect.orDie)
      const stats = yield* n.stats
      assert.deepStrictEqual(stats.channels, [ch])
      assert.strictEqual(stats.subscribers, count)
      for (const m of messages) yield* n.notify(ch, m)
      const results = yield* Fiber.joinAll(fibers).pipe(Effect.timeout("5 seconds"), Effect.orDie)
      for (const got of results) assert.deepStrictEqual(got, messages)
      assert.strictEqual((yield* n.stats).delivered, count * messages.length)
      // Every stream took what it wanted and ended: UNLISTENed.
      assert.deepStrictEqual((yield* n.stats).channels, [])
      assert.strictEqual(yield* listenerQuery, `UNLISTEN ${quoted(ch)}`)
    }).pipe(Effect.scoped, Effect.provide(h.pools({ listenHealthCheckInterval: "1 hour" }))))
})

// ---------------------------------------------------------------------------------------------------------

const Change = Schema.Struct({ id: Schema.Number, val1: Schema.Number })
/** A schema whose encoded form differs from its type: `count` travels as a string. */
const Counted = Schema.Struct({ id: Schema.Number, count: Schema.NumberFromString })

describe("typed payloads", () => {
  it.live("listen with a Schema decodes, notify with a Schema encodes", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const ch = channel("typed")
      const typed = yield* read(n.listen(ch, Counted))
      const raw = yield* read(n.listen(ch))
      yield* typed.subscribed(false)
      yield* raw.subscribed(false)
      yield* n.notify(ch, { id: 7, count: 42 }, Counted)
      const decoded = yield* typed.notification()
      assert.deepStrictEqual(decoded.payload, { id: 7, count: 42 })
      assert.strictEqual(decoded.channel, ch)
      // On the wire it is the encoded JSON.
      assert.deepStrictEqual(JSON.parse((yield* raw.notification()).payload), { id: 7, count: "42" })
      // conn.notify with a Schema encodes the same way.
      const write = yield* WritePool
      yield* write.interaction((conn) => conn.notify(ch, { id: 8, count: 1.5 }, Counted))
      assert.deepStrictEqual((yield* typed.notification()).payload, { id: 8, count: 1.5 })
      assert.deepStrictEqual(JSON.parse((yield* raw.notification()).payload), { id: 8, count: "1.5" })
      // A value whose encoding has no JSON text is refused typed, not a defect, and nothing is sent.
      for (const [schema, value] of [[Schema.Undefined, undefined], [Schema.UndefinedOr(Schema.Number), undefined]] as const) {
        const refused = yield* failure(n.notify(ch, value, schema))
        assert.strictEqual(refused._tag, "InvalidInput")
      }
      yield* raw.nothing("200 millis")
    }).pipe(Effect.scoped, Effect.provide(h.pools())))

  it.live("a trigger's pg_notify decodes with a Schema", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const write = yield* WritePool
      const id = 9401
      // Other files update rows too: keep this row's notifications only.
      const r = yield* read(n.listen("notify_test_values", Change).pipe(
        Stream.filter((e) => e._tag === "Subscribed" || e.payload.id === id)
      ))
      yield* r.subscribed(false)
      // An update to the same value fires the trigger and changes nothing for other files.
      const [row] = yield* write.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${id} RETURNING val1`, Schema.Struct({ val1: Schema.Number }))
      const event = yield* r.notification()
      assert.deepStrictEqual(event.payload, { id, val1: row?.val1 ?? Number.NaN })
    }).pipe(Effect.scoped, Effect.provide(h.pools())))


  it.live("an undecodable payload fails that stream only; the others and the listening connection carry on", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const ch = channel("decode")
      const wrongShape = yield* background(n.listen(ch, Change))
      const skipping = yield* read(n.listen(ch, Change, { onDecodeError: "skip" }))
      const plain = yield* read(n.listen(ch))
      yield* skipping.subscribed(false)
      yield* plain.subscribed(false)
      const pid = yield* listenerPid

      yield* n.notify(ch, JSON.stringify({ id: 1, val1: 2 }))
      assert.deepStrictEqual((yield* wrongShape.next).payload, { id: 1, val1: 2 })
      assert.deepStrictEqual((yield* skipping.notification()).payload, { id: 1, val1: 2 })
      assert.strictEqual((yield* plain.notification()).payload, "{\"id\":1,\"val1\":2}")

      /** The error a subscriber's stream failed with. */
      const failedWith = <A, E>(fiber: Fiber.Fiber<A, E>) =>
        Fiber.await(fiber).pipe(
          Effect.timeout("5 seconds"),
          Effect.orDie,
          Effect.flatMap((exit) => {
            const error = Exit.findErrorOption(exit)
            return Option.isSome(error)
              ? Effect.succeed(error.value)
              : Effect.die(new Error(`expected the stream to fail, got ${String(exit)}`))
          })
        )

      // Valid JSON of the wrong shape.
      const bad = JSON.stringify({ id: "x", val1: 2 })
      yield* n.notify(ch, bad)
      const e1 = yield* failedWith(wrongShape.fiber)
      assert.strictEqual(e1._tag, "PayloadDecodeError")
      if (e1._tag === "PayloadDecodeError") {
        assert.strictEqual(e1.channel, ch)
        assert.strictEqual(e1.payload, bad)
        assert.include(e1.message, ch)
      }
      assert.strictEqual((yield* plain.notification()).payload, bad)

      // Not JSON at all, for a subscriber that joins now.
      const notJson = yield* background(n.listen(ch, Change))
      yield* n.notify(ch, "not json {")
      const e2 = yield* failedWith(notJson.fiber)
      assert.strictEqual(e2._tag, "PayloadDecodeError")
      if (e2._tag === "PayloadDecodeError") {
        assert.strictEqual(e2.channel, ch)
        assert.strictEqual(e2.payload, "not json {")
      }
      assert.strictEqual((yield* plain.notification()).payload, "not json {")

      // The skipping subscriber skipped both and goes on; so does the plain one.
      yield* n.notify(ch, JSON.stringify({ id: 3, val1: 4 }))
      assert.deepStrictEqual((yield* skipping.notification()).payload, { id: 3, val1: 4 })
      assert.strictEqual((yield* plain.notification()).payload, "{\"id\":3,\"val1\":4}")
      // The same listening connection throughout; the failed subscribers left.
      assert.strictEqual(yield* listenerPid, pid)
      const stats = yield* n.stats
      assert.isTrue(stats.connected)
      assert.strictEqual(stats.reconnects, 0)
      assert.strictEqual(stats.subscribers, 2)
      assert.deepStrictEqual(stats.channels, [ch])
    }).pipe(Effect.scoped, Effect.provide(h.pools())))
})

// ---------------------------------------------------------------------------------------------------------

describe("reconnecting", () => {
  it.live("a terminated listening backend is replaced: Subscribed { resubscribed: true }, then delivery", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const ch1 = channel("terminated_1")
      const ch2 = channel("terminated_2")
      const r1 = yield* read(n.listen(ch1))
      const r2 = yield* read(n.listen(ch2, Change))
      yield* r1.subscribed(false)
      yield* r2.subscribed(false)
      const before = yield* listenerPid

      const [killed] = yield* h.observe<{ ok: boolean }>("SELECT pg_terminate_backend($1) AS ok", [before])
      assert.isTrue(killed?.ok)
      assert.deepStrictEqual(yield* r1.subscribed(true, "10 seconds"), { _tag: "Subscribed", channel: ch1, resubscribed: true })
      assert.deepStrictEqual(yield* r2.subscribed(true, "10 seconds"), { _tag: "Subscribed", channel: ch2, resubscribed: true })

      const after = yield* listenerPid
      assert.notStrictEqual(after, before)
      yield* eventually(Effect.flatMap(backend(before), (row) => check(() => assert.isUndefined(row))))
      const row = yield* backend(after)
      assert.strictEqual(row?.application_name, h.appName)
      assert.match(row?.query ?? "", /^LISTEN /)
      const stats = yield* n.stats
      assert.isTrue(stats.connected)
      assert.strictEqual(stats.reconnects, 1)
      assert.sameMembers([...stats.channels], [ch1, ch2])

      yield* n.notify(ch1, "after")
      yield* n.notify(ch2, { id: 5, val1: 6 }, Change)
      assert.strictEqual((yield* r1.notification()).payload, "after")
      assert.deepStrictEqual((yield* r2.notification()).payload, { id: 5, val1: 6 })
      // A subscriber that joins now is subscribed for the first time.
      const r3 = yield* read(n.listen(ch1))
      yield* r3.subscribed(false)
      yield* n.notify(ch1, "third")
      assert.strictEqual((yield* r1.notification()).payload, "third")
      assert.strictEqual((yield* r3.notification()).payload, "third")
    }).pipe(Effect.scoped, Effect.provide(h.pools({ listenHealthCheckInterval: "500 millis" }))))

  it.live("a full server restart: resubscribed and delivering afterwards; a policy that gives up fails with ListenerGaveUp", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      const config: DbPool.Config = {
        url: server.url,
        maxSize: 2,
        acquireTimeout: "3 seconds",
        connectTimeout: "2 seconds",
        applicationName: `${h.appName}-restart`,
        listenHealthCheckInterval: "500 millis"
      }
      const patientPools = yield* Layer.build(DbPool.layer(config).pipe(Layer.provide(quietLogs)))
      const impatientPools = yield* Layer.build(
        DbPool.layer({ ...config, listenReconnect: Schedule.recurs(2) }).pipe(Layer.provide(quietLogs))
      )
      const patient = Context.get(patientPools, Notifications.Notifications)
      const impatient = Context.get(impatientPools, Notifications.Notifications)
      const ch = channel("restart")
      const leaving = channel("restart_leaving")
      const rp = yield* read(patient.listen(ch))
      const ri = yield* read(impatient.listen(ch))
      const rl = yield* read(patient.listen(leaving))
      yield* rp.subscribed(false)
      yield* ri.subscribed(false)
      yield* rl.subscribed(false)
      yield* patient.notify(ch, "before")
      assert.strictEqual((yield* rp.notification()).payload, "before")
      assert.strictEqual((yield* ri.notification()).payload, "before")
      const pidBefore = yield* patient.listenerPid

      yield* server.stop
      // With the server down, three failed connects end the impatient policy: its stream fails.
      const gaveUp = yield* ri.failure("10 seconds")
      assert.strictEqual(gaveUp._tag, "ListenerGaveUp")
      assert.isFalse((yield* impatient.stats).connected)
      // The patient listener keeps trying; its stream neither fails nor emits while the server is down.
      yield* rp.nothing("1 second")
      assert.isFalse((yield* patient.stats).connected)
      // While it is down, a subscriber joins one channel and the only subscriber of another leaves.
      const joining = channel("restart_joining")
      const rj = yield* read(patient.listen(joining))
      const joined = yield* rj.subscribed(false, "15 seconds").pipe(Effect.forkChild)
      yield* eventually(Effect.flatMap(patient.stats, (s) => check(() => assert.strictEqual(s.subscribers, 3))))
      yield* rl.close
      assert.strictEqual((yield* patient.stats).subscribers, 2)
      yield* server.start
      const accepting = Date.now()

      assert.deepStrictEqual(yield* rp.subscribed(true, "15 seconds"), { _tag: "Subscribed", channel: ch, resubscribed: true })
      // The default policy probes at least every 500 ms while the server is down: back within a second of it accepting.
      assert.isBelow(Date.now() - accepting, 1000, "resubscribed within 1 s of the server accepting connections")
      // The one that joined while down is subscribed for the first time.
      assert.deepStrictEqual(yield* Fiber.join(joined), { _tag: "Subscribed", channel: joining, resubscribed: false })
      const pidAfter = yield* patient.listenerPid
      assert.isDefined(pidAfter)
      assert.notStrictEqual(pidAfter, pidBefore)
      const stats = yield* patient.stats
      assert.isTrue(stats.connected)
      // The channel left while down is not LISTENed again.
      assert.sameMembers([...stats.channels], [ch, joining])
      assert.isAtLeast(stats.reconnects, 1)
      // The write pool's connections died with the server; the first use of one may report it.
      yield* patient.notify(ch, "after").pipe(
        Effect.retry({ times: 3, while: (e) => e._tag === "ConnectionLost" })
      )
      yield* patient.notify(joining, "to the late joiner")
      assert.strictEqual((yield* rp.notification()).payload, "after")
      assert.strictEqual((yield* rj.notification()).payload, "to the late joiner")
    }).pipe(
      Effect.scoped,
      Effect.provide(embeddedPostgres({ sqlFile: "sql/test_schema.sql", settings: { "dbpool.seed_rows": "100" }, alwaysEmbedded: true }))
    ))

  it.live("a connection that goes silent (no FIN, no RST) is found by the health check and replaced", () =>
    Effect.gen(function*() {
      const proxy = yield* freezableProxy
      return yield* Effect.gen(function*() {
        const n = yield* Notifications.Notifications
        const ch = channel("silent")
        const r = yield* read(n.listen(ch))
        yield* r.subscribed(false)
        const before = yield* listenerPid
        // Sent from outside the pools: the pools' own connections go through the proxy too.
        yield* h.observe("SELECT pg_notify($1, 'through the proxy')", [ch])
        assert.strictEqual((yield* r.notification()).payload, "through the proxy")

        proxy.freeze()
        // The health check's round trip gets no answer; nothing else tells the client.
        assert.deepStrictEqual(yield* r.subscribed(true, "15 seconds"), { _tag: "Subscribed", channel: ch, resubscribed: true })
        const after = yield* listenerPid
        assert.notStrictEqual(after, before)
        // The server never heard of the cut (the health check's query never reached it): the old backend is still there.
        const old = yield* backend(before)
        assert.strictEqual(old?.application_name, h.appName)
        assert.strictEqual(old?.query, `LISTEN ${quoted(ch)}`)
        assert.strictEqual((yield* n.stats).reconnects, 1)
        yield* h.observe("SELECT pg_notify($1, 'after the cut')", [ch])
        assert.strictEqual((yield* r.notification()).payload, "after the cut")
      }).pipe(
        Effect.scoped,
        Effect.provide(h.pools({ url: withPort(proxy.port), listenHealthCheckInterval: "300 millis" }))
      )
    }).pipe(Effect.scoped))

  it.live("closing the pool fails running streams with PoolClosed; later listen and notify fail the same", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const pools = yield* Layer.buildWithScope(h.pools(), scope)
      const n = Context.get(pools, Notifications.Notifications)
      const ch = channel("closed")
      const plain = yield* read(n.listen(ch))
      const typed = yield* read(n.listen(ch, Change))
      const full = yield* read(n.listen(ch, { bufferSize: 2 }))
      yield* plain.subscribed(false)
      yield* typed.subscribed(false)
      yield* full.subscribed(false)
      // One subscriber's buffer is full when the pool closes: the failure still reaches it, after what it kept.
      for (let i = 0; i < 5; i++) yield* n.notify(ch, JSON.stringify({ id: i, val1: i }))
      for (let i = 0; i < 5; i++) {
        assert.strictEqual((yield* plain.notification()).payload, JSON.stringify({ id: i, val1: i }))
        assert.deepStrictEqual((yield* typed.notification()).payload, { id: i, val1: i })
      }
      yield* Scope.close(scope, Exit.void)
      const e1 = yield* plain.failure()
      const e2 = yield* typed.failure()
      assert.strictEqual(e1._tag, "PoolClosed")
      assert.strictEqual(e2._tag, "PoolClosed")
      const [kept, e3] = yield* full.eventsThenFailure()
      assert.strictEqual(e3._tag, "PoolClosed")
      assert.isAtMost(kept.length, 3)
      assert.deepStrictEqual(kept.map((e) => e._tag === "Notification" ? e.payload : e._tag), [0, 1, 2].slice(0, kept.length).map((i) => JSON.stringify({ id: i, val1: i })))
      const late = yield* read(n.listen(ch))
      assert.strictEqual((yield* late.failure())._tag, "PoolClosed")
      assert.strictEqual((yield* failure(n.notify(ch, "x")))._tag, "PoolClosed")
      assert.isFalse((yield* n.stats).connected)
    }).pipe(Effect.scoped))

  it.live("closing the pool while the listener reconnects leaves no connection behind", () =>
    Effect.gen(function*() {
      for (const delay of [0, 1, 3, 6, 10, 20, 40]) {
        const scope = yield* Scope.make()
        const pools = yield* Layer.buildWithScope(h.pools(), scope)
        const n = Context.get(pools, Notifications.Notifications)
        // In the background, so that a Subscribed { resubscribed: true } before the close is fine.
        const r = yield* background(n.listen(channel("closed_reconnecting")))
        const pid = yield* n.listenerPid
        yield* h.observe("SELECT pg_terminate_backend($1)", [pid])
        yield* Effect.sleep(delay)
        yield* Scope.close(scope, Exit.void)
        const exit = yield* Fiber.await(r.fiber).pipe(Effect.timeout("5 seconds"), Effect.orDie)
        assert.strictEqual(Option.getOrUndefined(Exit.findErrorOption(exit))?._tag, "PoolClosed", `after a delay of ${delay} ms`)
        yield* eventually(Effect.flatMap(h.sessions, (s) => check(() => assert.deepStrictEqual(s, [], `after a delay of ${delay} ms`))))
      }
    }).pipe(Effect.scoped))
})

// ---------------------------------------------------------------------------------------------------------

describe("notify", () => {
  it.live("payloads up to 7999 bytes are delivered; 8000 bytes fail with PayloadTooLarge before reaching the server", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const write = yield* WritePool
      const ch = channel("size")
      const r = yield* read(n.listen(ch))
      yield* r.subscribed(false)
      const ascii = "a".repeat(7999)
      const twoByte = "é".repeat(3999) + "x"
      assert.strictEqual(Buffer.byteLength(twoByte), 7999)
      yield* n.notify(ch, ascii)
      yield* n.notify(ch, twoByte)
      assert.strictEqual((yield* r.notification()).payload, ascii)
      assert.strictEqual((yield* r.notification()).payload, twoByte)

      // The pool's only connection is held: a refused payload needs none (no PoolTimeout) and sends nothing.
      const release = yield* Deferred.make<void>()
      const held = yield* Deferred.make<Connection.Connection>()
      const holder = yield* write.interaction((conn) => Effect.andThen(Deferred.succeed(held, conn), Deferred.await(release))).pipe(
        Effect.forkChild
      )
      const conn = yield* Deferred.await(held)
      const queryBefore = (yield* backend(conn.pid))?.query
      for (const [payload, bytes] of [["a".repeat(8000), 8000], ["é".repeat(4000), 8000], ["a".repeat(100_000), 100_000]] as const) {
        const viaService = yield* failure(n.notify(ch, payload))
        const viaConnection = yield* failure(conn.notify(ch, payload))
        for (const e of [viaService, viaConnection]) {
          assert.strictEqual(e._tag, "PayloadTooLarge")
          if (e._tag === "PayloadTooLarge") {
            assert.strictEqual(e.channel, ch)
            assert.strictEqual(e.bytes, bytes)
            assert.strictEqual(e.limit, 7999)
          }
        }
      }
      // The limit applies to the encoded JSON of a Schema payload.
      const Text = Schema.Struct({ text: Schema.String })
      const fits = { text: "c".repeat(7999 - JSON.stringify({ text: "" }).length) }
      const tooLarge = yield* failure(n.notify(ch, { text: fits.text + "c" }, Text))
      assert.strictEqual(tooLarge._tag, "PayloadTooLarge")
      if (tooLarge._tag === "PayloadTooLarge") assert.strictEqual(tooLarge.bytes, 8000)
      assert.strictEqual((yield* backend(conn.pid))?.query, queryBefore, "nothing was sent on the held connection")
      yield* conn.notify(ch, "still fine")
      assert.strictEqual((yield* r.notification()).payload, "still fine")
      yield* conn.notify(ch, fits, Text)
      assert.strictEqual(Buffer.byteLength((yield* r.notification()).payload), 7999)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)

      // In a partial transaction: refused before the server, so the transaction is not aborted and commits.
      yield* Effect.scoped(Effect.gen(function*() {
        const tx = yield* write.partialTransaction()
        assert.strictEqual((yield* failure(tx.notify(ch, "b".repeat(8000))))._tag, "PayloadTooLarge")
        yield* tx.notify(ch, "committed after a refused payload")
        yield* tx.commit
      }))
      assert.strictEqual((yield* r.notification()).payload, "committed after a refused payload")
      yield* r.nothing("200 millis")
    }).pipe(Effect.scoped, Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("inside transactions: delivered at commit only, never on rollback or interruption", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const write = yield* WritePool
      const ch = channel("tx")
      const r = yield* read(n.listen(ch))
      yield* r.subscribed(false)

      // An open transaction that has notified: nothing arrives, while a notification from outside it does.
      const notified = yield* Deferred.make<number>()
      const commit = yield* Deferred.make<void>()
      const tx = yield* write.transaction((conn) =>
        Effect.gen(function*() {
          yield* conn.notify(ch, "committed")
          yield* Deferred.succeed(notified, conn.pid)
          yield* Deferred.await(commit)
        })
      ).pipe(Effect.forkChild)
      const txPid = yield* Deferred.await(notified)
      assert.strictEqual((yield* backend(txPid))?.state, "idle in transaction")
      yield* n.notify(ch, "outside")
      assert.strictEqual((yield* r.notification()).payload, "outside")
      yield* r.nothing("500 millis")
      yield* Deferred.succeed(commit, undefined)
      yield* Fiber.join(tx)
      const delivered = yield* r.notification()
      assert.deepStrictEqual(delivered, { _tag: "Notification", channel: ch, payload: "committed", pid: txPid })

      // Rolled back by a failure.
      const rolledBack = yield* failure(write.transaction((conn) => Effect.andThen(conn.notify(ch, "rolled back"), Effect.fail(new Boom()))))
      assert.strictEqual(rolledBack._tag, "Boom")
      // Rolled back by interruption.
      const started = yield* Deferred.make<void>()
      const interrupted = yield* write.transaction((conn) =>
        Effect.andThen(conn.notify(ch, "interrupted"), Effect.andThen(Deferred.succeed(started, undefined), Effect.never))
      ).pipe(Effect.forkChild)
      yield* Deferred.await(started)
      yield* Fiber.interrupt(interrupted)
      // A partial transaction whose scope closes without commit.
      yield* Effect.scoped(Effect.gen(function*() {
        const ptx = yield* write.partialTransaction()
        yield* ptx.notify(ch, "partial, not committed")
      }))
      // A partial transaction rolled back explicitly.
      yield* Effect.scoped(Effect.gen(function*() {
        const ptx = yield* write.partialTransaction()
        yield* ptx.notify(ch, "partial, rolled back")
        yield* ptx.rollback
      }))
      // A committed partial transaction: nothing before commit, delivered after.
      const ptxPid = yield* Effect.scoped(Effect.gen(function*() {
        const ptx = yield* write.partialTransaction()
        yield* ptx.notify(ch, "partial, committed")
        yield* r.nothing("300 millis")
        yield* ptx.commit
        return ptx.pid
      }))
      yield* n.notify(ch, "end")
      const rest: Array<Notifications.Notification<string>> = []
      for (let i = 0; i < 2; i++) rest.push(yield* r.notification())
      assert.deepStrictEqual(rest.map((e) => e.payload), ["partial, committed", "end"])
      assert.strictEqual(rest[0]?.pid, ptxPid)
      yield* r.nothing("300 millis")
    }).pipe(Effect.scoped, Effect.provide(h.pools())))
})

// ---------------------------------------------------------------------------------------------------------

describe("channel names", () => {
  it.live("hostile names round-trip: each delivers on exactly its channel, and nothing is executed", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const write = yield* WritePool
      const names = [
        "MixedCase",
        "mixedcase",
        "with spaces",
        "dq\"inside\"",
        "sq'inside'",
        "x\"; DROP TABLE test_values; --",
        "x'); DROP TABLE test_values; --",
        "back\\slash",
        "tab\tand\nnewline",
        "select",
        "ünïcödé 🚀 emoji",
        "é".repeat(31) + "x" // 63 bytes, the longest name Postgres keeps whole
      ]
      assert.strictEqual(Buffer.byteLength(names[names.length - 1] ?? ""), 63)
      const readers: Array<Reader<string, unknown>> = []
      for (const name of names) {
        const r = yield* read(n.listen(name))
        assert.deepStrictEqual(yield* r.subscribed(false), { _tag: "Subscribed", channel: name, resubscribed: false })
        readers.push(r)
      }
      assert.sameMembers([...(yield* n.stats).channels], names)
      // From the pool, and from a session outside it with the raw name: the server-side name is exactly this one.
      for (const [i, name] of names.entries()) yield* n.notify(name, `pool-${i}`)
      for (const [i, name] of names.entries()) yield* h.observe("SELECT pg_notify($1, $2)", [name, `raw-${i}`])
      for (const [i, name] of names.entries()) {
        const r = readers[i]
        assert.isDefined(r)
        if (r === undefined) continue
        const first = yield* r.notification()
        const second = yield* r.notification()
        assert.deepStrictEqual([first.channel, first.payload], [name, `pool-${i}`])
        assert.deepStrictEqual([second.channel, second.payload], [name, `raw-${i}`])
      }
      for (const r of readers) yield* r.nothing("50 millis")
      // Every UNLISTEN quoted right, too: afterwards nothing is listened.
      for (const r of readers) yield* r.close
      assert.deepStrictEqual((yield* n.stats).channels, [])
      assert.isTrue((yield* n.stats).connected)
      // The table survived.
      const [table] = yield* h.observe<{ t: string | null; count: number }>(
        "SELECT to_regclass('public.test_values')::text AS t, (SELECT count(*)::int FROM test_values) AS count"
      )
      assert.strictEqual(table?.t, "test_values")
      assert.isAbove(table?.count ?? 0, 0)
      yield* write.run(sql`SELECT 1 FROM test_values LIMIT 1`)
    }).pipe(Effect.scoped, Effect.provide(h.pools())))

  it.live("a channel the server refuses to LISTEN fails its own subscribers only; the listening connection and the others carry on", () =>
    Effect.gen(function*() {
      // A LATIN1 database has no emoji: LISTEN on such a name fails on the server (22P05), not the connection.
      const db = `dbpool_latin1_${process.pid}`
      yield* Effect.acquireRelease(
        h.observe(`CREATE DATABASE ${db} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`),
        () => h.observe(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`)
      )
      const url = new URL(Redacted.value(databaseUrl))
      url.pathname = `/${db}`
      yield* Effect.gen(function*() {
        const n = yield* Notifications.Notifications
        const refused = "emoji 🚀"
        // The pool's first subscriber: the listener connects, then LISTENs it.
        const first = yield* read(n.listen(refused))
        const atConnect = yield* first.failure("10 seconds")
        assert.strictEqual(atConnect._tag, "InvalidInput")
        const good = yield* read(n.listen(channel("good")))
        yield* good.subscribed(false)
        const pid = yield* n.listenerPid
        // Subscribed while connected.
        const second = yield* read(n.listen(refused))
        const whileConnected = yield* second.failure()
        assert.strictEqual(whileConnected._tag, "InvalidInput")
        assert.include(whileConnected.message, "22P05")
        const stats = yield* n.stats
        assert.strictEqual(stats.reconnects, 0)
        assert.strictEqual(stats.subscribers, 1)
        assert.strictEqual(yield* n.listenerPid, pid)
        yield* n.notify(stats.channels[0]!, "after")
        assert.strictEqual((yield* good.notification()).payload, "after")
      }).pipe(Effect.scoped, Effect.provide(h.pools({ url: Redacted.make(url.toString()) })))
    }).pipe(Effect.scoped))

  it.live("names of more than 63 bytes, empty names and NUL fail with InvalidInput", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const write = yield* WritePool
      // Lone surrogates are sent as U+FFFD: "\uD800" and "\uFFFD" would be one channel on the server, two here.
      for (const name of ["", "a".repeat(64), "é".repeat(32), "nul\u0000byte", "\uD800", "a\uDC00b"]) {
        const r = yield* read(n.listen(name))
        const e = yield* r.failure()
        assert.strictEqual(e._tag, "InvalidInput", JSON.stringify(name))
        const typed = yield* read(n.listen(name, Change))
        assert.strictEqual((yield* typed.failure())._tag, "InvalidInput")
        assert.strictEqual((yield* failure(n.notify(name, "x")))._tag, "InvalidInput")
        assert.strictEqual((yield* failure(write.interaction((conn) => conn.notify(name, "x"))))._tag, "InvalidInput")
        assert.strictEqual(
          (yield* failure(Effect.scoped(Effect.flatMap(write.partialTransaction(), (tx) => tx.notify(name, "x")))))._tag,
          "InvalidInput"
        )
      }
      const stats = yield* n.stats
      assert.deepStrictEqual(stats.channels, [])
      assert.strictEqual(stats.subscribers, 0)
    }).pipe(Effect.scoped, Effect.provide(h.pools())))
})

// ---------------------------------------------------------------------------------------------------------

describe("slow subscribers", () => {
  it.live("a slow subscriber whose buffer is full still gets Subscribed { resubscribed: true } after a reconnect", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const ch = channel("slow_reconnect")
      const bufferSize = 4
      const slow = yield* read(n.listen(ch, { bufferSize }))
      yield* slow.subscribed(false)
      for (let i = 0; i < 10; i++) yield* n.notify(ch, `n-${i}`)
      yield* eventually(Effect.flatMap(n.stats, (s) => check(() => assert.isAtLeast(s.dropped, 10 - bufferSize - 1))))
      yield* h.observe("SELECT pg_terminate_backend($1)", [yield* listenerPid])
      yield* eventually(Effect.flatMap(n.stats, (s) => check(() => assert.isTrue(s.connected && s.reconnects === 1))))
      // Whatever was dropped, the cue to resync is not: it comes after what was kept from before.
      const events: Array<Event<string>> = []
      while (true) {
        const e = yield* slow.next("300 millis").pipe(Effect.exit)
        if (Exit.isFailure(e)) break
        events.push(e.value)
      }
      const resubscribed = events.findIndex((e) => e._tag === "Subscribed")
      assert.isAtLeast(resubscribed, 0, `a Subscribed event among ${JSON.stringify(events)}`)
      assert.deepStrictEqual(events[resubscribed], { _tag: "Subscribed", channel: ch, resubscribed: true })
      assert.strictEqual(resubscribed, events.length - 1)
      assert.isTrue(events.slice(0, resubscribed).every((e) => e._tag === "Notification"))
      // And it keeps receiving.
      yield* n.notify(ch, "after")
      assert.strictEqual((yield* slow.notification()).payload, "after")
    }).pipe(Effect.scoped, Effect.provide(h.pools({ listenHealthCheckInterval: "500 millis" }))))

  it.live("a reconnect while the first Subscribed is unread keeps it first; only a notification makes room, counted as dropped", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const ch = channel("unread_subscribed")
      const slow = yield* read(n.listen(ch, { bufferSize: 3 }))
      const delivered = (yield* n.stats).delivered
      yield* eventually(Effect.flatMap(n.stats, (s) => check(() => assert.deepStrictEqual(s.channels, [ch]))))
      yield* n.notify(ch, "m1")
      yield* n.notify(ch, "m2")
      // Subscribed, m1 and m2 fill the buffer; nothing has been read.
      yield* eventually(Effect.flatMap(n.stats, (s) => check(() => assert.strictEqual(s.delivered, delivered + 2))))
      yield* h.observe("SELECT pg_terminate_backend($1)", [yield* listenerPid])
      yield* eventually(Effect.flatMap(n.stats, (s) => check(() => assert.isTrue(s.connected && s.reconnects === 1))), "10 seconds")
      assert.deepStrictEqual(yield* slow.next(), { _tag: "Subscribed", channel: ch, resubscribed: false })
      assert.strictEqual((yield* slow.notification()).payload, "m2")
      yield* slow.subscribed(true)
      assert.strictEqual((yield* n.stats).dropped, 1)
    }).pipe(Effect.scoped, Effect.provide(h.pools({ listenHealthCheckInterval: "500 millis" }))))

  it.live("a bufferSize that is not a whole number of at least 1 is InvalidInput", () =>
    Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      for (const bufferSize of [0, -1, 1.5, Number.NaN]) {
        const r = yield* read(n.listen(channel("buffer"), { bufferSize }))
        assert.strictEqual((yield* r.failure())._tag, "InvalidInput", String(bufferSize))
      }
      assert.deepStrictEqual((yield* n.stats).channels, [])
    }).pipe(Effect.scoped, Effect.provide(h.pools())))

  it.live("a slow subscriber drops its own overflow and holds up no one", () => {
    const warnings: Array<Readonly<Record<string, unknown>>> = []
    const logger = Logger.make((options) => {
      const message = String(Array.isArray(options.message) ? options.message.join(" ") : options.message)
      if (message.includes("slow subscriber")) warnings.push(options.fiber.getRef(References.CurrentLogAnnotations))
    })
    return Effect.gen(function*() {
      const n = yield* Notifications.Notifications
      const ch = channel("slow")
      const bufferSize = 4
      const slow = yield* read(n.listen(ch, { bufferSize }))
      const fast = yield* read(n.listen(ch))
      yield* slow.subscribed(false)
      yield* fast.subscribed(false)
      const sent = Array.from({ length: 50 }, (_, i) => `n-${i}`)
      for (const m of sent) yield* n.notify(ch, m)
      // The fast one gets every notification while the slow one reads nothing.
      for (const m of sent) assert.strictEqual((yield* fast.notification()).payload, m)
      const dropped = (yield* n.stats).dropped
      assert.isAtLeast(dropped, sent.length - bufferSize - 1)

      // The slow one now reads: the oldest few it had room for; the newer ones were dropped.
      const early: Array<string> = []
      while (true) {
        const s = yield* slow.notification("300 millis").pipe(Effect.exit)
        if (Exit.isFailure(s)) break
        early.push(s.value.payload)
      }
      assert.isAtLeast(early.length, 1)
      assert.isAtMost(early.length, bufferSize + 1)
      assert.deepStrictEqual(early, sent.slice(0, early.length))
      assert.strictEqual(dropped, sent.length - early.length, "every notification is delivered or counted as dropped")
      // Once it keeps up, it gets what is sent after.
      for (const m of ["later-0", "later-1", "later-2"]) yield* n.notify(ch, m)
      for (const m of ["later-0", "later-1", "later-2"]) {
        assert.strictEqual((yield* slow.notification()).payload, m)
        assert.strictEqual((yield* fast.notification()).payload, m)
      }
      assert.strictEqual((yield* n.stats).dropped, dropped)
      // Its stream warned about the drops, with the count.
      const total = warnings.reduce((sum, w) => sum + Number(w["dropped"] ?? 0), 0)
      assert.strictEqual(total, dropped)
      assert.isTrue(warnings.every((w) => w["channel"] === ch))
    }).pipe(
      Effect.scoped,
      Effect.provide(h.pools()),
      Effect.provide(Logger.layer([logger]))
    )
  })
})
