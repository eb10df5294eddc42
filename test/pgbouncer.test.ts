/**
 * Behind a real PgBouncer (Debian's package; CI installs it): transaction
 * mode with `prepare: false` — statements, transactions and partial
 * transactions each on one server connection — and session mode; LISTEN goes
 * straight to Postgres through `listenUrl`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer, Redacted, References, Stream } from "effect"
import { DbPool, Notifications, sql, WritePool } from "effect-dbpool"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { afterAll, beforeAll } from "vitest"
import { databaseUrl } from "./support.ts"

const binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"].find((p) => Fs.existsSync(p)) ??
  (spawnSync("sh", ["-c", "command -v pgbouncer"], { encoding: "utf8" }).stdout.trim() || undefined)
if (binary === undefined) {
  console.warn("pgbouncer is not installed (apt-get install -y pgbouncer): the PgBouncer tests are skipped on this machine")
}

const server = new URL(Redacted.value(databaseUrl))
let bouncer: ChildProcess | undefined
let port = 0
let dir = ""

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = Net.createServer()
    s.listen(0, "127.0.0.1", () => {
      const a = s.address()
      s.close(() => resolve(typeof a === "object" && a !== null ? a.port : 0))
    })
  })

const listening = (p: number) =>
  new Promise<boolean>((resolve) => {
    const socket = Net.connect(p, "127.0.0.1")
    socket.once("connect", () => (socket.destroy(), resolve(true)))
    socket.once("error", () => resolve(false))
  })

beforeAll(async () => {
  if (binary === undefined) return
  port = await freePort()
  dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "dbpool-pgbouncer-"))
  Fs.chmodSync(dir, 0o777) // PgBouncer refuses to run as root: it runs as `postgres`, and writes its log here
  const target = `host=127.0.0.1 port=${server.port} dbname=${server.pathname.slice(1)} user=${decodeURIComponent(server.username)} password=${decodeURIComponent(server.password)}`
  Fs.writeFileSync(
    Path.join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `tx = ${target} pool_mode=transaction`,
      `session = ${target} pool_mode=session`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "auth_type = any",
      "max_client_conn = 200",
      "default_pool_size = 4",
      "ignore_startup_parameters = extra_float_digits,options",
      "unix_socket_dir =",
      `logfile = ${Path.join(dir, "pgbouncer.log")}`
    ].join("\n") + "\n"
  )
  Fs.chmodSync(Path.join(dir, "pgbouncer.ini"), 0o644)
  const asRoot = process.getuid?.() === 0
  bouncer = spawn(binary, [...(asRoot ? ["-u", "postgres"] : []), Path.join(dir, "pgbouncer.ini")], { stdio: "ignore" })
  for (let i = 0; i < 100 && !(await listening(port)); i++) await new Promise((r) => setTimeout(r, 50))
})

afterAll(() => {
  bouncer?.kill("SIGTERM")
  if (dir !== "") Fs.rmSync(dir, { recursive: true, force: true })
})

const through = (database: "tx" | "session") => Redacted.make(`postgres://any:any@127.0.0.1:${port}/${database}`)
const quiet = Layer.succeed(References.MinimumLogLevel, "Error")
const suffix = `${process.pid}_${Date.now().toString(36)}`

describe.skipIf(binary === undefined)("behind PgBouncer", () => {
  it.live("transaction mode: statements, transactions, partial transactions holding a lock, and LISTEN through listenUrl", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const table = sql.id(`pgbouncer_${suffix}`)
      const [row] = yield* pool.run(sql`SELECT inet_server_port() AS port, ${"x"}::text AS bound`)
      assert.strictEqual(Number(row?.["port"]), Number(server.port))
      assert.strictEqual(row?.["bound"], "x")
      yield* pool.run(sql`CREATE TABLE ${table} (id int PRIMARY KEY, val int NOT NULL)`)
      yield* pool.run(sql`INSERT INTO ${table} VALUES (1, 0), (2, 0)`)
      // A failed transaction rolls back as a whole.
      yield* Effect.flip(pool.transaction((conn) =>
        Effect.andThen(conn.run(sql`UPDATE ${table} SET val = 1 WHERE id = 1`), conn.run(sql`SELECT 1/0`))
      ))
      const [v] = yield* pool.run(sql`SELECT val FROM ${table} WHERE id = 1`)
      assert.strictEqual(v?.["val"], 0)
      // A partial transaction keeps its server connection (and its row lock) between steps.
      yield* Effect.scoped(Effect.gen(function*() {
        const tx = yield* pool.partialTransaction()
        yield* tx.run(sql`SELECT id FROM ${table} WHERE id = 2 FOR UPDATE`)
        const blocked = yield* Effect.flip(pool.run(sql`SELECT id FROM ${table} WHERE id = 2 FOR UPDATE NOWAIT`))
        assert.strictEqual(blocked._tag, "LockNotAvailable")
        yield* tx.run(sql`UPDATE ${table} SET val = 2 WHERE id = 2`)
        yield* tx.commit
      }))
      const [free] = yield* pool.run(sql`SELECT val FROM ${table} WHERE id = 2 FOR UPDATE NOWAIT`)
      assert.strictEqual(free?.["val"], 2)
      // LISTEN on its own connection, straight to Postgres; the NOTIFY goes through PgBouncer.
      const notifications = yield* Notifications.Notifications
      const subscribed = yield* Deferred.make<void>()
      const first = yield* notifications.listen("pgbouncer_channel").pipe(
        Stream.tap((e) => e._tag === "Subscribed" ? Deferred.succeed(subscribed, undefined) : Effect.void),
        Notifications.payloads,
        Stream.take(1),
        Stream.runCollect,
        Effect.forkChild
      )
      yield* Deferred.await(subscribed)
      yield* notifications.notify("pgbouncer_channel", "through the bouncer")
      assert.deepStrictEqual(yield* Fiber.join(first), ["through the bouncer"])
      yield* pool.run(sql`DROP TABLE ${table}`)
    }).pipe(Effect.provide(
      DbPool.layer({ url: through("tx"), listenUrl: databaseUrl, prepare: false, maxSize: 4, applicationName: "dbpool-test-pgbouncer" })
        .pipe(Layer.provide(quiet))
    )))

  it.live("session mode: named prepared statements work", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const rows = yield* pool.interaction((conn) =>
        Effect.andThen(conn.run(sql`SELECT ${1}::int AS n`), conn.run(sql`SELECT count(*)::int AS n FROM pg_prepared_statements`))
      )
      assert.isAtLeast(Number(rows[0]?.["n"]), 1)
    }).pipe(Effect.provide(
      DbPool.layer({ url: through("session"), listenUrl: databaseUrl, maxSize: 2, applicationName: "dbpool-test-pgbouncer" })
        .pipe(Layer.provide(quiet))
    )))
})
