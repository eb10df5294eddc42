/**
 * The Notifications service: subscriber streams over the pool's listener,
 * and NOTIFY through the write pool.
 */
import { Effect, Schema, Stream } from "effect"
import * as DbError from "../DbError.ts"
import type { InteractionPool } from "../InteractionPool.ts"
import type { ListenEvent, ListenOptions, NotificationsService } from "../Notifications.ts"
import type { Listener, Subscriber } from "./listener.ts"
import { validateChannel } from "./listener.ts"
import * as Notify from "./notify.ts"
import * as Telemetry from "./telemetry.ts"

const rawStream = (listener: Listener, channel: string, options: ListenOptions | undefined) =>
  Stream.suspend(() => {
    let subscriber: Subscriber | undefined
    let reported = 0
    const bufferSize = options?.bufferSize ?? 1024
    return Stream.callback<ListenEvent<string>, DbError.ListenError>(
      (queue) =>
        Effect.gen(function*() {
          yield* validateChannel(channel)
          if (bufferSize < 1 || !Number.isInteger(bufferSize)) {
            return yield* new DbError.InvalidInput({ message: `bufferSize must be a whole number of at least 1 (got ${bufferSize})` })
          }
          const s: Subscriber = { queue, session: 0, dropped: 0 }
          subscriber = s
          yield* Effect.acquireRelease(listener.subscribe(channel, s), () => listener.unsubscribe(channel, s))
        }),
      // An invalid size fails the stream above; the callback's own queue must still be made.
      { bufferSize: bufferSize >= 1 && Number.isInteger(bufferSize) ? bufferSize : 1, strategy: "dropping" }
    ).pipe(
      // Checked once per chunk pulled, not per notification: drops are noticed as soon as the subscriber reads.
      Stream.mapArrayEffect((events) => {
        if (subscriber === undefined || subscriber.dropped === reported) return Effect.succeed(events)
        const dropped = subscriber.dropped - reported
        reported = subscriber.dropped
        return Effect.as(
          Effect.logWarning("effect-dbpool: slow subscriber, notifications dropped").pipe(
            Effect.annotateLogs({ channel, dropped, droppedTotal: reported })
          ),
          events
        )
      })
    )
  })

const decoding = <S extends Schema.Top>(channel: string, schema: S, onDecodeError: "fail" | "skip") => {
  const decode = Schema.decodeUnknownEffect(schema)
  return (event: ListenEvent<string>): Effect.Effect<ListenEvent<S["Type"]> | undefined, DbError.PayloadDecodeError, S["DecodingServices"]> => {
    if (event._tag === "Subscribed") return Effect.succeed(event)
    const decoded = Effect.try({ try: (): unknown => JSON.parse(event.payload), catch: (e) => e }).pipe(
      Effect.flatMap((json) => decode(json)),
      Effect.map((payload): ListenEvent<S["Type"]> => ({ ...event, payload })),
      Effect.mapError((cause) =>
        new DbError.PayloadDecodeError({
          message: `a payload on channel "${channel}" does not decode: ${cause instanceof Error ? cause.message : String(cause)}`,
          channel,
          payload: event.payload,
          cause
        })
      )
    )
    return onDecodeError === "fail"
      ? decoded
      : Effect.catch(decoded, (error) =>
        Effect.as(
          Effect.logWarning("effect-dbpool: undecodable payload skipped").pipe(
            Effect.annotateLogs({ channel, payload: error.payload.slice(0, 200) })
          ),
          undefined
        ))
  }
}

export const make = (listener: Listener, write: InteractionPool, target: Telemetry.Target): NotificationsService => {
  const listen = (channel: string, schemaOrOptions?: Schema.Top | ListenOptions, maybeOptions?: ListenOptions) => {
    if (Schema.isSchema(schemaOrOptions)) {
      const options = maybeOptions
      return rawStream(listener, channel, options).pipe(
        Stream.mapEffect(decoding(channel, schemaOrOptions, options?.onDecodeError ?? "fail")),
        Stream.filter((event) => event !== undefined)
      )
    }
    return rawStream(listener, channel, schemaOrOptions)
  }
  const notify = (channel: string, payload: unknown, schema?: Schema.Top) =>
    Telemetry.span(
      target,
      "notify",
      { "db.operation.name": "NOTIFY", "effect_dbpool.channel": channel },
      Effect.flatMap(Notify.prepare(channel, payload, schema), (statement) => Effect.asVoid(write.run(statement)))
    )
  return {
    // The overloads of NotificationsService are implemented by these signatures.
    listen: listen as NotificationsService["listen"],
    notify: notify as NotificationsService["notify"],
    stats: listener.stats,
    listenerPid: listener.pid
  }
}
