import { Effect, Layer, Schema, Stream } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { Notifications } from "effect-dbpool"
import { connectionFlags, pools } from "../connection.ts"
import { interruptExit, stdout } from "../run.ts"

export const listen = Command.make("listen", {
  channels: Argument.String("channel").pipe(
    Argument.withDescription("Channels to LISTEN on (one or more)"),
    Argument.variadic({ min: 1 })
  ),
  payload: Flag.Literals("payload", ["text", "json"]).pipe(
    Flag.withDescription("text (default) prints payloads as sent; json decodes them as JSON (undecodable ones are skipped with a warning)"),
    Flag.withDefault("text" as const)
  ),
  ...connectionFlags
}, (options) =>
  Effect.gen(function*() {
    // Running until interrupted is this command's normal life: Ctrl-C ends it with exit code 0.
    interruptExit.code = 0
    const notifications = yield* Notifications.Notifications
    // A channel named twice is listened to once: each notification printed once.
    const streams = [...new Set(options.channels)].map((channel) =>
      options.payload === "json"
        // The library parses a payload's JSON before the schema sees it: any JSON value is a valid payload here.
        ? notifications.listen(channel, Schema.Unknown, { onDecodeError: "skip" }).pipe(
          Stream.map((event) => event._tag === "Notification" ? { ...event, payload: JSON.stringify(event.payload) } : event)
        )
        : notifications.listen(channel)
    )
    yield* Stream.mergeAll(streams, { concurrency: "unbounded" }).pipe(
      Stream.runForEach((event) =>
        event._tag === "Subscribed"
          ? stdout(`${new Date().toISOString()} ${event.channel} ${event.resubscribed ? "resubscribed (after a reconnect)" : "listening"}`)
          : stdout(`${new Date().toISOString()} ${event.channel} pid=${event.pid} ${event.payload}`)
      )
    )
  }).pipe(
    Effect.provide(Layer.fresh(pools(options, (server) => stdout(`server ${server}; Ctrl-C to stop`))))
  )).pipe(
    Command.withShortDescription("Print notifications on channels as they arrive, until Ctrl-C"),
    Command.withDescription(
      "LISTEN on channels and print each notification as it arrives: ISO time, channel, sender's pid, payload. " +
        "Says when it (re)subscribed. Ctrl-C unlistens, closes the connection and exits 0."
    ),
    Command.withExamples([
      { command: "dbpool listen notify_test_values", description: "Follow one channel" },
      { command: "dbpool listen jobs changes --payload json", description: "Two channels, payloads decoded (and re-printed) as JSON" },
      { command: "dbpool listen jobs --application-name ops-watch", description: "Named as ops-watch in pg_stat_activity" }
    ])
  )
