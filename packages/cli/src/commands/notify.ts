import { Effect, Layer } from "effect"
import { Argument, Command } from "effect/cli"
import { Notifications } from "effect-dbpool"
import { connectionFlags, pools } from "../connection.ts"

export const notify = Command.make("notify", {
  channel: Argument.String("channel").pipe(Argument.withDescription("The channel (any name: sent with pg_notify)")),
  payload: Argument.String("payload").pipe(Argument.withDescription("The payload (under 8000 bytes)")),
  ...connectionFlags
}, (options) =>
  Notifications.Notifications.use((n) => n.notify(options.channel, options.payload)).pipe(
    Effect.provide(Layer.fresh(pools(options)))
  )).pipe(
    Command.withShortDescription("Send one notification on a channel"),
    Command.withDescription("Send one notification (NOTIFY through pg_notify) on a channel."),
    Command.withExamples([
      { command: "dbpool notify jobs \"wake up\"", description: "A text payload" },
      { command: "dbpool notify changes '{\"id\":459}' --url postgres://app@db:5432/app", description: "A JSON payload, to a given server" }
    ])
  )
