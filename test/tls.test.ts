/**
 * TLS (`DbPool.Config.ssl`) against an embedded server of this file's own,
 * serving a certificate made at test time with the openssl CLI: a CA, a
 * server certificate for `localhost` (not for `127.0.0.1`, where the server
 * listens too: that is the host name check), and client certificates. What
 * counts is what the server sees: `pg_stat_ssl` of the pool's connections
 * (single statements, transactions, the read pool) and of the listening
 * connection, whose notification round trip must work too.
 *
 * The server trusts the same CA for client certificates (`ssl_ca_file`)
 * without requiring one, so `pg_stat_ssl.client_dn` shows whether the
 * configured certificate was presented.
 */
import { EmbeddedPostgres, layer as embeddedPostgres } from "@effect-dbpool/embedded-postgres"
import { assert, layer } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Layer, Option, Redacted, References, Schedule, Stream } from "effect"
import { DbPool, Notifications, ReadPool, sql, WritePool } from "effect-dbpool"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import postgres from "postgres"
import { failOnEscapes } from "./support.ts"

failOnEscapes()

// ---------------------------------------------------------------------------------------------------------
// Certificates

interface Pki {
  /** Signs the server's certificate and `client`; the server trusts it for client certificates. */
  readonly ca: string
  readonly serverCert: string
  readonly serverKey: string
  /** An unrelated CA: signs `stranger`, and nothing the server shows. */
  readonly otherCa: string
  /** CN=postgres, signed by `ca`. */
  readonly client: { readonly cert: string; readonly key: string }
  /** CN=postgres, signed by `otherCa`. */
  readonly stranger: { readonly cert: string; readonly key: string }
}

/** Elliptic-curve keys: a whole set takes a few tens of milliseconds. The files are deleted once read. */
const makePki = (): Pki => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-dbpool-tls-"))
  const openssl = (...args: Array<string>) => {
    try {
      ChildProcess.execFileSync("openssl", args, { cwd: dir, stdio: "pipe" })
    } catch (error) {
      if (typeof error === "object" && error !== null && "code" in error && error.code === "ENOENT") {
        throw new Error("test/tls.test.ts makes its certificates with the openssl CLI, which is not on PATH: install openssl")
      }
      const stderr = typeof error === "object" && error !== null && "stderr" in error ? String(error.stderr) : String(error)
      throw new Error(`openssl ${args.join(" ")} failed: ${stderr}`)
    }
  }
  const newKey = (name: string) => ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", `${name}.key`]
  const ca = (name: string) => openssl("req", "-x509", ...newKey(name), "-out", `${name}.crt`, "-days", "2", "-subj", `/CN=effect-dbpool test ${name}`)
  const leaf = (name: string, cn: string, issuer: string, extensions: ReadonlyArray<string>) =>
    openssl(
      "req", "-x509", ...newKey(name), "-out", `${name}.crt`, "-days", "2", "-subj", `/CN=${cn}`,
      "-CA", `${issuer}.crt`, "-CAkey", `${issuer}.key`,
      ...["basicConstraints=critical,CA:FALSE", ...extensions].flatMap((e) => ["-addext", e])
    )
  try {
    ca("ca")
    ca("other-ca")
    // Not 127.0.0.1, although the server listens there: connecting to it shows whether the host name is checked.
    leaf("server", "localhost", "ca", ["subjectAltName=DNS:localhost", "extendedKeyUsage=serverAuth"])
    leaf("client", "postgres", "ca", ["extendedKeyUsage=clientAuth"])
    leaf("stranger", "postgres", "other-ca", ["extendedKeyUsage=clientAuth"])
    const read = (file: string) => Fs.readFileSync(Path.join(dir, file), "utf8")
    return {
      ca: read("ca.crt"),
      serverCert: read("server.crt"),
      serverKey: read("server.key"),
      otherCa: read("other-ca.crt"),
      client: { cert: read("client.crt"), key: read("client.key") },
      stranger: { cert: read("stranger.crt"), key: read("stranger.key") }
    }
  } finally {
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}

const pki = makePki()

// ---------------------------------------------------------------------------------------------------------
// Helpers

const ServerLive = embeddedPostgres({ tls: { cert: pki.serverCert, key: Redacted.make(pki.serverKey), ca: pki.ca } })

/** The listener's retries log warnings; a test that makes it fail on purpose need not show them. */
const quiet = Layer.succeed(References.MinimumLogLevel, "Error")

const withUrl = (url: Redacted.Redacted<string>, change: (u: URL) => void): Redacted.Redacted<string> => {
  const u = new URL(Redacted.value(url))
  change(u)
  return Redacted.make(u.toString())
}

/** The URL with the host name the server's certificate names (the embedded server's URL says 127.0.0.1). */
const atLocalhost = (url: Redacted.Redacted<string>) => withUrl(url, (u) => void (u.hostname = "localhost"))

const passwordOf = (url: Redacted.Redacted<string>) => decodeURIComponent(new URL(Redacted.value(url)).password)

let apps = 0
/** Pools on this file's server, under an application_name of their own. */
const poolsOn = (server: EmbeddedPostgres["Service"], config: Partial<DbPool.Config>) => {
  const applicationName = `dbpool-test-tls-${++apps}`
  return {
    applicationName,
    layer: DbPool.layer({
      url: server.url,
      maxSize: 2,
      acquireTimeout: "3 seconds",
      connectTimeout: "3 seconds",
      applicationName,
      ...config
    }).pipe(Layer.provide(quiet))
  }
}

/** A plain connection to the server, outside the pools, to look at it. */
const observer = (server: EmbeddedPostgres["Service"]) =>
  Effect.acquireRelease(
    Effect.sync(() => postgres(Redacted.value(server.url), { max: 1, ssl: false, onnotice: () => {} })),
    (o) => Effect.promise(() => o.end({ timeout: 1 }))
  )

/** How the server sees one backend's connection. */
interface Seen {
  readonly ssl: boolean | undefined
  /** The subject of the client certificate the backend accepted; `null` without one. */
  readonly clientDn: string | null | undefined
}

const seen = (rows: ReadonlyArray<Record<string, unknown>>): Seen => ({
  ssl: rows[0]?.["ssl"] as boolean | undefined,
  clientDn: rows[0]?.["client_dn"] as string | null | undefined
})

const mySsl = sql`SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()`

interface Observed {
  readonly run: Seen
  readonly transaction: Seen
  readonly read: Seen
  readonly listener: Seen
  /** Every backend of the pools (the listener included) as the observer sees it. */
  readonly backends: ReadonlyArray<Seen & { readonly listening: boolean }>
}

/**
 * Uses every kind of connection of the pools — a statement, a transaction,
 * the read pool, and a notification round trip through the listening
 * connection — and says how the server sees each.
 */
const exercise = (server: EmbeddedPostgres["Service"], applicationName: string) =>
  Effect.gen(function*() {
    const write = yield* WritePool
    const read = yield* ReadPool
    const notifications = yield* Notifications.Notifications
    const run = seen(yield* write.run(mySsl))
    const transaction = seen(yield* write.transaction((conn) => conn.run(mySsl)))
    const readSeen = seen(yield* read.run(mySsl))

    const channel = `tls_${applicationName.replaceAll("-", "_")}`
    const subscribed = yield* Deferred.make<void>()
    const received = yield* notifications.listen(channel).pipe(
      Stream.tap((event) => event._tag === "Subscribed" ? Deferred.succeed(subscribed, undefined) : Effect.void),
      Stream.filter((event) => event._tag === "Notification"),
      Stream.runHead,
      Effect.forkScoped
    )
    yield* Deferred.await(subscribed).pipe(Effect.timeout("5 seconds"))
    yield* notifications.notify(channel, "over TLS?")
    const notification = yield* Fiber.join(received).pipe(Effect.timeout("5 seconds"))
    assert.deepStrictEqual(
      Option.map(notification, (n) => n.payload),
      Option.some("over TLS?"),
      "the notification made the round trip"
    )
    const listenerPid = yield* notifications.listenerPid
    assert.isDefined(listenerPid)

    const o = yield* observer(server)
    const listener = seen(yield* Effect.promise(() => o`SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = ${listenerPid ?? 0}`))
    const backends = yield* Effect.promise(() =>
      o`
        SELECT a.pid, s.ssl, s.client_dn
        FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
        WHERE a.application_name = ${applicationName}
        ORDER BY a.pid
      `
    )
    return {
      run,
      transaction,
      read: readSeen,
      listener,
      backends: backends.map((row) => ({ ...seen([row]), listening: row["pid"] === listenerPid }))
    } satisfies Observed
  })

/** Every connection of the pools is seen as `expected`; the listener is among them. */
const assertAll = (observed: Observed, expected: Seen) => {
  assert.deepStrictEqual(
    { run: observed.run, transaction: observed.transaction, read: observed.read, listener: observed.listener },
    { run: expected, transaction: expected, read: expected, listener: expected }
  )
  assert.isAtLeast(observed.backends.length, 3, "a write and a read connection, and the listener")
  assert.strictEqual(observed.backends.filter((b) => b.listening).length, 1, "the listener is one of the backends")
  for (const backend of observed.backends) assert.deepStrictEqual({ ssl: backend.ssl, clientDn: backend.clientDn }, expected)
}

const withPools = (server: EmbeddedPostgres["Service"], config: Partial<DbPool.Config>) => {
  const pools = poolsOn(server, config)
  return exercise(server, pools.applicationName).pipe(Effect.scoped, Effect.provide(pools.layer))
}

/** The string forms an error may reach a log or a user in. */
const renderings = (error: unknown): ReadonlyArray<string> => [
  String(error),
  // Plain JSON: an error of this library must serialise (a certificate in a driver error's cause refers to itself).
  JSON.stringify(error),
  error instanceof Error ? error.message : "",
  error instanceof Error ? error.stack ?? "" : ""
]

/** Building the pools' Layer (which checks the server by default) fails: with what. */
const buildFailure = (server: EmbeddedPostgres["Service"], config: Partial<DbPool.Config>) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(Layer.build(poolsOn(server, config).layer).pipe(Effect.scoped))
    assert.isTrue(Exit.isFailure(exit), "the Layer fails")
    const found = Exit.isFailure(exit) ? Option.getOrUndefined(Exit.findErrorOption(exit)) : undefined
    assert.strictEqual(found?._tag, "ConnectFailed")
    const error = found?._tag === "ConnectFailed" ? found : undefined
    for (const text of renderings(error)) assert.notInclude(text, passwordOf(server.url))
    return error!
  })

const encrypted: Seen = { ssl: true, clientDn: null }

// ---------------------------------------------------------------------------------------------------------

// Live services: the pools and the listener run on real time.
layer(ServerLive, { timeout: "60 seconds", excludeTestServices: true })("TLS", (it) => {
  it.effect("the embedded server serves TLS and trusts the CA for client certificates", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      const o = yield* observer(server)
      const rows = yield* Effect.promise(() => o`SELECT current_setting('ssl') AS ssl, current_setting('ssl_ca_file') <> '' AS client_ca`)
      assert.deepStrictEqual(rows.map((r) => ({ ...r })), [{ ssl: "on", client_ca: true }])
    }).pipe(Effect.scoped))

  it.effect("ssl: \"require\" encrypts every connection: statements, transactions, the read pool, the listener", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      assertAll(yield* withPools(server, { ssl: "require" }), encrypted)
    }))

  it.effect("ssl: \"disable\" encrypts none, even where the URL says sslmode=require", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      // Plain is also what the drivers do by default: only a URL asking for TLS shows that the option is obeyed.
      const url = withUrl(server.url, (u) => u.searchParams.set("sslmode", "require"))
      assertAll(yield* withPools(server, { url, ssl: "disable" }), { ssl: false, clientDn: null })
    }))

  it.effect("verify-full with the server's CA connects to localhost, encrypted", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      assertAll(yield* withPools(server, { url: atLocalhost(server.url), ssl: { mode: "verify-full", ca: pki.ca } }), encrypted)
    }))

  it.effect("verify-full with another CA fails the Layer with ConnectFailed, without the password", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      const error = yield* buildFailure(server, {
        url: atLocalhost(server.url),
        ssl: { mode: "verify-full", ca: pki.otherCa }
      })
      assert.match(error.message, /certificate/i)
    }))

  it.effect("verify-full checks the host name: a certificate for localhost is refused for another name", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      // The server's own address (the embedded server's URL), which its certificate does not name. postgres.js gives
      // Node no name to check for an IP address, and Node then checks against "localhost" — which this certificate
      // names: it passed until the pool gave the address as `host`.
      const error = yield* buildFailure(server, { ssl: { mode: "verify-full", ca: pki.ca } })
      assert.match(error.message, /127\.0\.0\.1|altnames/i)
    }))

  it.effect("ssl: \"verify-full\" checks against the system's roots, which do not include a private CA", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      const error = yield* buildFailure(server, { url: atLocalhost(server.url), ssl: "verify-full" })
      assert.match(error.message, /certificate/i)
    }))

  for (const [refused, at, ca, reason] of [
    ["another CA", "localhost", pki.otherCa, /certificate/i],
    ["a certificate for another name", "127.0.0.1", pki.ca, /127\.0\.0\.1|altnames/i]
  ] as const) {
    it.effect(`the listening connection checks the certificate too: it refuses ${refused}, and gives up without the password`, () =>
      Effect.gen(function*() {
        const server = yield* EmbeddedPostgres
        const pools = poolsOn(server, {
          url: withUrl(server.url, (u) => void (u.hostname = at)),
          ssl: { mode: "verify-full", ca },
          checkOnStart: false,
          listenReconnect: Schedule.recurs(1)
        })
        yield* Effect.gen(function*() {
          const notifications = yield* Notifications.Notifications
          const error = yield* notifications.listen("tls_never").pipe(Stream.runDrain, Effect.flip, Effect.timeout("10 seconds"))
          assert.strictEqual(error._tag, "ListenerGaveUp")
          assert.match(String(error._tag === "ListenerGaveUp" && error.cause instanceof Error ? error.cause.message : ""), reason)
          for (const text of renderings(error)) assert.notInclude(text, passwordOf(server.url))
          // The pool itself (not checked at start-up here) refuses it the same way.
          const poolError = yield* Effect.flip((yield* WritePool).run(sql`SELECT 1`))
          assert.strictEqual(poolError._tag, "ConnectFailed")
          assert.match(poolError.message, reason)
        }).pipe(Effect.provide(pools.layer))
      }))
  }

  it.effect("a client certificate (cert, key) is presented by every connection, the listener's included", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      const observed = yield* withPools(server, {
        url: atLocalhost(server.url),
        ssl: { mode: "verify-full", ca: pki.ca, cert: pki.client.cert, key: Redacted.make(pki.client.key) }
      })
      assertAll(observed, { ssl: true, clientDn: "/CN=postgres" })
    }))

  it.effect("a client certificate the server does not trust fails the Layer with ConnectFailed", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      const error = yield* buildFailure(server, {
        ssl: { mode: "require", cert: pki.stranger.cert, key: Redacted.make(pki.stranger.key) }
      })
      // The server's TLS alert (it does not know the CA that signed the client's certificate); under TLS 1.3 the client
      // may finish its side of the handshake first, and then sees the server close the connection on its next write.
      assert.match(error.message, /unknown ca|ECONNRESET/i)
    }))

  it.effect("without an ssl option the URL's sslmode=require encrypts every connection, the listener's included", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      const url = withUrl(server.url, (u) => u.searchParams.set("sslmode", "require"))
      assertAll(yield* withPools(server, { url }), encrypted)
    }))

  it.effect("ssl: \"require\" wins over the URL's sslmode=disable, for the listener too", () =>
    Effect.gen(function*() {
      const server = yield* EmbeddedPostgres
      const url = withUrl(server.url, (u) => u.searchParams.set("sslmode", "disable"))
      assertAll(yield* withPools(server, { url, ssl: "require" }), encrypted)
    }))
})

