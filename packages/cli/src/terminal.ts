/**
 * Redrawing in place on a terminal (ANSI escapes), for `stats --watch` and
 * `bench`'s progress line. On a pipe nothing is redrawn: escapes there would
 * only be noise in a log.
 */
import { Effect, type Scope } from "effect"

const ESC = "\u001b["

/** Is the stream a terminal? */
export const isTerminal = (stream: NodeJS.WriteStream): boolean => stream.isTTY === true

/**
 * A screen redrawn in place: every frame starts at the top left, each line
 * clears what was left of the previous frame's line, and the rest of the
 * screen below is cleared (no full-screen clear per frame: that flickers).
 * The cursor is hidden while it runs and shown again when the scope closes
 * (Ctrl-C included), with the last frame left on the screen.
 */
export const screen = (stream: NodeJS.WriteStream): Effect.Effect<(frame: string) => Effect.Effect<void>, never, Scope.Scope> =>
  Effect.gen(function*() {
    if (!isTerminal(stream)) {
      // A pipe gets every frame, one after the other, separated by a blank line.
      let first = true
      return (frame: string) =>
        Effect.sync(() => {
          stream.write(`${first ? "" : "\n"}${frame}\n`)
          first = false
        })
    }
    yield* Effect.acquireRelease(
      Effect.sync(() => void stream.write(`${ESC}?25l${ESC}2J${ESC}H`)),
      () => Effect.sync(() => void stream.write(`${ESC}?25h`))
    )
    return (frame: string) =>
      Effect.sync(() => {
        const lines = frame.split("\n").map((line) => `${line}${ESC}K`)
        stream.write(`${ESC}H${lines.join("\n")}\n${ESC}J`)
      })
  })

/**
 * A status line rewritten in place on a terminal (carriage return, clear to
 * the end of the line); `clear` wipes it before the final output. Nothing on
 * a pipe.
 */
export const statusLine = (stream: NodeJS.WriteStream): {
  readonly show: (text: string) => Effect.Effect<void>
  readonly clear: Effect.Effect<void>
} => {
  if (!isTerminal(stream)) return { show: () => Effect.void, clear: Effect.void }
  return {
    show: (text) => Effect.sync(() => void stream.write(`\r${text}${ESC}K`)),
    clear: Effect.sync(() => void stream.write(`\r${ESC}K`))
  }
}
