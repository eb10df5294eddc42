/**
 * The listening connection of a pool: one connection outside the pool's size,
 * shared by every channel and subscriber, LISTEN/UNLISTEN counted per
 * channel, reconnected with backoff and re-LISTENed after it dies.
 *
 * It is a node-postgres client rather than postgres.js: postgres.js drops the
 * sending backend's pid from notifications, and subscribers get the pid.
 */
import { Cause, Clock, Deferred, Duration, Effect, Exit, Fiber, Queue, Redacted, Schedule, Scope, Semaphore } from "effect"
import pg from "pg"
import * as DbError from "../DbError.ts"
import type { ListenEvent, ListenerStats } from "../Notifications.ts"
import { quoteIdentifier } from "./literal.ts"
import * as Server from "./server.ts"
import * as Telemetry from "./telemetry.ts"

export interface ListenerSettings {
  readonly name: string
  readonly url: Redacted.Redacted<string>
  readonly server: string
  readonly applicationName: string
  readonly connectTimeoutMillis: number
  readonly password: Effect.Effect<Redacted.Redacted<string>, unknown> | undefined
  /** node-postgres's `ssl` option, when given; otherwise the URL's `sslmode`. */
  readonly ssl: pg.ClientConfig["ssl"] | undefined
  readonly reconnect: Schedule.Schedule<unknown, unknown>
  /** How often the idle listening connection is checked with a round trip (a cut network sends no FIN). */
  readonly healthCheckInterval: Duration.Duration
}

export interface Subscriber {
  readonly queue: Queue.Queue<ListenEvent<string>, DbError.ListenError | Cause.Done>
  /**
   * The listening session whose `Subscribed` this subscriber last got (0: none yet; later ones are
   * resubscriptions). Only that session's notifications reach it, so none comes before its `Subscribed`.
   */
  session: number
  dropped: number
}

export interface Listener {
  readonly subscribe: (channel: string, subscriber: Subscriber) => Effect.Effect<void, DbError.ListenError>
  readonly unsubscribe: (channel: string, subscriber: Subscriber) => Effect.Effect<void>
  readonly stats: Effect.Effect<ListenerStats>
  /** The backend pid of the listening connection, if connected (for tests and diagnostics). */
  readonly pid: Effect.Effect<number | undefined>
}

/** The largest channel name Postgres keeps (NAMEDATALEN - 1 bytes); LISTEN would silently truncate a longer one. */
export const maxChannelBytes = 63

/** A UTF-16 surrogate without its pair: sent as U+FFFD, so two names would be one channel on the server. */
const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

export const validateChannel = (channel: string): Effect.Effect<void, DbError.InvalidInput> => {
  const bytes = Buffer.byteLength(channel, "utf8")
  if (channel.length === 0 || bytes > maxChannelBytes || channel.includes("\u0000") || loneSurrogate.test(channel)) {
    return Effect.fail(
      new DbError.InvalidInput({
        message: `a channel name must be 1 to ${maxChannelBytes} bytes of well-formed text without NUL (got ${bytes} bytes)`
      })
    )
  }
  return Effect.void
}

/**
 * The server refused a LISTEN for the channel's name — a data exception (class 22: a name its encoding cannot hold)
 * or a name error (42): the channel is the problem, not the connection. Anything else (a standby's "cannot execute
 * LISTEN during recovery" after a failover, a cancel) is the connection's, and reconnecting deals with it.
 */
const refusedByServer = (cause: unknown): cause is pg.DatabaseError =>
  cause instanceof pg.DatabaseError && cause.severity === "ERROR" && (cause.code?.startsWith("22") === true || cause.code?.startsWith("42") === true)

const refusedChannel = (channel: string, cause: pg.DatabaseError) =>
  new DbError.InvalidInput({ message: `the server refused to LISTEN on ${JSON.stringify(channel)}: ${cause.message} (SQLSTATE ${cause.code})` })

const queryTimeoutMillis = 5000

/** Ends a client, waiting (boundedly) until it has. */
const end = (client: pg.Client): Effect.Effect<void> =>
  Effect.promise(() => client.end().catch(() => undefined)).pipe(Effect.timeout(queryTimeoutMillis), Effect.ignore)

const query = (client: pg.Client, text: string) =>
  Effect.tryPromise({ try: () => client.query(text), catch: (cause) => cause }).pipe(
    Effect.timeoutOrElse({ duration: queryTimeoutMillis, orElse: () => Effect.fail(new Error(`${text} timed out`)) }),
    Effect.asVoid
  )

/** The URL parameters from which node-postgres makes its own `ssl` setting. */
const urlSslParameters = ["ssl", "sslmode", "sslcert", "sslkey", "sslrootcert"]

/**
 * The URL for node-postgres: without its ssl parameters when the `ssl` option is given, which they would override
 * (postgres.js, the pool's driver, lets the option win).
 */
const connectionString = (url: string, ssl: ListenerSettings["ssl"]): string => {
  if (ssl === undefined) return url
  try {
    const u = new URL(url)
    if (!urlSslParameters.some((name) => u.searchParams.has(name))) return url
    for (const name of urlSslParameters) u.searchParams.delete(name)
    return u.toString()
  } catch {
    return url
  }
}

/** A client connected to a standby (in recovery), where LISTEN is refused. */
const onStandby = (c: pg.Client): Promise<boolean> =>
  c.query("SELECT pg_is_in_recovery() AS r").then((result) => result.rows[0]?.["r"] === true)

const plainCause = (u: unknown): Error => {
  const e = new Error(u instanceof Error ? u.message : String(u))
  if (u instanceof Error) e.name = u.name
  return e
}

export const make = (settings: ListenerSettings): Effect.Effect<Listener, never, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const lock = yield* Semaphore.make(1)
    const channels = new Map<string, Set<Subscriber>>()
    let client: pg.Client | undefined
    let clientPid: number | undefined
    let clientSession = 0
    const listened = new Set<string>()
    let supervisor: Fiber.Fiber<void> | undefined
    let closed = false
    let sessions = 0
    /** Numbers each connection attempt; a client's notifications carry the number of the session it serves. */
    let attempts = 0
    const counters = { delivered: 0, dropped: 0 }
    const metrics = Telemetry.listenerMetrics(settings.name, yield* Effect.context<never>())
    /** When the listening connection was last found lost (ms), until it listens again. */
    let lostAt: number | undefined

    /**
     * Subscriber queues offered to since the last flush. Effect's queue wakes a waiting consumer on a later
     * macrotask; waking it in a microtask after the driver's callback returns takes that hop off every
     * notification's latency while keeping the hand-off non-reentrant (no consumer runs inside `deliver`).
     */
    const unflushed = new Set<Subscriber["queue"]>()
    const flush = () => {
      const queues = [...unflushed]
      unflushed.clear()
      for (const queue of queues) Queue.flushUnsafe(queue)
    }

    const deliver = (session: number, message: pg.Notification) => {
      const subscribers = channels.get(message.channel)
      if (subscribers === undefined) return
      const event: ListenEvent<string> = {
        _tag: "Notification",
        channel: message.channel,
        payload: message.payload ?? "",
        pid: message.processId
      }
      for (const subscriber of subscribers) {
        // Its stream starts with Subscribed, and after a reconnect nothing of the new session comes before the new
        // Subscribed (the LISTENs may still be on their way while the first channels already deliver).
        if (subscriber.session !== session) continue
        // A full buffer drops the newest notification for this subscriber only; the others are not held up.
        if (Queue.offerUnsafe(subscriber.queue, event)) {
          counters.delivered++
          if (unflushed.size === 0) queueMicrotask(flush)
          unflushed.add(subscriber.queue)
        } else {
          subscriber.dropped++
          counters.dropped++
        }
      }
    }

    /**
     * A `Subscribed` event is never dropped, even for a slow subscriber whose buffer is full: after a
     * reconnect it is the cue to resync. The oldest buffered notification makes room (counted as dropped);
     * an earlier `Subscribed` stays, so the stream still starts with one. Only a buffer of nothing but
     * `Subscribed` events gives up its oldest.
     */
    const offerSubscribed = (subscriber: Subscriber, event: ListenEvent<string>) => {
      const queue = subscriber.queue
      if (Queue.offerUnsafe(queue, event)) return
      const kept: Array<ListenEvent<string>> = []
      let evicted = false
      for (let n = Queue.sizeUnsafe(queue); n > 0; n--) {
        const taken = Queue.takeUnsafe(queue)
        if (taken === undefined || taken._tag !== "Success") break
        if (!evicted && taken.value._tag === "Notification") evicted = true
        else kept.push(taken.value)
      }
      if (evicted) {
        subscriber.dropped++
        counters.dropped++
      } else {
        kept.shift()
      }
      Queue.offerAllUnsafe(queue, kept)
      Queue.offerUnsafe(queue, event)
    }

    /** Ends a channel the server refused: its subscribers fail with the reason, the others are not touched. */
    const refuse = (channel: string, cause: pg.DatabaseError) => {
      const error = refusedChannel(channel, cause)
      const subscribers = channels.get(channel) ?? []
      // Removed before the queues fail: failing one resumes its reader at once, which may read the stats.
      channels.delete(channel)
      for (const subscriber of subscribers) Queue.failCauseUnsafe(subscriber.queue, Cause.fail(error))
      return error
    }

    const failAll = (error: DbError.ListenError) => {
      const all = [...channels.values()]
      // Cleared first, as in `refuse`.
      channels.clear()
      for (const subscribers of all) {
        for (const subscriber of subscribers) Queue.failCauseUnsafe(subscriber.queue, Cause.fail(error))
      }
    }

    const candidates = Server.hostUrls(Redacted.value(settings.url))
    const connectWith = (password: Redacted.Redacted<string> | undefined) =>
      candidates.length === 1
        ? connectTo(password, candidates[0]!)
        // Several hosts (a primary and its standbys): the first that answers and is not in recovery.
        : Effect.gen(function*() {
          let last: unknown = new Error("no host of the URL is a primary")
          for (const url of candidates) {
            const connected = yield* Effect.result(connectTo(password, url))
            if (connected._tag === "Failure") {
              last = connected.failure
              continue
            }
            const c = connected.success
            const standby = yield* Effect.tryPromise({ try: () => onStandby(c), catch: (cause) => cause }).pipe(Effect.result)
            if (standby._tag === "Success" && !standby.success) return c
            last = standby._tag === "Failure" ? standby.failure : new Error("the host is a standby: LISTEN needs the primary")
            yield* end(c)
          }
          return yield* Effect.fail(last)
        })
    const connectTo = (password: Redacted.Redacted<string> | undefined, url: string) => Effect.tryPromise({
      // Interrupted while connecting (the pool closing during a reconnect), the client must not live on.
      try: async (signal) => {
        const c = new pg.Client({
          connectionString: connectionString(url, settings.ssl),
          application_name: settings.applicationName,
          connectionTimeoutMillis: settings.connectTimeoutMillis,
          keepAlive: true,
          ...(password === undefined ? {} : { password: Redacted.value(password) }),
          ...(settings.ssl === undefined ? {} : { ssl: settings.ssl })
        })
        // An 'error' event without a listener would crash the process; losses are handled below.
        c.on("error", () => {})
        const abandon = () => void c.end().catch(() => {})
        signal.addEventListener("abort", abandon, { once: true })
        try {
          await c.connect()
        } catch (cause) {
          abandon()
          throw cause
        } finally {
          signal.removeEventListener("abort", abandon)
        }
        if (signal.aborted) {
          abandon()
          throw new Error("interrupted while connecting")
        }
        return c
      },
      catch: (cause) => cause
    })
    // The password effect runs at every connect (rotating credentials); its failure is not shown (it may carry a secret).
    const connect = settings.password === undefined
      ? connectWith(undefined)
      : Effect.flatMap(Effect.mapError(settings.password, () => new Error("the password effect failed")), connectWith)

    /** Connects, LISTENs every subscribed channel and tells every subscriber; fails if any step fails. */
    const establish = Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(connect), (c) =>
        // Until the client is the listener's (and the finalizer ends it), any failure or interruption ends it here.
        Effect.onExit(restore(establishOn(c)), (exit) => Exit.isSuccess(exit) ? Effect.void : end(c)))
    )

    const establishOn = (c: pg.Client) => Effect.gen(function*() {
      const session = ++attempts
      const lost = yield* Deferred.make<void>()
      const markLost = () => Deferred.doneUnsafe(lost, Exit.void)
      const onNotification = (message: pg.Notification) => deliver(session, message)
      c.on("end", markLost)
      c.on("error", markLost)
      c.on("notification", onNotification)
      const pidResult = yield* Effect.tryPromise({ try: () => c.query("SELECT pg_backend_pid() AS pid"), catch: (e) => e }).pipe(
        Effect.timeoutOrElse({ duration: queryTimeoutMillis, orElse: () => Effect.fail(new Error("pg_backend_pid() timed out")) })
      )
      yield* lock.withPermits(1)(Effect.gen(function*() {
        for (const channel of [...channels.keys()]) {
          const listened = yield* Effect.result(query(c, `LISTEN ${quoteIdentifier(channel)}`))
          if (listened._tag === "Failure") {
            if (!refusedByServer(listened.failure)) return yield* Effect.fail(listened.failure)
            refuse(channel, listened.failure)
          }
        }
        listened.clear()
        for (const channel of channels.keys()) listened.add(channel)
        client = c
        clientSession = session
        clientPid = Number(pidResult.rows[0]?.pid)
        for (const [channel, subscribers] of channels) {
          for (const subscriber of subscribers) {
            offerSubscribed(subscriber, { _tag: "Subscribed", channel, resubscribed: subscriber.session !== 0 })
            subscriber.session = session
          }
        }
      }))
      return { client: c, lost, onNotification }
    })

    const healthCheck = (c: pg.Client) =>
      Effect.gen(function*() {
        while (true) {
          yield* Effect.sleep(settings.healthCheckInterval)
          yield* query(c, "SELECT 1")
        }
      })

    /** A failed attempt is logged (first, second, fourth, eighth, … in a row), so a listener that cannot connect is seen. */
    let failures = 0
    const attempt = establish.pipe(
      Effect.tapError((cause) => {
        failures++
        if ((failures & (failures - 1)) !== 0) return Effect.void
        return Effect.logWarning("effect-dbpool: listening connection failed, retrying").pipe(
          Effect.annotateLogs({
            pool: settings.name,
            server: settings.server,
            failures,
            // Driver messages name host, port, user and SQLSTATE, never the password.
            error: cause instanceof Error ? cause.message : String(cause)
          })
        )
      }),
      Effect.tap(() => Effect.sync(() => {
        failures = 0
      }))
    )

    const session = Effect.gen(function*() {
      const { client: c, lost, onNotification } = yield* Effect.retry(attempt, settings.reconnect)
      sessions++
      if (lostAt !== undefined) {
        metrics.resubscribed((yield* Clock.currentTimeMillis) - lostAt)
        lostAt = undefined
      }
      if (sessions > 1) {
        yield* Effect.logInfo("effect-dbpool: listener reconnected").pipe(
          Effect.annotateLogs({ pool: settings.name, channels: listened.size })
        )
      }
      // Either the socket reports the loss or a round trip fails or times out.
      yield* Effect.raceFirst(Deferred.await(lost), Effect.ignore(healthCheck(c)))
      lostAt = yield* Clock.currentTimeMillis
      yield* lock.withPermits(1)(Effect.sync(() => {
        client = undefined
        clientPid = undefined
        listened.clear()
      }))
      // A half-closed old socket must not deliver into the new session.
      c.removeListener("notification", onNotification)
      yield* end(c)
      yield* Effect.logWarning("effect-dbpool: listening connection lost, reconnecting").pipe(
        Effect.annotateLogs({ pool: settings.name, server: settings.server })
      )
    })

    const supervise = Effect.forever(session).pipe(
      Effect.catchCause((cause) =>
        lock.withPermits(1)(Effect.sync(() => {
          supervisor = undefined
          failAll(
            new DbError.ListenerGaveUp({
              message: `the listening connection to ${settings.server} could not be re-established within the reconnect policy`,
              // The driver's error may hold a TLS certificate that refers to itself: keep its message, so the error
              // stays printable and JSON-serialisable.
              cause: plainCause(Cause.squash(cause))
            })
          )
        }))
      )
    )

    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closed = true
        failAll(new DbError.PoolClosed({ message: `pool ${settings.name} is closed`, pool: settings.name }))
        const c = client
        client = undefined
        return c === undefined ? Effect.void : end(c)
      })
    )

    const subscribe = (channel: string, subscriber: Subscriber) =>
      lock.withPermits(1)(Effect.gen(function*() {
        if (closed) {
          return yield* new DbError.PoolClosed({ message: `pool ${settings.name} is closed`, pool: settings.name })
        }
        let subscribers = channels.get(channel)
        if (subscribers === undefined) {
          subscribers = new Set()
          channels.set(channel, subscribers)
        }
        subscribers.add(subscriber)
        const c = client
        if (c !== undefined && !listened.has(channel)) {
          const ok = yield* Effect.result(query(c, `LISTEN ${quoteIdentifier(channel)}`))
          if (ok._tag === "Success") listened.add(channel)
          else if (refusedByServer(ok.failure)) return yield* refuse(channel, ok.failure)
          // Otherwise the connection is going: reconnecting LISTENs every channel and sends Subscribed.
          else void c.end().catch(() => {})
        }
        if (client !== undefined && listened.has(channel)) {
          offerSubscribed(subscriber, { _tag: "Subscribed", channel, resubscribed: false })
          subscriber.session = clientSession
        }
        if (supervisor === undefined) supervisor = yield* Effect.forkIn(supervise, scope)
      }))

    const unsubscribe = (channel: string, subscriber: Subscriber) =>
      lock.withPermits(1)(Effect.gen(function*() {
        const subscribers = channels.get(channel)
        if (subscribers === undefined || !subscribers.delete(subscriber) || subscribers.size > 0) return
        channels.delete(channel)
        if (client !== undefined && listened.has(channel)) {
          listened.delete(channel)
          yield* Effect.ignore(query(client, `UNLISTEN ${quoteIdentifier(channel)}`))
        }
      }))

    const stats = Effect.sync((): ListenerStats => {
      let subscribers = 0
      for (const set of channels.values()) subscribers += set.size
      const s: ListenerStats = {
        pool: settings.name,
        connected: client !== undefined,
        channels: [...listened],
        subscribers,
        delivered: counters.delivered,
        dropped: counters.dropped,
        reconnects: Math.max(0, sessions - 1)
      }
      metrics.sample(s)
      return s
    })
    // Metrics are sampled from the figures at start, periodically, and whenever they are read; not per notification.
    yield* stats
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(Telemetry.sampleEvery), stats)))

    return { subscribe, unsubscribe, stats, pid: Effect.sync(() => clientPid) }
  })

/**
 * Reconnect forever: 50 ms, doubling, at most 500 ms apart — a refused
 * connection costs next to nothing, and a listener should be back within a
 * second of the server accepting connections again.
 */
export const defaultReconnect: Schedule.Schedule<unknown, unknown> = Schedule.min([
  Schedule.exponential("50 millis"),
  Schedule.spaced("500 millis")
])
