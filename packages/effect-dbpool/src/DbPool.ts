/**
 * Pools as Layers: one Layer gives a {@link WritePool}, a {@link ReadPool}
 * and their {@link Notifications};
 * {@link named} declares further pairs (an analytics database next to the
 * main one). Releasing the Layer closes every connection.
 *
 * @since 0.1.0
 */
import { Config as C, Context, Duration, Effect, Layer, Option, Redacted, type Schedule } from "effect"
import * as Net from "node:net"
import * as Listener from "./internal/listener.ts"
import * as NotificationsImpl from "./internal/notifications.ts"
import * as Pool from "./internal/pool.ts"
import * as Replicas from "./internal/replicas.ts"
import * as Server from "./internal/server.ts"
import * as Slots from "./internal/slots.ts"
import * as Telemetry from "./internal/telemetry.ts"
import { Notifications, type NotificationsService } from "./Notifications.ts"
import { ReadPool } from "./ReadPool.ts"
import * as DbError from "./DbError.ts"
import type { InteractionPool } from "./InteractionPool.ts"
import * as Statement from "./Statement.ts"
import { WritePool, type WritePoolService } from "./WritePool.ts"

/**
 * Pool settings. Only `url` is required.
 *
 * | setting | default | env (`layerConfig`) |
 * |---|---|---|
 * | `url` | — | `DATABASE_URL` |
 * | `readUrl` | `url`, in read-only sessions | `DATABASE_READ_URL` |
 * | `readUrls` | none (see {@link Config.readUrls}) | `DATABASE_READ_URLS` (comma-separated) |
 * | `maxReplicaLag` | 10 seconds | `DATABASE_MAX_REPLICA_LAG` |
 * | `replicaFallback` | `"primary"` | `DATABASE_REPLICA_FALLBACK` |
 * | `readYourWritesWait` | 1 second | `DATABASE_READ_YOUR_WRITES_WAIT` |
 * | `replicaCheckInterval` | 2 seconds | `DATABASE_REPLICA_CHECK_INTERVAL` |
 * | `minSize` / `maxSize` | 0 / 10 | `DATABASE_POOL_MIN` / `DATABASE_POOL_MAX` |
 * | `readMinSize` / `readMaxSize` | 0 / `maxSize` | `DATABASE_READ_POOL_MIN` / `DATABASE_READ_POOL_MAX` |
 * | `acquireTimeout` | 30 seconds | `DATABASE_ACQUIRE_TIMEOUT` |
 * | `connectTimeout` | 10 seconds | `DATABASE_CONNECT_TIMEOUT` |
 * | `idleTimeout` | 10 minutes | `DATABASE_IDLE_TIMEOUT` |
 * | `maxLifetime` | 30 minutes (minus up to 10% jitter) | `DATABASE_MAX_LIFETIME` |
 * | `applicationName` | `effect-dbpool` | `DATABASE_APPLICATION_NAME` |
 * | `statementTimeout` / `lockTimeout` / `idleInTransactionSessionTimeout` | server defaults | `DATABASE_STATEMENT_TIMEOUT` / `DATABASE_LOCK_TIMEOUT` / `DATABASE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT` |
 * | `serverSettings` | none | — |
 * | `password` | the URL's | — |
 * | `ssl` | the URL's `sslmode` | — |
 * | `prepare` | `true` | `DATABASE_PREPARE` |
 * | `checkOnStart` | `true` | — |
 * | `pipelining` | `{ maxDepth: 64, fillDepth: 64, fastWithin: "8 millis", stallAfter: "5 millis" }` | `DATABASE_PIPELINE_MAX_DEPTH` / `DATABASE_PIPELINE_FILL_DEPTH` |
 * | `listenReconnect` | forever, 50 ms doubling to 500 ms | — |
 * | `listenHealthCheckInterval` | 5 seconds | — |
 *
 * @example
 * ```ts
 * import { Redacted } from "effect"
 * import { DbPool } from "effect-dbpool"
 *
 * const config: DbPool.Config = {
 *   url: Redacted.make("postgres://app:secret@primary:5432/app"),
 *   readUrl: Redacted.make("postgres://app:secret@replica:5432/app"),
 *   maxSize: 20, acquireTimeout: "5 seconds"
 * }
 * const PoolsLive = DbPool.layer(config)
 * ```
 *
 * @since 0.1.0
 */
export interface Config {
  /** The write server, e.g. `postgres://user:password@host:5432/db`. */
  readonly url: Redacted.Redacted<string>
  /** A replica for the read pool. */
  readonly readUrl?: Redacted.Redacted<string> | undefined
  /**
   * Where the listening connection goes, when not to `url`: LISTEN needs a session of its own, so behind PgBouncer
   * in transaction mode this is the Postgres server itself.
   */
  readonly listenUrl?: Redacted.Redacted<string> | undefined
  /**
   * Several replicas for the read pool (then `readUrl` is not used): one read-only pool of its own per replica
   * (`readMinSize` / `readMaxSize` each, named `default/read/replica1`, …), each call to the least busy usable one.
   * A replica whose statements fail with `ConnectFailed` / `ConnectionLost`, or that lags more than
   * `maxReplicaLag`, is set aside and probed back in every `replicaCheckInterval`; with none usable, reads run on
   * the primary in read-only sessions (or fail, see `replicaFallback`). `stats` then gives a `ReplicaSetStats`
   * (`ReadPool.isReplicaSetStats`); `ReadYourWrites` gives reads that see the caller's own writes.
   */
  readonly readUrls?: ReadonlyArray<Redacted.Redacted<string>> | undefined
  /**
   * With `readUrls`: a replica that has not replayed, by now, what the primary had written this long ago is not
   * read from until it has (measured on WAL positions, so an idle primary is no lag).
   */
  readonly maxReplicaLag?: Duration.Input | undefined
  /** With `readUrls`, when no replica is usable: `"primary"` reads there in read-only sessions, `"fail"` fails with `NoReplicaAvailable`. */
  readonly replicaFallback?: "primary" | "fail" | undefined
  /** With `readUrls`: how long a read with a `ReadYourWrites` token waits for a replica that has replayed it before going to the primary. */
  readonly readYourWritesWait?: Duration.Input | undefined
  /** With `readUrls`: how often every replica's health and lag are checked. */
  readonly replicaCheckInterval?: Duration.Input | undefined
  readonly minSize?: number | undefined
  readonly maxSize?: number | undefined
  readonly readMinSize?: number | undefined
  readonly readMaxSize?: number | undefined
  /** How long a caller waits for a free connection before `PoolTimeout`. */
  readonly acquireTimeout?: Duration.Input | undefined
  /** How long opening a connection may take before `ConnectFailed`. */
  readonly connectTimeout?: Duration.Input | undefined
  /** Connections above `minSize` idle this long are closed. */
  readonly idleTimeout?: Duration.Input | undefined
  /** Connections older than this are retired when next returned or checked out. */
  readonly maxLifetime?: Duration.Input | undefined
  readonly applicationName?: string | undefined
  /** `statement_timeout` of every connection: a statement running longer fails with `StatementTimeout` (57014). */
  readonly statementTimeout?: Duration.Input | undefined
  /** `lock_timeout` of every connection: a lock wait longer than this fails with `LockNotAvailable` (55P03). */
  readonly lockTimeout?: Duration.Input | undefined
  /**
   * `idle_in_transaction_session_timeout` of every connection: a transaction idle this long between statements (a
   * forgotten partial transaction) has its session ended by the server, which rolls it back and frees its locks;
   * its next step fails with `ConnectionLost`, and the pool replaces the connection.
   */
  readonly idleInTransactionSessionTimeout?: Duration.Input | undefined
  /** Further server settings for every connection, sent when it connects (`RESET ALL` returns to them). */
  readonly serverSettings?: Readonly<Record<string, string>> | undefined
  /**
   * The password, evaluated at every connect (rotating credentials, cloud IAM tokens); the URL's otherwise.
   * A failure is `ConnectFailed` (its own message is not shown: it may carry a secret).
   */
  readonly password?: Effect.Effect<Redacted.Redacted<string>, unknown> | undefined
  /**
   * TLS: `"require"` encrypts without checking the certificate, `"verify-full"` checks it and the host name
   * (against `ca` when given, else the system's roots); the object form adds a CA and a client certificate.
   */
  readonly ssl?: Ssl | undefined
  /** Named prepared statements; `false` behind a pooler in transaction mode (PgBouncer before 1.21). */
  readonly prepare?: boolean | undefined
  /** Open a connection of the write pool (and of the read pool on a `readUrl`) when the Layer is built, failing it with `ConnectFailed`. */
  readonly checkOnStart?: boolean | undefined
  /** How single statements share connections when every connection is busy; `false`: never (see {@link Pipelining}). */
  readonly pipelining?: Pipelining | false | undefined
  /** When the listening connection dies: how to retry reconnecting. When it ends, notification streams fail with `ListenerGaveUp`. */
  readonly listenReconnect?: Schedule.Schedule<unknown, unknown> | undefined
  /** How often the listening connection is checked with a round trip, to notice a network that died silently. */
  readonly listenHealthCheckInterval?: Duration.Input | undefined
}

/**
 * TLS settings. `"disable"` never uses TLS; `"require"` encrypts without
 * checking the server's certificate; `"verify-full"` checks the certificate
 * and that it names the host. The object form gives a CA (PEM) to check
 * against and a client certificate and key (PEM).
 *
 * @example
 * ```ts
 * import * as Fs from "node:fs"
 * import { Redacted } from "effect"
 * import { DbPool } from "effect-dbpool"
 *
 * const PoolsLive = DbPool.layer({
 *   url: Redacted.make("postgres://app@db.internal:5432/app"),
 *   ssl: { mode: "verify-full", ca: Fs.readFileSync("ca.pem", "utf8") }
 * })
 * ```
 *
 * @since 0.1.0
 */
export type Ssl =
  | "disable"
  | "require"
  | "verify-full"
  | {
    readonly mode: "require" | "verify-full"
    readonly ca?: string | undefined
    readonly cert?: string | undefined
    readonly key?: Redacted.Redacted<string> | undefined
  }

/**
 * The URL's `sslmode` as an {@link Ssl}, so that both drivers read it alike, as postgres.js does (node-postgres reads
 * `require` as `verify-full`). `verify-ca` is checked as `verify-full`, as both drivers do; `prefer` and `allow`, which
 * may fall back to a plain connection, are left to the drivers.
 */
const urlSsl = (url: Redacted.Redacted<string>): Ssl | undefined => {
  const mode = Server.param(Redacted.value(url), "sslmode")
  if (mode === "disable" || mode === "require" || mode === "verify-full") return mode
  return mode === "verify-ca" ? "verify-full" : undefined
}

/**
 * The URL's host when it is an IP address. postgres.js then gives `tls.connect` no name (no SNI for an IP address),
 * and Node checks the certificate against "localhost": given `host`, it checks it against the address.
 */
const ipHost = (url: Redacted.Redacted<string>): string | undefined => {
  try {
    const host = new URL(Redacted.value(url)).hostname.replace(/^\[(.*)\]$/, "$1")
    return Net.isIP(host) === 0 ? undefined : host
  } catch {
    return undefined
  }
}

/** `tls.connect` options (both drivers take them) for the checking modes and the object form. */
const tlsOptions = (ssl: Exclude<Ssl, "disable" | "require">, url: Redacted.Redacted<string>) => {
  const o = typeof ssl === "string" ? { mode: ssl } : ssl
  const host = o.mode === "verify-full" ? ipHost(url) : undefined
  return {
    rejectUnauthorized: o.mode === "verify-full",
    ...(host === undefined ? {} : { host }),
    ...(o.ca === undefined ? {} : { ca: o.ca }),
    ...(o.cert === undefined ? {} : { cert: o.cert }),
    ...(o.key === undefined ? {} : { key: Redacted.value(o.key) })
  }
}

const driverSsl = (option: Ssl | undefined, url: Redacted.Redacted<string>): Pool.Settings["ssl"] => {
  const ssl = option ?? urlSsl(url)
  if (ssl === undefined) return undefined
  if (ssl === "disable") return false
  if (ssl === "require") return ssl
  return tlsOptions(ssl, url)
}

/** The same TLS settings in node-postgres's terms (the listener's driver). */
const listenerSsl = (option: Ssl | undefined, url: Redacted.Redacted<string>): Listener.ListenerSettings["ssl"] => {
  const ssl = option ?? urlSsl(url)
  if (ssl === undefined) return undefined
  if (ssl === "disable") return false
  if (ssl === "require") return { rejectUnauthorized: false }
  return tlsOptions(ssl, url)
}

/** Server settings sent at connect: the timeouts (in milliseconds, their unit) and the user's own. */
const startupSettings = (config: Config): Record<string, string> => {
  const out: Record<string, string> = { ...config.serverSettings }
  const ms = (name: string, value: Duration.Input | undefined) => {
    if (value !== undefined) out[name] = String(Math.max(0, Math.round(Duration.toMillis(Duration.fromInputUnsafe(value)))))
  }
  ms("statement_timeout", config.statementTimeout)
  ms("lock_timeout", config.lockTimeout)
  ms("idle_in_transaction_session_timeout", config.idleInTransactionSessionTimeout)
  return out
}

/**
 * How single autocommit statements (`pool.run`) share connections. Once every
 * connection is open and busy, a statement is pipelined on the least busy
 * connection running other single statements, up to `maxDepth` in flight.
 * Before that, it fills the busiest connection whose statements are fast
 * (the ones already on it expected to complete within `fastWithin`, from
 * what each has been costing the backend; the last one completed within
 * `stallAfter`) up to `fillDepth` deep rather than waking an idle connection:
 * fewer backends woken is what makes many callers of cheap statements fast,
 * while statements that cost the backend real time spread out and run in
 * parallel on the server's cores; at most `fillDepth` statements wait behind
 * one that turns out slow. A burst (statements arriving with no completion
 * between them) fills one connection at most 16 deep before the next is
 * woken. `fillDepth: 0` spreads statements over idle connections first; `pipelining:
 * false` gives every statement a connection of its own.
 *
 * @example
 * ```ts
 * import { Redacted } from "effect"
 * import { DbPool } from "effect-dbpool"
 *
 * // Statements of very uneven cost: never pile more than 4 behind one another.
 * const PoolsLive = DbPool.layer({ url: Redacted.make("postgres://localhost/app"), pipelining: { maxDepth: 4, fillDepth: 0 } })
 * ```
 *
 * @since 0.1.0
 */
export interface Pipelining {
  readonly maxDepth?: number | undefined
  readonly fillDepth?: number | undefined
  readonly fastWithin?: Duration.Input | undefined
  readonly stallAfter?: Duration.Input | undefined
}

const pipelining = (p: Pipelining | false | undefined): Slots.Pipelining => {
  const d = Slots.defaultPipelining
  if (p === false) return { ...d, maxDepth: 1, fillDepth: 0 }
  return {
    maxDepth: p?.maxDepth ?? d.maxDepth,
    fillDepth: p?.fillDepth ?? d.fillDepth,
    fastMillis: p?.fastWithin === undefined ? d.fastMillis : Duration.toMillis(Duration.fromInputUnsafe(p.fastWithin)),
    stallMillis: p?.stallAfter === undefined ? d.stallMillis : Duration.toMillis(Duration.fromInputUnsafe(p.stallAfter))
  }
}

/**
 * What logs, errors and stats say about a server: `host:port/database` (hosts
 * joined by commas for a URL naming several), never the user or password.
 *
 * @example
 * ```ts
 * import { Redacted } from "effect"
 * import { DbPool } from "effect-dbpool"
 *
 * DbPool.describeServer(Redacted.make("postgres://app:secret@db1:5432,db2:5432/app")) // "db1:5432,db2:5432/app"
 * ```
 *
 * @since 0.1.0
 */
export const describeServer = (url: Redacted.Redacted<string>): string => Server.describe(Redacted.value(url))

const sizes = (config: Config, kind: "write" | "read") => {
  // The read pool opens nothing until it is used: its minimum is its own setting, never the write pool's.
  const minSize = kind === "read" ? config.readMinSize ?? 0 : config.minSize ?? 0
  const maxSize = Math.max(1, minSize, kind === "read" ? config.readMaxSize ?? config.maxSize ?? 10 : config.maxSize ?? 10)
  return { minSize, maxSize }
}

const settings = (config: Config, name: string, kind: "write" | "read"): Pool.Settings => {
  const url = kind === "read" && config.readUrl !== undefined ? config.readUrl : config.url
  const { maxSize, minSize } = sizes(config, kind)
  // Without a readUrl (or with one naming the same server) both pools and the listener open backends on one server.
  const sameServer = config.readUrl === undefined || describeServer(config.readUrl) === describeServer(config.url)
  const other = sizes(config, kind === "read" ? "write" : "read").maxSize
  const listener = kind === "write" || sameServer ? 1 : 0
  return {
    name: `${name}/${kind}`,
    url,
    server: describeServer(url),
    readOnly: kind === "read",
    minSize,
    maxSize,
    serverMax: maxSize + (sameServer ? other : 0) + listener,
    acquireTimeout: Duration.fromInputUnsafe(config.acquireTimeout ?? "30 seconds"),
    // Timers fire at once above 2^31-1 ms (Infinity included): an unbounded connect timeout is the largest bounded one.
    connectTimeoutMillis: Math.min(Duration.toMillis(Duration.fromInputUnsafe(config.connectTimeout ?? "10 seconds")), 2 ** 31 - 1),
    idleTimeout: Duration.fromInputUnsafe(config.idleTimeout ?? "10 minutes"),
    pipelining: pipelining(config.pipelining),
    maxLifetimeMillis: Duration.toMillis(Duration.fromInputUnsafe(config.maxLifetime ?? "30 minutes")),
    applicationName: config.applicationName ?? "effect-dbpool",
    startupSettings: startupSettings(config),
    password: config.password,
    ssl: driverSsl(config.ssl, url),
    prepare: config.prepare ?? true,
    target: Telemetry.target(`${name}/${kind}`, Redacted.value(url))
  }
}

interface Keys<W, R, N> {
  readonly write: Context.Key<W, WritePoolService>
  readonly read: Context.Key<R, InteractionPool>
  readonly notifications: Context.Key<N, NotificationsService>
}

/** One round trip on the pool (its connection stays open, idle, for the first caller). */
const check = (pool: InteractionPool, server: string): Effect.Effect<void, DbError.ConnectFailed> =>
  pool.run(Statement.text("SELECT 1")).pipe(
    Effect.asVoid,
    Effect.mapError((e) =>
      e._tag === "ConnectFailed" ? e : new DbError.ConnectFailed({ message: `checking ${server} failed: ${e.message}`, server })
    )
  )

const replicaSettings = (config: Config, name: string, url: Redacted.Redacted<string>, index: number): Pool.Settings => {
  const pool = `${name}/read/replica${index + 1}`
  return { ...settings({ ...config, readUrl: url }, name, "read"), name: pool, target: Telemetry.target(pool, Redacted.value(url)) }
}

/** With `readUrls`, the read pool over them; the read-only pool on the primary (`r`) takes what they cannot. */
const readReplicas = (config: Config, name: string, w: InteractionPool, r: InteractionPool) =>
  Effect.gen(function*() {
    const urls = config.readUrls ?? []
    const replicas: Array<Replicas.Replica> = []
    for (let i = 0; i < urls.length; i++) {
      const s = replicaSettings(config, name, urls[i]!, i)
      replicas.push({ pool: yield* Pool.make(s), server: s.server })
    }
    return yield* Replicas.make({
      name: `${name}/read`,
      replicas,
      primary: w,
      fallback: r,
      fallbackMode: config.replicaFallback ?? "primary",
      maxReplicaLag: Duration.fromInputUnsafe(config.maxReplicaLag ?? "10 seconds"),
      readYourWritesWait: Duration.fromInputUnsafe(config.readYourWritesWait ?? "1 second"),
      checkInterval: Duration.fromInputUnsafe(config.replicaCheckInterval ?? "2 seconds")
    })
  })

type DurationRule = "above zero" | "zero or more"

/** Why a configuration cannot make pools, if it cannot: checked before anything connects. */
const invalid = (config: Config): string | undefined => {
  const counts: ReadonlyArray<readonly [string, number | undefined, number]> = [
    ["minSize", config.minSize, 0],
    ["maxSize", config.maxSize, 1],
    ["readMinSize", config.readMinSize, 0],
    ["readMaxSize", config.readMaxSize, 1],
    ["pipelining.maxDepth", config.pipelining === false ? undefined : config.pipelining?.maxDepth, 1],
    ["pipelining.fillDepth", config.pipelining === false ? undefined : config.pipelining?.fillDepth, 0]
  ]
  for (const [name, value, least] of counts) {
    if (value !== undefined && !(Number.isInteger(value) && value >= least)) return `${name} must be a whole number of at least ${least} (got ${value})`
  }
  // A minimum alone raises the default maximum; both given, they must agree.
  if (config.minSize !== undefined && config.maxSize !== undefined && config.minSize > config.maxSize) {
    return `minSize (${config.minSize}) is above maxSize (${config.maxSize})`
  }
  if (config.readMinSize !== undefined && config.readMaxSize !== undefined && config.readMinSize > config.readMaxSize) {
    return `readMinSize (${config.readMinSize}) is above readMaxSize (${config.readMaxSize})`
  }
  const durations: ReadonlyArray<readonly [string, Duration.Input | undefined, DurationRule]> = [
    ["acquireTimeout", config.acquireTimeout, "above zero"],
    ["connectTimeout", config.connectTimeout, "above zero"],
    ["idleTimeout", config.idleTimeout, "above zero"],
    ["maxLifetime", config.maxLifetime, "above zero"],
    // 0 is the server's own "no timeout".
    ["statementTimeout", config.statementTimeout, "zero or more"],
    ["lockTimeout", config.lockTimeout, "zero or more"],
    ["idleInTransactionSessionTimeout", config.idleInTransactionSessionTimeout, "zero or more"],
    ["maxReplicaLag", config.maxReplicaLag, "above zero"],
    ["readYourWritesWait", config.readYourWritesWait, "zero or more"],
    ["replicaCheckInterval", config.replicaCheckInterval, "above zero"],
    ["listenHealthCheckInterval", config.listenHealthCheckInterval, "above zero"],
    ["pipelining.fastWithin", config.pipelining === false ? undefined : config.pipelining?.fastWithin, "above zero"],
    ["pipelining.stallAfter", config.pipelining === false ? undefined : config.pipelining?.stallAfter, "above zero"]
  ]
  for (const [name, value, rule] of durations) {
    if (value === undefined) continue
    const shown = typeof value === "string" || typeof value === "number" ? ` (got ${value})` : ""
    // Duration reads a NaN number as zero: refused here rather than becoming "no time at all".
    const duration = typeof value === "number" && Number.isNaN(value) ? Option.none() : Duration.fromInput(value)
    if (Option.isNone(duration)) return `${name} is not a duration${shown}`
    const millis = Duration.toMillis(duration.value)
    if (Number.isNaN(millis) || millis < 0 || (rule === "above zero" && millis === 0)) return `${name} must be ${rule}${shown}`
  }
  return undefined
}

const build = <W, R, N>(name: string, keys: Keys<W, R, N>, given: Config) =>
  Effect.gen(function*() {
    const why = invalid(given)
    if (why !== undefined) return yield* new DbError.InvalidInput({ message: `${name} pools: ${why}` })
    const hasReplicas = given.readUrls !== undefined && given.readUrls.length > 0
    // With readUrls the read-only pool on the primary is the fallback: readUrl is not used.
    const config: Config = hasReplicas ? { ...given, readUrl: undefined } : given
    const writeSettings = settings(config, name, "write")
    const w = yield* Pool.make(writeSettings)
    const readSettings = settings(config, name, "read")
    const primaryRead = yield* Pool.make(readSettings)
    if (config.checkOnStart !== false) {
      // A wrong URL or password fails the Layer at start-up, not the first query an hour later.
      yield* check(w, writeSettings.server)
      if (readSettings.server !== writeSettings.server) yield* check(primaryRead, readSettings.server)
    }
    const r = hasReplicas ? yield* readReplicas(config, name, w, primaryRead) : primaryRead
    // LISTEN needs a session of its own: behind a pooler in transaction mode it goes straight to Postgres.
    const listenUrl = config.listenUrl ?? writeSettings.url
    const listener = yield* Listener.make({
      name: `${name}/listen`,
      url: listenUrl,
      server: describeServer(listenUrl),
      applicationName: writeSettings.applicationName,
      connectTimeoutMillis: writeSettings.connectTimeoutMillis,
      password: config.password,
      ssl: listenerSsl(config.ssl, listenUrl),
      reconnect: config.listenReconnect ?? Listener.defaultReconnect,
      healthCheckInterval: Duration.fromInputUnsafe(config.listenHealthCheckInterval ?? "5 seconds")
    })
    return Context.make(keys.write, w).pipe(
      Context.add(keys.read, r),
      Context.add(keys.notifications, NotificationsImpl.make(listener, w, writeSettings.target))
    )
  })

const defaultKeys: Keys<WritePool, ReadPool, Notifications> = { write: WritePool, read: ReadPool, notifications: Notifications }

const fromEnv = (prefix: string): C.Config<Config> => {
  const int = (key: string) => C.option(C.Int(`${prefix}${key}`))
  const duration = (key: string) => C.option(C.Duration(`${prefix}${key}`))
  return C.all({
    url: C.Redacted(`${prefix}DATABASE_URL`),
    readUrl: C.option(C.Redacted(`${prefix}DATABASE_READ_URL`)),
    listenUrl: C.option(C.Redacted(`${prefix}DATABASE_LISTEN_URL`)),
    readUrls: C.option(C.Redacted(`${prefix}DATABASE_READ_URLS`)),
    maxReplicaLag: duration("DATABASE_MAX_REPLICA_LAG"),
    replicaFallback: C.option(C.Literals(["primary", "fail"], `${prefix}DATABASE_REPLICA_FALLBACK`)),
    readYourWritesWait: duration("DATABASE_READ_YOUR_WRITES_WAIT"),
    replicaCheckInterval: duration("DATABASE_REPLICA_CHECK_INTERVAL"),
    minSize: int("DATABASE_POOL_MIN"),
    maxSize: int("DATABASE_POOL_MAX"),
    readMinSize: int("DATABASE_READ_POOL_MIN"),
    readMaxSize: int("DATABASE_READ_POOL_MAX"),
    acquireTimeout: duration("DATABASE_ACQUIRE_TIMEOUT"),
    connectTimeout: duration("DATABASE_CONNECT_TIMEOUT"),
    idleTimeout: duration("DATABASE_IDLE_TIMEOUT"),
    maxLifetime: duration("DATABASE_MAX_LIFETIME"),
    applicationName: C.option(C.String(`${prefix}DATABASE_APPLICATION_NAME`)),
    statementTimeout: duration("DATABASE_STATEMENT_TIMEOUT"),
    lockTimeout: duration("DATABASE_LOCK_TIMEOUT"),
    idleInTransactionSessionTimeout: duration("DATABASE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT"),
    prepare: C.option(C.Boolean(`${prefix}DATABASE_PREPARE`)),
    maxDepth: int("DATABASE_PIPELINE_MAX_DEPTH"),
    fillDepth: int("DATABASE_PIPELINE_FILL_DEPTH")
  }).pipe(
    C.map((c) => ({
      url: c.url,
      readUrl: Option.getOrUndefined(c.readUrl),
      listenUrl: Option.getOrUndefined(c.listenUrl),
      readUrls: Option.match(c.readUrls, {
        onNone: () => undefined,
        onSome: (urls) =>
          Redacted.value(urls).split(",").map((u) => u.trim()).filter((u) => u !== "").map((u) => Redacted.make(u))
      }),
      maxReplicaLag: Option.getOrUndefined(c.maxReplicaLag),
      replicaFallback: Option.getOrUndefined(c.replicaFallback),
      readYourWritesWait: Option.getOrUndefined(c.readYourWritesWait),
      replicaCheckInterval: Option.getOrUndefined(c.replicaCheckInterval),
      minSize: Option.getOrUndefined(c.minSize),
      maxSize: Option.getOrUndefined(c.maxSize),
      readMinSize: Option.getOrUndefined(c.readMinSize),
      readMaxSize: Option.getOrUndefined(c.readMaxSize),
      acquireTimeout: Option.getOrUndefined(c.acquireTimeout),
      connectTimeout: Option.getOrUndefined(c.connectTimeout),
      idleTimeout: Option.getOrUndefined(c.idleTimeout),
      maxLifetime: Option.getOrUndefined(c.maxLifetime),
      applicationName: Option.getOrUndefined(c.applicationName),
      statementTimeout: Option.getOrUndefined(c.statementTimeout),
      lockTimeout: Option.getOrUndefined(c.lockTimeout),
      idleInTransactionSessionTimeout: Option.getOrUndefined(c.idleInTransactionSessionTimeout),
      prepare: Option.getOrUndefined(c.prepare),
      pipelining: { maxDepth: Option.getOrUndefined(c.maxDepth), fillDepth: Option.getOrUndefined(c.fillDepth) }
    }))
  )
}

/**
 * The default pools from settings.
 *
 * @example
 * ```ts
 * import { Redacted } from "effect"
 * import { DbPool } from "effect-dbpool"
 *
 * const PoolsLive = DbPool.layer({ url: Redacted.make("postgres://app:secret@localhost:5432/app"), maxSize: 16 })
 * ```
 *
 * @since 0.1.0
 */
export const layer = (config: Config): Layer.Layer<WritePool | ReadPool | Notifications, DbError.ConnectFailed | DbError.InvalidInput> =>
  Layer.effectContext(build("default", defaultKeys, config))

/**
 * The default pools from the environment (`DATABASE_URL`, `DATABASE_READ_URL`, …; see {@link Config}).
 *
 * @example
 * ```ts
 * import { DbPool } from "effect-dbpool"
 *
 * const PoolsLive = DbPool.layerConfig()
 * ```
 *
 * @since 0.1.0
 */
export const layerConfig = (): Layer.Layer<WritePool | ReadPool | Notifications, C.ConfigError | DbError.ConnectFailed | DbError.InvalidInput> =>
  Layer.effectContext(Effect.flatMap(fromEnv(""), (config) => build("default", defaultKeys, config)))

/**
 * A further pair of pools with service keys of its own.
 *
 * @example
 * ```ts
 * import { DbPool } from "effect-dbpool"
 *
 * const Analytics: DbPool.NamedPools<"analytics"> = DbPool.named("analytics")
 * // Analytics.Write, Analytics.Read and Analytics.Notifications are its service keys
 * const AnalyticsLive = Analytics.layerConfig() // reads ANALYTICS_DATABASE_URL, …
 * ```
 *
 * @since 0.1.0
 */
export interface NamedPools<Name extends string> {
  readonly name: Name
  readonly Write: Context.Service<NamedWritePool<Name>, WritePoolService>
  readonly Read: Context.Service<NamedReadPool<Name>, InteractionPool>
  readonly Notifications: Context.Service<NamedNotifications<Name>, NotificationsService>
  /** The pair from settings. */
  readonly layer: (
    config: Config
  ) => Layer.Layer<NamedWritePool<Name> | NamedReadPool<Name> | NamedNotifications<Name>, DbError.ConnectFailed | DbError.InvalidInput>
  /** The pair from the environment, every variable prefixed with the upper-cased name: `ANALYTICS_DATABASE_URL`, … */
  readonly layerConfig: () => Layer.Layer<
    NamedWritePool<Name> | NamedReadPool<Name> | NamedNotifications<Name>,
    C.ConfigError | DbError.ConnectFailed | DbError.InvalidInput
  >
}

/**
 * The service identifier of a named pool pair's notifications.
 *
 * @example
 * ```ts
 * import type { Effect } from "effect"
 * import { type DbError, DbPool } from "effect-dbpool"
 *
 * const Analytics = DbPool.named("analytics")
 *
 * const refresh: Effect.Effect<void, DbError.DbError, DbPool.NamedNotifications<"analytics">> =
 *   Analytics.Notifications.use((notifications) => notifications.notify("refresh", "events"))
 * ```
 *
 * @since 0.1.0
 */
export interface NamedNotifications<Name extends string> {
  readonly _: unique symbol
  readonly name: Name
  readonly kind: "notifications"
}

/**
 * The service identifier of a named write pool.
 *
 * @example
 * ```ts
 * import type { Effect } from "effect"
 * import { type DbError, DbPool, sql } from "effect-dbpool"
 *
 * const Analytics = DbPool.named("analytics")
 *
 * const record: Effect.Effect<unknown, DbError.DbError, DbPool.NamedWritePool<"analytics">> =
 *   Analytics.Write.use((pool) => pool.run(sql`INSERT INTO events (kind) VALUES (${"login"})`))
 * ```
 *
 * @since 0.1.0
 */
export interface NamedWritePool<Name extends string> {
  readonly _: unique symbol
  readonly name: Name
  readonly kind: "write"
}

/**
 * The service identifier of a named read pool.
 *
 * @example
 * ```ts
 * import type { Effect } from "effect"
 * import { type DbError, DbPool, sql } from "effect-dbpool"
 *
 * const Analytics = DbPool.named("analytics")
 *
 * const events: Effect.Effect<unknown, DbError.DbError, DbPool.NamedReadPool<"analytics">> =
 *   Analytics.Read.use((pool) => pool.run(sql`SELECT count(*) FROM events`))
 * ```
 *
 * @since 0.1.0
 */
export interface NamedReadPool<Name extends string> {
  readonly _: unique symbol
  readonly name: Name
  readonly kind: "read"
}

/**
 * Declares a named pair of pools, e.g. an analytics database next to the
 * main one. Declare each name once, at module level.
 *
 * @example
 * ```ts
 * import { Effect, Redacted } from "effect"
 * import { DbPool, sql } from "effect-dbpool"
 *
 * const Analytics = DbPool.named("analytics")
 *
 * const report = Effect.gen(function*() {
 *   const pool = yield* Analytics.Read
 *   return yield* pool.run(sql`SELECT count(*) FROM events`)
 * }).pipe(Effect.provide(Analytics.layer({ url: Redacted.make("postgres://localhost/analytics") })))
 * ```
 *
 * @since 0.1.0
 */
export const named = <const Name extends string>(name: Name): NamedPools<Name> => {
  const Write = Context.Service<NamedWritePool<Name>, WritePoolService>(`effect-dbpool/WritePool/${name}`)
  const Read = Context.Service<NamedReadPool<Name>, InteractionPool>(`effect-dbpool/ReadPool/${name}`)
  const Notifications = Context.Service<NamedNotifications<Name>, NotificationsService>(`effect-dbpool/Notifications/${name}`)
  const keys = { write: Write, read: Read, notifications: Notifications }
  const prefix = `${name.toUpperCase().replace(/[^A-Z0-9]+/g, "_")}_`
  return {
    name,
    Write,
    Read,
    Notifications,
    layer: (config) => Layer.effectContext(build(name, keys, config)),
    layerConfig: () => Layer.effectContext(Effect.flatMap(fromEnv(prefix), (config) => build(name, keys, config)))
  }
}
