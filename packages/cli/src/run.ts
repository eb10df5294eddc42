/**
 * Helpers shared by the commands: writing to stdout, failing with a message,
 * and the exit code of an interrupted command.
 */
import { Effect } from "effect"

/** A failure the CLI reports as a plain one-line message. */
export class CliFailure extends Error {
  readonly _tag = "CliFailure"
}

export const fail = (message: string): Effect.Effect<never, CliFailure> => Effect.fail(new CliFailure(message))

/** Writes a line (or lines) to stdout; nothing for empty text. */
export const stdout = (text: string): Effect.Effect<void> =>
  Effect.sync(() => {
    if (text.length > 0) process.stdout.write(text.endsWith("\n") ? text : `${text}\n`)
  })

/** Writes a line to stderr. */
export const stderr = (text: string): Effect.Effect<void> => Effect.sync(() => void process.stderr.write(`${text}\n`))

/**
 * The exit code when the command is interrupted (Ctrl-C): 130 by default,
 * 0 for commands that run until interrupted (`listen`).
 */
export const interruptExit = { code: 130 }
