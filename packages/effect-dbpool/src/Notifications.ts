/**
 * LISTEN/NOTIFY as Streams.
 *
 * gDBPool's `listen_on(queue, channel, cancel_event)` pushed each
 * notification into a queue until a cancel event was set. Here a channel is
 * a `Stream`: interrupting or ending the consumer is the cancel event, and
 * it UNLISTENs when the last subscriber of the channel leaves.
 *
 * Every stream starts with a `Subscribed` event, emitted once the server has
 * confirmed the LISTEN: a NOTIFY sent after it is never missed. When the
 * listening connection dies, the pool reconnects with backoff and
 * re-LISTENs; each subscriber then gets `Subscribed` again with
 * `resubscribed: true`. Notifications sent while disconnected are lost —
 * Postgres keeps none for a disconnected listener — so that event is the
 * cue to resync.
 *
 * @since 0.1.0
 */
import { Context, Effect, Schema, Stream } from "effect"
import type { Notify } from "./Connection.ts"
import type { ListenError, PayloadDecodeError } from "./DbError.ts"

/**
 * One notification.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import type { Notifications } from "effect-dbpool"
 *
 * const onChange = (n: Notifications.Notification<{ readonly id: number }>) =>
 *   Effect.log(`row ${n.payload.id} changed (${n.channel}, sent by backend ${n.pid})`)
 * ```
 *
 * @since 0.1.0
 */
export interface Notification<A = string> {
  readonly _tag: "Notification"
  readonly channel: string
  readonly payload: A
  /** The backend pid of the session that sent it. */
  readonly pid: number
}

/**
 * The LISTEN for this subscriber's channel is in place: first when the
 * stream starts, then after every reconnect (`resubscribed: true`).
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const watch = (resync: Effect.Effect<void>) =>
 *   Stream.unwrap(Notifications.Notifications.useSync((n) => n.listen("changes"))).pipe(
 *     Stream.runForEach((event) => event._tag === "Subscribed" && event.resubscribed ? resync : Effect.void)
 *   )
 * ```
 *
 * @since 0.1.0
 */
export interface Subscribed {
  readonly _tag: "Subscribed"
  readonly channel: string
  readonly resubscribed: boolean
}

/**
 * What a notification stream emits.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import type { Notifications } from "effect-dbpool"
 *
 * const handle = (event: Notifications.ListenEvent) =>
 *   event._tag === "Subscribed" ? Effect.log(`listening on ${event.channel}`) : Effect.log(`got ${event.payload}`)
 * ```
 *
 * @since 0.1.0
 */
export type ListenEvent<A = string> = Notification<A> | Subscribed

/**
 * @example
 * ```ts
 * import { Schema, Stream } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const Job = Schema.Struct({ id: Schema.Number })
 * const jobs = Stream.unwrap(Notifications.Notifications.useSync((n) =>
 *   n.listen("jobs", Job, { bufferSize: 10_000, onDecodeError: "skip" })
 * ))
 * ```
 *
 * @since 0.1.0
 */
export interface ListenOptions {
  /**
   * Notifications buffered for this subscriber (default 1024). When a slow
   * subscriber's buffer is full, new notifications for it are dropped — the
   * other subscribers are never held up — and each drop is counted
   * (`stats.dropped`) and logged as a warning by the subscriber's stream.
   * A whole number of at least 1; anything else fails the stream with `InvalidInput`.
   */
  readonly bufferSize?: number | undefined
  /**
   * What a payload that fails to decode does to the stream: `"fail"` (the
   * default) fails it with `PayloadDecodeError`; `"skip"` logs a warning and
   * goes on. Either way the listening connection and the other subscribers
   * carry on.
   */
  readonly onDecodeError?: "fail" | "skip" | undefined
}

/**
 * The listening connection's state.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const check = Effect.gen(function*() {
 *   const stats = yield* (yield* Notifications.Notifications).stats
 *   if (!stats.connected || stats.dropped > 0) {
 *     yield* Effect.logWarning(`${stats.pool}: connected=${stats.connected}, ${stats.dropped} dropped`)
 *   }
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface ListenerStats {
  readonly pool: string
  readonly connected: boolean
  /** Channels LISTENed on the current connection. */
  readonly channels: ReadonlyArray<string>
  readonly subscribers: number
  readonly delivered: number
  readonly dropped: number
  readonly reconnects: number
}

/**
 * The notification service of a pool pair, provided by its Layer.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const wake = Effect.gen(function*() {
 *   const notifications: Notifications.NotificationsService = yield* Notifications.Notifications
 *   yield* notifications.notify("jobs", "wake up")
 *   return yield* notifications.listenerPid
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface NotificationsService {
  /**
   * Subscribes to a channel. Payloads are strings, or decoded from JSON
   * with `schema`.
   */
  readonly listen: {
    (channel: string, options?: ListenOptions): Stream.Stream<ListenEvent<string>, ListenError>
    <S extends Schema.Top>(
      channel: string,
      schema: S,
      options?: ListenOptions
    ): Stream.Stream<ListenEvent<S["Type"]>, ListenError | PayloadDecodeError, S["DecodingServices"]>
  }
  /**
   * Sends a notification through the write pool (`pg_notify`, so any channel
   * name works). A payload of 8000 bytes or more fails with
   * `PayloadTooLarge` before reaching the server. Inside a transaction use
   * `connection.notify` or `partialTransaction.notify`: delivered at commit,
   * never on rollback.
   */
  readonly notify: Notify
  readonly stats: Effect.Effect<ListenerStats>
  /** The backend pid of the listening connection while connected. */
  readonly listenerPid: Effect.Effect<number | undefined>
}

/**
 * The default pool pair's notifications, provided by `DbPool.layer`.
 *
 * @example
 * ```ts
 * import { Effect, Schema, Stream } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const Change = Schema.Struct({ id: Schema.Number, val1: Schema.Number })
 *
 * const program = Effect.gen(function*() {
 *   const notifications = yield* Notifications.Notifications
 *   yield* notifications.listen("notify_test_values", Change).pipe(
 *     Stream.runForEach((event) =>
 *       event._tag === "Subscribed"
 *         ? Effect.log(event.resubscribed ? "reconnected: resync" : "listening")
 *         : Effect.log(`row ${event.payload.id} is now ${event.payload.val1}`)
 *     )
 *   )
 * })
 * ```
 *
 * @since 0.1.0
 */
export class Notifications extends Context.Service<Notifications, NotificationsService>()("effect-dbpool/Notifications") {}

/**
 * Keeps the payloads of a notification stream, dropping `Subscribed` events.
 *
 * @example
 * ```ts
 * import { Effect, Stream } from "effect"
 * import { Notifications } from "effect-dbpool"
 *
 * const firstThree = Effect.gen(function*() {
 *   const notifications = yield* Notifications.Notifications
 *   return yield* notifications.listen("jobs").pipe(Notifications.payloads, Stream.take(3), Stream.runCollect)
 * })
 * ```
 *
 * @since 0.1.0
 */
export const payloads = <A, E, R>(self: Stream.Stream<ListenEvent<A>, E, R>): Stream.Stream<A, E, R> =>
  self.pipe(
    Stream.filter((event): event is Notification<A> => event._tag === "Notification"),
    Stream.map((event) => event.payload)
  )
