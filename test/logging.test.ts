import { assert, describe, it } from "@effect/vitest"
import { Effect, Logger, Redacted, References } from "effect"
import { DbPool, sql, WritePool } from "effect-dbpool"
import { inject } from "vitest"
import { databaseUrl, harness } from "./support.ts"

const h = harness("logging")

interface Line {
  readonly level: string
  readonly message: string
  readonly annotations: Readonly<Record<string, unknown>>
}

/** A logger that keeps every line, with its annotations. */
const capture = () => {
  const lines: Array<Line> = []
  const logger = Logger.make((options) => {
    lines.push({
      level: options.logLevel,
      message: String(Array.isArray(options.message) ? options.message.join(" ") : options.message),
      annotations: options.fiber.getRef(References.CurrentLogAnnotations)
    })
  })
  return { lines, layer: Logger.layer([logger]) }
}

describe("logging", () => {
  it.live("logs pool start at info and each interaction at debug with its duration, never the password", () => {
    const { lines, layer } = capture()
    // Without the start-up check, whose SELECT 1 would be one more interaction line.
    const pools = DbPool.layer({ url: databaseUrl, maxSize: 2, applicationName: h.appName, checkOnStart: false })
    return Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.run(sql`SELECT ${1}::int AS one`)
      yield* pool.run(sql`SELEC 1`).pipe(Effect.ignore)
    }).pipe(
      Effect.provide(pools),
      Effect.provide(layer),
      Effect.provideService(References.MinimumLogLevel, "Debug"),
      Effect.andThen(Effect.sync(() => {
        const started = lines.filter((l) => l.message.includes("pool started"))
        assert.deepStrictEqual(started.map((l) => [l.level, l.annotations["pool"]]), [
          ["Info", "default/write"],
          ["Info", "default/read"]
        ])
        const interactions = lines.filter((l) => l.message.includes("interaction"))
        assert.strictEqual(interactions.length, 2)
        for (const line of interactions) {
          assert.strictEqual(line.level, "Debug")
          assert.isNumber(line.annotations["durationMs"])
        }
        assert.deepStrictEqual(interactions.map((l) => l.annotations["outcome"]), ["ok", "failed"])
        const password = new URL(inject("databaseUrl")).password
        assert.isAbove(password.length, 0)
        assert.notInclude(JSON.stringify(lines), password)
      }))
    )
  })

  it.live("a URL naming several hosts is logged as its hosts and database, never its password", () => {
    const { lines, layer } = capture()
    const u = new URL(inject("databaseUrl"))
    // Both hosts are the test server: the first answers, and the log names both.
    const multi = `postgres://${u.username}:${u.password}@${u.host},${u.host}${u.pathname}?target_session_attrs=read-write`
    const pools = DbPool.layer({ url: Redacted.make(multi), maxSize: 1, applicationName: h.appName, checkOnStart: false })
    return Effect.gen(function*() {
      const pool = yield* WritePool
      assert.deepStrictEqual(yield* pool.run(sql`SELECT ${1}::int AS one`), [{ one: 1 }])
    }).pipe(
      Effect.provide(pools),
      Effect.provide(layer),
      Effect.andThen(Effect.sync(() => {
        const started = lines.find((l) => l.message.includes("pool started") && l.annotations["pool"] === "default/write")
        assert.strictEqual(started?.annotations["server"], `${u.host},${u.host}${u.pathname}`)
        assert.notInclude(JSON.stringify(lines), u.password)
      }))
    )
  })

  it.live("debug lines are not emitted at the default level", () => {
    const { lines, layer } = capture()
    return Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.run(sql`SELECT 1`)
    }).pipe(
      Effect.provide(DbPool.layer({ url: databaseUrl, applicationName: h.appName })),
      Effect.provide(layer),
      Effect.andThen(Effect.sync(() => {
        assert.strictEqual(lines.filter((l) => l.level === "Debug").length, 0)
        assert.isAbove(lines.filter((l) => l.level === "Info").length, 0)
      }))
    )
  })
})
