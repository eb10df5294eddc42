/**
 * Durations on the command line, written as people write them (`500ms`,
 * `1s`, `1.5s`, `2m`, `10 seconds`): effect's `Duration` wants `"1 second"`,
 * and effect/cli has no duration flag.
 */
import { Duration, Option } from "effect"
import { Flag } from "effect/cli"

const UNITS: ReadonlyArray<readonly [RegExp, number]> = [
  [/^(ms|millis?|milliseconds?)$/, 1],
  [/^(s|secs?|seconds?)$/, 1_000],
  [/^(m|mins?|minutes?)$/, 60_000],
  [/^(h|hours?)$/, 3_600_000]
]

/** A positive duration such as `500ms`, `1s`, `1.5 s`, `2m`, `1h`; a bare number is seconds. None otherwise. */
export const parseDuration = (text: string): Option.Option<Duration.Duration> => {
  const match = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)\s*$/i.exec(text)
  if (match === null) return Option.none()
  const amount = Number(match[1])
  const unit = match[2]!.toLowerCase()
  const factor = unit === "" ? 1_000 : UNITS.find(([pattern]) => pattern.test(unit))?.[1]
  if (factor === undefined || !(amount > 0)) return Option.none()
  return Option.some(Duration.millis(amount * factor))
}

/** A `--name 1s` flag with a default, rejecting anything `parseDuration` does not read (with a message saying so). */
export const durationFlag = (name: string, defaultValue: string, description: string): Flag.Flag<Duration.Duration> =>
  Flag.String(name).pipe(
    Flag.withDescription(`${description} (e.g. 500ms, 2s, 1m; default ${defaultValue})`),
    Flag.withMetavar("duration"),
    Flag.withDefault(defaultValue),
    // effect/cli frames it: Invalid value for flag --name: "text". Expected: <this>.
    Flag.filterMap(parseDuration, () => "a duration such as 500ms, 2s or 1m")
  )

/** A duration as a short figure: `850ms`, `12.3s`, `4m05s`, `2h03m`. */
export const formatMillis = (millis: number): string => {
  if (millis < 1_000) return `${Math.round(millis)}ms`
  if (millis < 60_000) return `${(millis / 1_000).toFixed(1)}s`
  const seconds = Math.floor(millis / 1_000)
  if (seconds < 3_600) return `${Math.floor(seconds / 60)}m${String(seconds % 60).padStart(2, "0")}s`
  return `${Math.floor(seconds / 3_600)}h${String(Math.floor((seconds % 3_600) / 60)).padStart(2, "0")}m`
}
