/**
 * Building a NOTIFY: payload encoding, the size limit, the channel name check.
 * Shared by the Notifications service, connections and partial transactions.
 */
import { Effect, Schema } from "effect"
import * as DbError from "../DbError.ts"
import { sql, type Statement } from "../Statement.ts"
import { validateChannel } from "./listener.ts"

/** Postgres refuses payloads of 8000 bytes or more. */
export const maxPayloadBytes = 7999

/** A value encoded with a Schema into the JSON text of a payload. */
export const encodePayload = <S extends Schema.Top>(
  channel: string,
  value: unknown,
  schema: S
): Effect.Effect<string, DbError.InvalidInput, S["EncodingServices"]> =>
  Schema.encodeUnknownEffect(schema)(value).pipe(
    Effect.flatMap((encoded) =>
      Effect.try({
        try: () => {
          const text: string | undefined = JSON.stringify(encoded)
          // undefined, a function: JSON.stringify returns undefined rather than throwing.
          if (text === undefined) throw new TypeError("its encoded value has no JSON text")
          return text
        },
        catch: (e) => e
      })
    ),
    Effect.mapError((cause) =>
      new DbError.InvalidInput({
        message: `the payload for channel "${channel}" cannot be encoded: ${cause instanceof Error ? cause.message : String(cause)}`
      })
    )
  )

/** `SELECT pg_notify($1, $2)`: pg_notify takes any channel name, no quoting involved. */
export const notifyStatement = (channel: string, payload: string): Effect.Effect<Statement, DbError.DbError> =>
  Effect.flatMap(validateChannel(channel), () => {
    const bytes = Buffer.byteLength(payload, "utf8")
    if (bytes > maxPayloadBytes) {
      return Effect.fail(
        new DbError.PayloadTooLarge({
          message: `the payload for channel "${channel}" is ${bytes} bytes; Postgres accepts at most ${maxPayloadBytes}`,
          channel,
          bytes,
          limit: maxPayloadBytes
        })
      )
    }
    return Effect.succeed(sql`SELECT pg_notify(${channel}, ${payload})`)
  })

/** Encodes (when a schema is given) and builds the NOTIFY statement. */
export const prepare = (
  channel: string,
  payload: unknown,
  schema: Schema.Top | undefined
): Effect.Effect<Statement, DbError.DbError, unknown> =>
  schema === undefined
    ? typeof payload === "string"
      ? notifyStatement(channel, payload)
      : Effect.fail(new DbError.InvalidInput({ message: "a payload without a schema must be a string" }))
    : Effect.flatMap(encodePayload(channel, payload, schema), (text) => notifyStatement(channel, text))
