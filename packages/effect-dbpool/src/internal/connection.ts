/**
 * One pooled connection: a postgres.js instance with `max: 1`, so that every
 * statement of an interaction lands on the same backend, and the library —
 * not the driver — decides when a connection is reused, rolled back or
 * thrown away. The driver's own pool, `begin` and `reserve` are never used:
 * they are where its failure modes live.
 *
 * This module owns what is on a connection's wire and in its session: its
 * {@link Wire} state, its transaction depth, a BEGIN sent and not yet
 * answered (or refused), whether a statement failed in the transaction,
 * whether the session was changed. Only the functions here
 * change them; the slots (who holds the connection) live in `slots.ts`.
 */
import { Array as Arr, Cause, Clock, Duration, Effect, Option, Redacted, Schema, type Scope, Stream } from "effect"
import postgres from "postgres"
import type { Connection, Row, StreamOptions, TransactionOptions } from "../Connection.ts"
import * as DbError from "../DbError.ts"
import type { Statement, Value } from "../Statement.ts"
import { arrayTypesQuery, installArrayParsers } from "./arrays.ts"
import * as Server from "./server.ts"
import { fromDriver, isConnectionFailure, sqlStateClass } from "./errors.ts"
import { arrayText, arrayTypeOid, isJsonObject, Json, unsendable } from "./literal.ts"
import * as Notify from "./notify.ts"
import * as Telemetry from "./telemetry.ts"
import { describe, operationOf, unlocksWrites } from "./sqlText.ts"

/** How to open connections; derived from the pool's config. */
export interface ConnectOptions {
  readonly url: Redacted.Redacted<string>
  /** `host:port/database`, for messages and logs. */
  readonly server: string
  readonly readOnly: boolean
  readonly connectTimeoutMillis: number
  readonly maxLifetimeMillis: number
  readonly applicationName: string
  /** Server settings sent at connect (timeouts, `serverSettings`): `RESET ALL` returns to these. */
  readonly startupSettings: Readonly<Record<string, string>>
  /** Evaluated at every connect, when given (rotating credentials); otherwise the URL's password. */
  readonly password: Effect.Effect<Redacted.Redacted<string>, unknown> | undefined
  /** postgres.js's `ssl` option, when given; otherwise the URL's `sslmode`. */
  readonly ssl: postgres.Options<{}>["ssl"] | undefined
  /** Named prepared statements (off behind a pooler in transaction mode). */
  readonly prepare: boolean
}

/**
 * What is on the wire:
 * - `ready`: nothing of ours is in doubt; the connection may be reused.
 * - `cancelling`: a cancel request for its statement is being sent and the statement awaited; nobody may join.
 * - `doubtful`: a cancel request may still land on whatever runs next: retire it.
 * - `dead`: the socket closed, a statement failed with a connection error, or a holder gave the connection back with
 *   a statement still running (see {@link abandonLeftRunning}): never use it again.
 *
 * `ready → cancelling → ready | doubtful | dead`, and `* → dead`; nothing leaves `doubtful` or `dead`.
 */
export type Wire = "ready" | "cancelling" | "doubtful" | "dead"

/** The part of a postgres.js query this module relies on; `state` is set once the query was handed to the connection. */
interface DriverQuery {
  /**
   * What `cancel()` calls, once: it returns the promise of the cancel request, which `cancel()` drops — so a
   * request that cannot reach the server (it refuses new connections during a failover) would reject unhandled,
   * and end the process. {@link cancel} keeps it. (postgres.js 3.4.9 sets it on every query; `null` once used.)
   */
  canceller?: ((query: DriverQuery) => Promise<unknown>) | null
  readonly state?: unknown
}

/**
 * Cancels a statement: one still queued in the driver is dropped (it fails locally); one sent gets a cancel request
 * on a connection of its own. A request that fails is the same as one that did not land.
 */
const cancel = (query: DriverQuery): void => {
  const canceller = query.canceller
  if (typeof canceller !== "function") return
  query.canceller = null
  canceller(query).catch(() => undefined)
}

/** One connection's wire and session state, changed only by this module. */
export class Conn {
  wire: Wire = "ready"
  /** 0 outside a transaction, 1 inside one, more inside savepoints. */
  txDepth = 0
  /** A statement failed inside the current transaction: the server ignores the rest until rollback. */
  failed = false
  /** A `SET` (without `LOCAL`) or the like ran: the session is reset before the connection is reused. */
  sessionChanged = false
  /** Makes savepoint names unique on this connection. */
  savepoints = 0
  /**
   * BEGIN sent and not yet answered (see {@link sendBegin}): statements wait for it, in `send`, and are sent
   * only once it succeeded.
   */
  opening: Promise<void> | undefined = undefined
  /** Why the current transaction's BEGIN failed: its statements fail with this, unsent, until it is rolled back. */
  beginError: DbError.DbError | undefined = undefined
  /** Statements given to the driver and not yet settled. */
  readonly inflight = new Set<DriverQuery>()
  pid = 0
  readonly sql: postgres.Sql
  readonly server: string
  readonly expiresAt: number
  /** A read pool's connection: statements that would make it writable are refused (see {@link prepare}). */
  readonly readOnly: boolean
  /** Told once, when the connection dies (its socket closed, a connection error): the pool retires it if idle. */
  onDead: (() => void) | undefined = undefined
  constructor(sql: postgres.Sql, server: string, expiresAt: number, readOnly: boolean) {
    this.sql = sql
    this.server = server
    this.expiresAt = expiresAt
    this.readOnly = readOnly
  }
}

const markDead = (conn: Conn): void => {
  if (conn.wire === "dead") return
  conn.wire = "dead"
  conn.onDead?.()
}

/**
 * The socket closed. postgres.js would open a new backend by itself for any
 * statement still queued inside it (not yet sent: it waits behind a statement
 * being described) — a silent new session, outside the transaction its holder
 * believes it is in, that nobody closes. Dropping those statements first
 * leaves it nothing to reconnect for; they fail with `ConnectionLost`.
 */
const socketClosed = (conn: Conn): void => {
  markDead(conn)
  for (const query of conn.inflight) {
    if (query.state === undefined || query.state === null) cancel(query)
  }
}

/** Can the connection take more work (now = the pool clock's milliseconds)? */
export const reusable = (conn: Conn, now: number): boolean => conn.wire === "ready" && now < conn.expiresAt

/** Why a connection that is not `reusable` must go (for the discarded-connections metric). */
export const retireCause = (conn: Conn): "dead" | "doubtful" | "lifetime" =>
  conn.wire === "dead" ? "dead" : conn.wire === "ready" ? "lifetime" : "doubtful"

/**
 * When an exclusive holder gives the connection back: a statement it left running (sent from a fiber that outlived
 * its interaction) would run ahead of the next holder's statements, or be cancelled into them. Such a connection is
 * not reused: marked dead, it is closed, which ends the statement (and any transaction) on the server.
 */
export const abandonLeftRunning = (conn: Conn): void => {
  // While `opening` is set the only statements in flight are BEGIN and its SET LOCALs, which the rollback awaits.
  if (conn.opening === undefined && conn.inflight.size > 0) markDead(conn)
}

/** Does it need a rollback or a session reset before it goes back? */
export const needsCleanup = (conn: Conn): boolean => conn.wire !== "dead" && (conn.txDepth > 0 || conn.sessionChanged)

const lost = (conn: Conn, statement: string | undefined) =>
  // Only raised for statements that were never written: a dead connection, or dropped from the driver's queue.
  new DbError.ConnectionLost({ message: `connection to ${conn.server} was lost`, statement, sent: false })

const connectFailed = (server: string, cause: unknown): DbError.DbError => {
  const mapped = fromDriver(cause, undefined)
  if (mapped._tag === "ConnectionLost" || (mapped._tag === "DatabaseError" && mapped.sqlState === "XX000")) {
    return new DbError.ConnectFailed({ message: `cannot connect to ${server}: ${mapped.message}`, server })
  }
  if ("sqlState" in mapped && typeof mapped.sqlState === "string" && mapped.sqlState.startsWith("28")) {
    return new DbError.ConnectFailed({
      message: `cannot connect to ${server}: ${mapped.message}`,
      server,
      sqlState: mapped.sqlState,
      sqlStateClass: sqlStateClass(mapped.sqlState)
    })
  }
  return mapped
}

/** A single-connection driver instance; throws on an unparseable URL. */
const driver = (options: ConnectOptions, url: string, password: Redacted.Redacted<string> | undefined, onclose: () => void): postgres.Sql =>
  postgres(url, {
    max: 1,
    idle_timeout: 0,
    max_lifetime: null,
    connect_timeout: Math.max(1, Math.ceil(options.connectTimeoutMillis / 1000)),
    prepare: options.prepare,
    fetch_types: false,
    onnotice: () => {},
    onclose,
    ...(password === undefined ? {} : { pass: Redacted.value(password) }),
    ...(options.ssl === undefined ? {} : { ssl: options.ssl }),
    connection: {
      ...options.startupSettings,
      application_name: options.applicationName,
      ...(options.readOnly ? { default_transaction_read_only: true } : {})
    }
  })

/** A connection opened on one host, not yet owned by a scope, and whether that server is a standby. */
interface Opened {
  readonly conn: Conn
  readonly standby: boolean
}

/** Opens one connection to the one host of `url`; on failure or interruption it destroys what it started. */
const openOne = (
  options: ConnectOptions,
  url: string,
  password: Redacted.Redacted<string> | undefined,
  expiresAt: number,
  restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
): Effect.Effect<Opened, DbError.DbError> =>
  Effect.suspend(() => {
    let conn: Conn | undefined
    let sql: postgres.Sql
    try {
      sql = driver(options, url, password, () => {
        if (conn !== undefined) socketClosed(conn)
      })
    } catch {
      // The driver throws on a URL it cannot parse, with the URL in the error: say so without repeating it.
      return Effect.fail(new DbError.ConnectFailed({ message: `cannot connect: the connection URL is not valid`, server: options.server }))
    }
    const c = new Conn(sql, options.server, expiresAt, options.readOnly)
    conn = c
    return restore(Effect.tryPromise({
      try: () =>
        sql.unsafe(`SELECT pg_backend_pid() AS pid, pg_is_in_recovery() AS standby, ${arrayTypesQuery} AS array_types`),
      catch: (cause) => connectFailed(options.server, cause)
    })).pipe(
      // Failed or interrupted before the scope owns it: nothing to end gracefully (end() would wait its full timeout).
      Effect.onError(() =>
        Effect.suspend(() => {
          markDead(c)
          return close(c)
        })
      ),
      Effect.map((rows) => {
        c.pid = Number(rows[0]?.["pid"])
        installArrayParsers(sql, rows[0]?.["array_types"])
        return { conn: c, standby: rows[0]?.["standby"] === true }
      })
    )
  })

/**
 * Tries the hosts in order for one whose role fits; every connection not kept
 * is closed, also when the search fails or is interrupted.
 */
const chooseHost = (
  options: ConnectOptions,
  hosts: ReadonlyArray<string>,
  role: Server.Role,
  openHost: (url: string) => Effect.Effect<Opened, DbError.DbError>
): Effect.Effect<Conn, DbError.DbError> => {
  /** A primary kept while looking on for a standby (prefer-standby takes a primary when no standby answers). */
  let fallback: Conn | undefined
  const search = Effect.gen(function*() {
    let last: DbError.DbError = new DbError.ConnectFailed({ message: `cannot connect to ${options.server}: no host to try`, server: options.server })
    for (const host of hosts) {
      const opened = yield* Effect.result(openHost(host))
      if (opened._tag === "Failure") {
        last = opened.failure
        continue
      }
      const { conn, standby } = opened.success
      if (role === "any" || (role === "primary" ? !standby : standby)) return conn
      if (role === "prefer-standby" && fallback === undefined) {
        fallback = conn
        continue
      }
      yield* close(conn)
      last = new DbError.ConnectFailed({
        message: `cannot connect to ${options.server}: no host is a ${role === "primary" ? "primary" : "standby"} ` +
          `(the last to answer is ${standby ? "in recovery" : "not in recovery"})`,
        server: options.server
      })
    }
    if (fallback !== undefined) {
      const kept = fallback
      fallback = undefined
      return kept
    }
    return yield* Effect.fail(last)
  })
  return search.pipe(
    Effect.onExit((exit) => {
      // Not kept: a standby was found after it, or the search failed or was interrupted.
      const spare = fallback
      fallback = undefined
      return spare === undefined || (exit._tag === "Success" && exit.value === spare) ? Effect.void : close(spare)
    })
  )
}

/**
 * Opens a connection and learns its backend pid; the scope closes it.
 * Interruptible while connecting: an interrupted attempt destroys what it started.
 *
 * A URL naming several hosts, or asking for a role (`target_session_attrs`),
 * is served here rather than by the driver: the hosts are tried in order and
 * the first whose `pg_is_in_recovery()` fits the role is kept (see
 * Server.wantedRole for why the driver's own check will not do).
 */
export const open = (options: ConnectOptions): Effect.Effect<Conn, DbError.DbError, Scope.Scope> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      // Up to 10% less than the max lifetime, so that connections opened together do not all retire together.
      const expiresAt = now + options.maxLifetimeMillis * (1 - Math.random() * 0.1)
      const password = options.password === undefined ? undefined : yield* restore(Effect.mapError(
        options.password,
        // The failure itself may carry a secret: say only that the password could not be had.
        () => new DbError.ConnectFailed({ message: `cannot connect to ${options.server}: the password effect failed`, server: options.server })
      ))
      const url = Redacted.value(options.url)
      const hosts = Server.hostUrls(url)
      const role = Server.wantedRole(url)
      const conn = hosts.length === 1 && hosts[0] === url
        ? (yield* openOne(options, url, password, expiresAt, restore)).conn
        : yield* chooseHost(options, hosts, role, (host) => openOne(options, host, password, expiresAt, restore))
      yield* Effect.addFinalizer(() => close(conn))
      return conn
    })
  )

/**
 * Ends the driver instance; a connection that will not end gracefully within a second is destroyed. A statement
 * still running gets a cancel request first: the server does not notice a closed socket while a statement runs, and
 * would run it (holding its locks) to the end. The connection is marked dead before, so that its caller gets
 * `ConnectionLost` (the pool closed it), not the cancel's error.
 */
export const close = (conn: Conn): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (conn.wire !== "dead") {
      const running = [...conn.inflight].filter((query) => query.state !== undefined && query.state !== null)
      if (running.length > 0) {
        markDead(conn)
        // postgres.js sends it on a connection of its own, while this one is still open (after, it would not).
        for (const query of running) cancel(query)
      }
    }
    return Effect.promise(() => conn.sql.end({ timeout: conn.wire === "ready" ? 1 : 0 }).catch(() => undefined)).pipe(
      Effect.timeout(3000),
      Effect.ignore
    )
  })

// ---------------------------------------------------------------------------
// parameters: checked and converted before a connection is acquired
// ---------------------------------------------------------------------------

/**
 * Parameter objects (`json`, `typed`) are plain values that any postgres.js
 * instance serialises; this one never connects, so parameters can be built
 * before a connection is acquired.
 */
const parameters = postgres({ max: 1, fetch_types: false })

const jsonNull = { toJSON: () => null }

/** A value the driver can send, or a reason why not. */
const toDriverValue = (value: unknown): unknown => {
  const refused = unsendable(value)
  if (refused !== undefined) return refused
  if (value === undefined) return null
  // Json holds any JSON-encodable value; a JSON null must not become SQL NULL, so it is sent as an object serialising to null.
  if (value instanceof Json) return parameters.json((value.value === null ? jsonNull : value.value) as postgres.JSONValue)
  // Arrays are sent as array literals, typed like the dry run types them (the driver would name the element type).
  if (Array.isArray(value)) return parameters.typed(arrayText(value), arrayTypeOid(value))
  if (isJsonObject(value)) return parameters.json(value as postgres.JSONValue) // a plain object is JSON by definition of isJsonObject
  return value
}

/** Driver parameters, converted once. */
export type DriverParams = Array<postgres.ParameterOrJSON<never>>

/** Converts a statement's parameters, or explains which one cannot be sent. */
export const toDriverParams = (params: ReadonlyArray<Value>): DriverParams | DbError.InvalidInput => {
  const out: Array<unknown> = new Array(params.length)
  for (let i = 0; i < params.length; i++) {
    let v: unknown
    try {
      v = toDriverValue(params[i])
    } catch (e) {
      // arrayText throws on an array element it cannot render.
      v = e instanceof Error ? e : new TypeError(String(e))
    }
    if (v instanceof Error) return new DbError.InvalidInput({ message: v.message })
    out[i] = v
  }
  // postgres.js's parameter type is narrower than what it accepts at run time (Date, Uint8Array, bigint, arrays).
  return out as DriverParams
}

const transactionControlRefused = new DbError.InvalidInput({
  message:
    "transaction control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …) are issued by the library: use transaction(...) or a partial transaction"
})

/** A user statement checked before it needs a connection: refused, or ready to send. */
export interface Prepared {
  readonly text: string
  readonly params: DriverParams
  /** It changes session state (`SET`, `CREATE TEMP …`): it runs alone and the session is reset at check-in. */
  readonly changesSession: boolean
}

/** Why {@link prepare} refused a statement. */
export type Refused = DbError.InvalidInput | DbError.ReadOnlyTransaction

/** Did {@link prepare} refuse the statement? */
export const isRefused = (prepared: Prepared | Refused): prepared is Refused => "_tag" in prepared

const stayReadOnly = (text: string) =>
  new DbError.ReadOnlyTransaction({
    message: "the read pool keeps its connections read-only: a statement that would let it write " +
      "(SET … READ WRITE, [default_]transaction_read_only, set_config of it, ALTER SYSTEM) is refused; writes go through the WritePool",
    sqlState: "25006",
    sqlStateClass: sqlStateClass("25006"),
    statement: text
  })

/**
 * Checks a user statement without a connection: transaction control, unsendable values and, on a read pool's
 * connection (`readOnly`), statements that would make it writable are refused here.
 */
export const prepare = (statement: Statement, readOnly: boolean): Prepared | Refused => {
  // One lookup of the text's description serves both checks.
  const described = describe(statement.text)
  const kind = described.kind
  if (kind === "transaction control") return transactionControlRefused
  if (readOnly && unlocksWrites(described, statement.params)) return stayReadOnly(statement.text)
  const params = toDriverParams(statement.params)
  if (params instanceof DbError.InvalidInput) return params
  return { text: statement.text, params, changesSession: kind === "session change" }
}

// ---------------------------------------------------------------------------
// statements
// ---------------------------------------------------------------------------

/** How long an interrupted statement may take to settle after its cancel request before the connection is destroyed. */
const cancelGraceMillis = 5000

type Outcome = { readonly ok: true; readonly rows: postgres.RowList<Array<postgres.Row>> } | {
  readonly ok: false
  readonly error: unknown
}

/** Only a 57014 caused by a cancel request proves that ours landed: a statement timeout's 57014 says nothing of it. */
const cancelledByRequest = (error: unknown): boolean => {
  if (typeof error !== "object" || error === null) return false
  const e = error as { readonly code?: unknown; readonly message?: unknown } // a driver error: code and message
  return e.code === "57014" && typeof e.message === "string" && e.message.includes("user request")
}

/**
 * Cancels an interrupted statement and waits (boundedly) for it to end, so
 * that the connection is never handed back while it may still run or while a
 * cancel request may still land on the next holder's statement.
 */
const cancelAndSettle = (conn: Conn, query: DriverQuery, outcome: Promise<Outcome>) =>
  Effect.gen(function*() {
    // Only a `ready` wire moves to `cancelling`: an earlier cancel that may still land (`doubtful`), or another under
    // way, keeps the connection in doubt whatever this one proves.
    const wasReady = conn.wire === "ready"
    if (wasReady) conn.wire = "cancelling"
    // postgres.js hands a query to its connection one microtask after it is created; cancelled before that, the
    // query is dropped locally but the connection parks in the driver's `full` queue for good. Let it be handed over.
    yield* Effect.promise(() => Promise.resolve().then(() => undefined).then(() => undefined))
    const sent = query.state !== undefined && query.state !== null
    cancel(query)
    const settled = yield* Effect.timeoutOption(Effect.promise(() => outcome), cancelGraceMillis)
    if (Option.isNone(settled)) {
      markDead(conn)
      yield* Effect.promise(() => conn.sql.end({ timeout: 0 }).catch(() => undefined))
      return
    }
    if (conn.wire === "dead") return // died meanwhile
    // Not sent: dropped from the driver's queue, nothing went out. Sent: only "cancelled by request" proves ours landed.
    const landed = !sent || (!settled.value.ok && cancelledByRequest(settled.value.error))
    conn.wire = wasReady && conn.wire === "cancelling" && landed ? "ready" : "doubtful"
  })

const noteFailure = (conn: Conn, error: unknown): void => {
  if (isConnectionFailure(error)) markDead(conn)
  else if (conn.txDepth > 0) conn.failed = true
}

/**
 * Why a statement cannot be sent on this connection now, if it cannot: the
 * connection is dead, or its transaction's BEGIN was refused (see sendBegin).
 */
const unusable = (conn: Conn, text: string): DbError.DbError | undefined =>
  conn.wire === "dead" ? lost(conn, text) : conn.beginError

/**
 * Hands a statement to the driver, tracked in `inflight` until the caller's
 * reaction to its outcome deletes it.
 */
const toDriver = (conn: Conn, text: string, params: DriverParams) => {
  // simple: false keeps the extended protocol even without parameters, so text holds one statement only
  // (a smuggled "; BEGIN" is a syntax error); the option exists at run time but not in the driver's typings.
  const query = conn.sql.unsafe(text, params, { prepare: true, simple: false } as postgres.UnsafeQueryOptions)
  const tracked: DriverQuery = query as DriverQuery // the driver's query carries `state` and `canceller` at run time, untyped
  conn.inflight.add(tracked)
  return { query, tracked }
}

/** Notes a statement's failure on the connection, and says what the caller gets. */
const failed = (conn: Conn, error: unknown, text: string): DbError.DbError => {
  // Dropped because the socket closed (see socketClosed): the connection was lost, whatever the driver says.
  const dropped = conn.wire === "dead" && !isConnectionFailure(error)
  noteFailure(conn, error)
  return dropped ? lost(conn, text) : fromDriver(error, text)
}

/**
 * Runs one statement. Interruption sends a cancel request and waits (boundedly)
 * for the statement to end on the server — unless `pipelined()` says other
 * statements share the connection, since a cancel request cancels whatever runs
 * when it lands: then the (autocommit) statement is left to finish.
 */
export const execute = (
  conn: Conn,
  text: string,
  params: DriverParams,
  pipelined?: () => boolean
): Effect.Effect<postgres.RowList<Array<postgres.Row>>, DbError.DbError> =>
  Effect.callback<postgres.RowList<Array<postgres.Row>>, DbError.DbError>((resume) =>
    send(conn, text, params, resume, identity, pipelined, undefined)
  )

const identity = <A>(a: A): A => a

/**
 * Runs one statement like {@link execute}, each row an array of its column
 * values in column order (a result with two columns of one name keeps both).
 * Used by the effect/sql bridge (`executeValues`).
 */
export const executeValues = (
  conn: Conn,
  text: string,
  params: DriverParams,
  pipelined?: () => boolean
): Effect.Effect<Array<ReadonlyArray<unknown>>, DbError.DbError> =>
  Effect.callback<Array<ReadonlyArray<unknown>>, DbError.DbError>((resume) =>
    send(conn, text, params, resume, valueRows, pipelined, undefined, true)
  )

/** After `query.values()` the driver builds every row as an array; its typings do not say so, the guard does. */
const valueRows = (result: ReadonlyArray<postgres.Row>): Array<ReadonlyArray<unknown>> =>
  plainRows(result).map((row): ReadonlyArray<unknown> => (Array.isArray(row) ? row : Object.values(row)))

/**
 * Sends one statement from inside an `Effect.callback` registration and
 * returns the registration's interruption handler. `release`, if given, is
 * called exactly once, before the caller is resumed: when the statement
 * settles (`completed`: true), or when it is given up (false: refused
 * unsent, or interrupted — released at once if it is left to finish
 * (pipelined), after the cancel has settled otherwise).
 */
export const send = <A>(
  conn: Conn,
  text: string,
  params: DriverParams,
  resume: (effect: Effect.Effect<A, DbError.DbError>) => void,
  onRows: (rows: postgres.RowList<Array<postgres.Row>>) => A,
  pipelined: (() => boolean) | undefined,
  release: ((completed: boolean) => void) | undefined,
  values?: boolean
): Effect.Effect<void> | undefined => {
  if (conn.opening !== undefined && conn.wire !== "dead") {
    return sendAfterBegin(conn.opening, () => send(conn, text, params, resume, onRows, pipelined, release, values), release, (defect) => {
      release?.(false)
      resume(Effect.die(defect))
    })
  }
  const refused = unusable(conn, text)
  if (refused !== undefined) {
    release?.(false)
    resume(Effect.fail(refused))
    return undefined
  }
  let released = release === undefined
  /** Interrupted and being cancelled: the release waits until the cancel has settled the wire. */
  let cancelling = false
  const releaseOnce = (completed: boolean) => {
    if (released) return
    released = true
    release!(completed)
  }
  const { query, tracked } = toDriver(conn, text, params)
  if (values === true) query.values() // rows as arrays (executeValues); it sets a mode on this query and returns it
  // One reaction: the outcome is both what the caller gets and what a cancel waits for.
  const outcome: Promise<Outcome> = query.then(
    (rows) => {
      conn.inflight.delete(tracked)
      if (!cancelling) releaseOnce(true)
      resume(Effect.succeed(onRows(rows)))
      return { ok: true, rows }
    },
    (error: unknown) => {
      conn.inflight.delete(tracked)
      const failure = failed(conn, error, text)
      if (!cancelling) releaseOnce(true)
      resume(Effect.fail(failure))
      return { ok: false, error }
    }
  )
  return Effect.suspend(() => {
    // Given up, not completed: a placement decision must not take it for the connection completing statements.
    if (pipelined !== undefined && pipelined()) {
      releaseOnce(false)
      return Effect.void
    }
    cancelling = true
    return Effect.ensuring(cancelAndSettle(conn, tracked, outcome), Effect.sync(() => releaseOnce(false)))
  })
}

/**
 * Sends a statement once the transaction's BEGIN has been answered: a promise
 * reaction, not a fiber suspension. Interrupted before that, it is never sent.
 */
const sendAfterBegin = (
  opening: Promise<void>,
  sendNow: () => Effect.Effect<void> | undefined,
  release: ((completed: boolean) => void) | undefined,
  died: (defect: unknown) => void
): Effect.Effect<void> => {
  let state: "waiting" | "sent" | "interrupted" = "waiting"
  let onInterrupt: Effect.Effect<void> | undefined
  opening.then(() => {
    if (state !== "waiting") return
    state = "sent"
    try {
      onInterrupt = sendNow()
    } catch (defect) {
      // Not an unhandled rejection and a caller waiting for ever: the caller gets the defect.
      died(defect)
    }
  })
  return Effect.suspend(() => {
    if (state === "sent") return onInterrupt ?? Effect.void
    state = "interrupted"
    release?.(false)
    return Effect.void
  })
}

/** Why a cursor was closed early: ours, not the server's, so it says nothing about the connection. */
const cursorClosed = new Error("effect-dbpool: cursor closed by its consumer")

/**
 * Reads a checked statement's rows through a cursor, `batchSize` at a time,
 * on a connection the caller holds for the stream's life. The driver fetches
 * the next batch only when the consumer asks for it, so one batch is in memory
 * at a time. Closing the stream early (it ended, failed or was
 * interrupted) closes the cursor: a suspended one is abandoned with a Sync,
 * which leaves the connection ready; one still running on the server is
 * cancelled as `execute` cancels, and the connection is retired when in doubt.
 */
export const stream = <E = never>(
  conn: Conn,
  prepared: Prepared,
  batchSize: number,
  decode: ((rows: ReadonlyArray<Row>) => Effect.Effect<ReadonlyArray<unknown>, E, unknown>) | undefined
): Stream.Stream<unknown, DbError.DbError | E, unknown> =>
  Stream.unwrap(Effect.gen(function*() {
    if (prepared.changesSession) conn.sessionChanged = true
    /** Batches delivered by the driver and not yet pulled (at most one, and the last). */
    const batches: Array<ReadonlyArray<Row>> = []
    /** The driver waits on this to fetch the next batch. */
    let suspended: { readonly resume: () => void; readonly abandon: () => void } | undefined
    let settled: Outcome | undefined
    let outcome: Promise<Outcome> | undefined
    let tracked: DriverQuery | undefined
    let closing = false
    /** A pull waiting for the driver. */
    let waiting: (() => void) | undefined
    const wake = () => {
      const w = waiting
      waiting = undefined
      w?.()
    }

    const start = () => {
      const issued = toDriver(conn, prepared.text, prepared.params)
      const query = issued.query
      tracked = issued.tracked
      const cursor = query.cursor(Math.max(1, Math.floor(batchSize)), (rows: ReadonlyArray<Row>) => {
        if (closing) return Promise.reject(cursorClosed)
        // Suspended before the consumer is woken: waking may run it (and its finalizer) to the end inside this call.
        const wait = new Promise<void>((resolve, reject) => {
          suspended = { resume: resolve, abandon: () => reject(cursorClosed) }
        })
        // The driver does not await the last batch's promise (it comes with the end of the result): abandoning
        // that one must not be an unhandled rejection.
        wait.catch(() => {})
        if (rows.length > 0) batches.push(plainRows(rows))
        wake()
        return wait
      })
      // `cursor(n, fn)` returns the query itself: a promise of the end of the result.
      outcome = Promise.resolve(cursor as unknown as PromiseLike<unknown>).then(
        (): Outcome => {
          conn.inflight.delete(tracked!)
          settled = { ok: true, rows: [] as unknown as postgres.RowList<Array<postgres.Row>> } // no rows: they went by batch
          wake()
          return settled
        },
        (error: unknown): Outcome => {
          conn.inflight.delete(tracked!)
          // Abandoned by us: the server only saw a Sync; the connection and its transaction are fine.
          if (error !== cursorClosed) noteFailure(conn, error)
          settled = { ok: false, error }
          wake()
          return settled
        }
      )
    }

    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        if (outcome === undefined || settled !== undefined) return Effect.void
        closing = true
        const s = suspended
        suspended = undefined
        if (s !== undefined) {
          // Suspended between batches: nothing runs on the server; the driver sends a Sync, which ends the portal,
          // and queues whatever comes next behind it.
          s.abandon()
          return Effect.flatMap(Effect.timeoutOption(Effect.promise(() => outcome!), cancelGraceMillis), (settled) =>
            Option.isNone(settled) ? Effect.sync(() => markDead(conn)) : Effect.void)
        }
        return cancelAndSettle(conn, tracked!, outcome)
      })
    )

    const next: Effect.Effect<ReadonlyArray<Row>, DbError.DbError | Cause.Done> = Effect.callback((resume) => {
      const deliver = () => {
        const batch = batches.shift()
        if (batch !== undefined) return resume(Effect.succeed(batch))
        if (settled !== undefined) {
          if (settled.ok) return resume(Cause.done())
          const error = settled.error
          return resume(Effect.fail(conn.wire === "dead" && !isConnectionFailure(error) ? lost(conn, prepared.text) : fromDriver(error, prepared.text)))
        }
        waiting = deliver
      }
      /** Sends the cursor's statement, or fails the pull if the connection or the transaction's BEGIN cannot take it. */
      const first = (): undefined => {
        const refused = unusable(conn, prepared.text)
        if (refused !== undefined) {
          resume(Effect.fail(refused))
          return undefined
        }
        start()
        deliver()
        return undefined
      }
      const stopWaiting = Effect.sync(() => {
        waiting = undefined
      })
      if (outcome === undefined) {
        // The first statement of a transaction goes only after BEGIN's answer (see sendBegin).
        if (conn.opening !== undefined && conn.wire !== "dead") {
          const interrupted = sendAfterBegin(conn.opening, first, undefined, (defect) => resume(Effect.die(defect)))
          return Effect.andThen(stopWaiting, interrupted)
        }
        first()
        return stopWaiting
      } else if (batches.length === 0 && suspended !== undefined) {
        // Asked for more: only now does the driver fetch the next batch, so a consumer that stops leaves the
        // cursor suspended (closed with a Sync, the connection ready) rather than running.
        const s = suspended
        suspended = undefined
        s.resume()
      }
      deliver()
      return stopWaiting
    })

    const pull = decode === undefined ? next : Effect.flatMap(next, decode)
    const nonEmpty = Effect.flatMap(pull, function loop(batch): Effect.Effect<Arr.NonEmptyReadonlyArray<unknown>, DbError.DbError | E | Cause.Done, unknown> {
      return Arr.isReadonlyArrayNonEmpty(batch) ? Effect.succeed(batch) : Effect.flatMap(pull, loop)
    })
    return Stream.fromPull(Effect.succeed(nonEmpty))
  }))

/**
 * Plain arrays of plain objects: the driver's RowList carries extra fields
 * users should not depend on. Holes are skipped: postgres.js 3.4.9 does not
 * reset its row index when a statement fails after sending rows (a cancel, a
 * statement timeout, a division by zero in row 3), so the next result on that
 * connection starts at the stale index, with empty slots before its rows.
 */
export const plainRows = (result: ReadonlyArray<postgres.Row>): Array<postgres.Row> => {
  const rows: Array<postgres.Row> = []
  for (let i = 0; i < result.length; i++) {
    if (i in result) rows.push(result[i]!)
  }
  return rows
}

const decodeRows = <S extends Schema.Top>(schema: S, statement: string) => {
  const decode = Schema.decodeUnknownEffect(Schema.Array(schema))
  return (rows: ReadonlyArray<Row>) =>
    Effect.mapError(decode(rows), (cause) =>
      new DbError.RowDecodeError({ message: `rows of "${statement.slice(0, 200)}" do not match the schema: ${cause.message}`, statement, cause }))
}

/** Runs a checked statement, optionally decoding its rows. */
export const runPrepared = (
  conn: Conn,
  prepared: Prepared,
  schema?: Schema.Top,
  pipelined?: () => boolean
): Effect.Effect<ReadonlyArray<unknown>, DbError.DbError | DbError.RowDecodeError, unknown> => {
  if (prepared.changesSession) conn.sessionChanged = true
  // The rows are made plain in the driver's callback: one step fewer than mapping the result.
  const rows = Effect.callback<Array<postgres.Row>, DbError.DbError>((resume) =>
    send(conn, prepared.text, prepared.params, resume, plainRows, pipelined, undefined)
  )
  return schema === undefined ? rows : Effect.flatMap(rows, decodeRows(schema, prepared.text))
}

/** Notes what a checked statement does to the session, for a caller that sends it itself (the effect/sql bridge). */
export const noteSessionChange = (conn: Conn, prepared: Prepared): void => {
  if (prepared.changesSession) conn.sessionChanged = true
}

/** A user statement's rows as a stream on a held connection (`schemaOrOptions`: the overloads of `StreamRows`). */
export const streamStatement = (
  conn: Conn,
  statement: Statement,
  schemaOrOptions?: Schema.Top | StreamOptions,
  options?: StreamOptions
): Stream.Stream<unknown, DbError.DbError | DbError.RowDecodeError, unknown> => {
  const prepared = prepare(statement, conn.readOnly)
  if (isRefused(prepared)) return Stream.fail(prepared)
  const schema = Schema.isSchema(schemaOrOptions) ? schemaOrOptions : undefined
  const batchSize = (schema === undefined ? (schemaOrOptions as StreamOptions | undefined) : options)?.batchSize ?? 1000 // not a schema: the options
  return stream(conn, prepared, batchSize, schema === undefined ? undefined : decodeRows(schema, prepared.text))
}

/** A statement's span: named by its operation, with its text (never its values). */
export const traced = <A, E, R>(target: Telemetry.Target, text: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => (Telemetry.tracing(fiber) ? tracedNow(target, text, effect) : effect))

/** {@link traced}, for a caller that has just seen that spans are exported. */
export const tracedNow = <A, E, R>(target: Telemetry.Target, text: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  const operation = operationOf(text)
  return Telemetry.span(target, operation, Telemetry.statementAttributes(text, operation), effect)
}

/** Runs a user statement on a held connection, optionally decoding its rows. */
export const run = (conn: Conn, statement: Statement, schema?: Schema.Top): Effect.Effect<ReadonlyArray<unknown>, DbError.DbError | DbError.RowDecodeError, unknown> => {
  const prepared = prepare(statement, conn.readOnly)
  return isRefused(prepared) ? Effect.fail(prepared) : runPrepared(conn, prepared, schema)
}

const noParams: DriverParams = []

const control = (conn: Conn, text: string) => execute(conn, text, noParams)

const beginText = (options: TransactionOptions | undefined): string => {
  let text = "BEGIN"
  if (options?.isolationLevel !== undefined) text += ` ISOLATION LEVEL ${options.isolationLevel.toUpperCase()}`
  if (options?.readOnly === true) text += " READ ONLY"
  if (options?.readOnly === false) text += " READ WRITE"
  if (options?.deferrable === true) text += " DEFERRABLE"
  return text
}

/** `SET LOCAL` statements for a transaction's own timeouts (whole milliseconds, which these settings take). */
const localSettings = (options: TransactionOptions | undefined): ReadonlyArray<string> => {
  if (options === undefined) return []
  const out: Array<string> = []
  const set = (name: string, value: Duration.Input | undefined) => {
    if (value !== undefined) out.push(`SET LOCAL ${name} = ${Math.max(0, Math.round(Duration.toMillis(Duration.fromInputUnsafe(value))))}`)
  }
  set("statement_timeout", options.statementTimeout)
  set("lock_timeout", options.lockTimeout)
  set("idle_in_transaction_session_timeout", options.idleInTransactionSessionTimeout)
  return out
}

/**
 * Opens the outermost transaction and waits for BEGIN's answer: for the
 * effect/sql bridge, whose SqlClient drives BEGIN itself and expects to hear
 * of a refusal there. Uninterruptible: its outcome is always known.
 */
export const begin = (conn: Conn, options?: TransactionOptions): Effect.Effect<void, DbError.DbError> =>
  Effect.uninterruptible(Effect.suspend(() => {
    sendBegin(conn, options)
    const opening = conn.opening
    const answered = Effect.suspend(() => {
      const refused = unusable(conn, "BEGIN")
      return refused === undefined ? Effect.void : Effect.fail(refused)
    })
    return opening === undefined ? answered : Effect.andThen(Effect.promise(() => opening), answered)
  }))

/**
 * Opens the outermost transaction without waiting for BEGIN's answer: the
 * first statement waits for it in `send` — a promise reaction rather than one
 * more suspension of the caller's fiber — and is sent only once BEGIN
 * succeeded. Never behind it on the wire: postgres.js ends every statement
 * with its own Sync, so after a failed BEGIN a statement already sent would
 * run, and commit, on its own. If BEGIN fails, every statement of the
 * transaction (COMMIT included) fails with its error, unsent, until rollback.
 */
export const sendBegin = (conn: Conn, options?: TransactionOptions): void => {
  conn.txDepth = 1
  conn.failed = false
  conn.beginError = undefined
  conn.opening = undefined
  if (conn.wire === "dead") return // its statements fail with ConnectionLost
  // SET LOCAL after a failed BEGIN is only a warning: they go out together.
  const texts = [beginText(options), ...localSettings(options)]
  let unanswered = texts.length
  let answeredAll: () => void = () => {}
  const opening = new Promise<void>((resolve) => {
    answeredAll = resolve
  })
  conn.opening = opening
  const answered = (tracked: DriverQuery, text: string, error?: unknown) => {
    conn.inflight.delete(tracked)
    // An answer that comes after rollback gave up waiting for it (the connection is dead by then) is not this
    // transaction's news any more.
    const current = conn.opening === opening
    if (error !== undefined) {
      if (current && conn.beginError === undefined) conn.beginError = failed(conn, error, text)
      else noteFailure(conn, error)
    }
    if (--unanswered > 0) return
    if (current) conn.opening = undefined // before the waiting statements run: they are sent now
    answeredAll()
  }
  for (const text of texts) {
    const { query, tracked } = toDriver(conn, text, noParams)
    query.then(() => answered(tracked, text), (error: unknown) => answered(tracked, text, error))
  }
}

const aborted = (what: string) =>
  new DbError.TransactionAborted({
    message: `the ${what} was rolled back instead of ${what === "savepoint" ? "released" : "committed"}: one of its statements had failed`,
    sqlState: "25P02",
    sqlStateClass: sqlStateClass("25P02")
  })

/**
 * Commits; a COMMIT the server turned into ROLLBACK (a statement had failed)
 * is an error. Uninterruptible: a COMMIT that was sent is awaited, so the
 * connection's state is known when it returns. After a lost connection the
 * outcome is unknown (`ConnectionLost`), and the connection is dead.
 */
export const commit = (conn: Conn): Effect.Effect<void, DbError.DbError> =>
  Effect.uninterruptible(Effect.suspend(() => {
    const failedBefore = conn.failed
    // Answered, the transaction is over (committed, or rolled back by the server). A COMMIT that failed (a
    // deferred constraint, a stray cancel) may leave it open and aborted: the depth stays, so check-in rolls back.
    return Effect.flatMap(control(conn, "COMMIT"), (result) => {
      conn.txDepth = 0
      conn.failed = false
      return result.command === "ROLLBACK" || failedBefore ? Effect.fail(aborted("transaction")) : Effect.void
    })
  }))

/** Undoes session settings (back to the connection's startup values); a connection that cannot is marked dead. */
export const resetSession = (conn: Conn): Effect.Effect<void> =>
  // RESET ALL leaves role and session authorization alone (they are not reset by it), and temp tables are not settings.
  Effect.forEach(["SET SESSION AUTHORIZATION DEFAULT", "RESET ALL", "DISCARD TEMP"], (text) => control(conn, text), {
    discard: true
  }).pipe(
    Effect.timeout(cancelGraceMillis),
    Effect.matchCause({
      onFailure: () => markDead(conn),
      onSuccess: () => {
        conn.sessionChanged = false
      }
    }),
    Effect.uninterruptible
  )

/** Rolls back; a connection that cannot roll back is marked dead so the pool discards it. Uninterruptible. */
export const rollback = (conn: Conn): Effect.Effect<void> =>
  Effect.suspend(() => {
    // ROLLBACK goes after BEGIN's answer, and also after a failed BEGIN: the server may have opened the transaction
    // before refusing the rest (an isolation level it cannot give, a SET LOCAL out of range), leaving it aborted.
    const opening = conn.opening
    const now = Effect.suspend(() => {
      conn.beginError = undefined
      return conn.wire === "dead" ? Effect.void : Effect.asVoid(control(conn, "ROLLBACK"))
    }).pipe(Effect.timeout(cancelGraceMillis))
    const gaveUp = Effect.sync(() => {
      markDead(conn)
      conn.opening = undefined
    })
    return (opening === undefined ? now : Effect.andThen(Effect.timeout(Effect.promise(() => opening), cancelGraceMillis), now)).pipe(
      Effect.catchCause(() => gaveUp)
    )
  }).pipe(
    Effect.ensuring(Effect.sync(() => {
      conn.txDepth = 0
      conn.failed = false
      conn.beginError = undefined
    })),
    Effect.uninterruptible
  )

/**
 * Rolls back and resets whatever a holder left, before the connection goes
 * back to the pool. Nothing to do (the common case) costs nothing.
 */
export const cleanUp = (conn: Conn): Effect.Effect<void> =>
  Effect.andThen(
    conn.txDepth > 0 ? rollback(conn) : Effect.void,
    Effect.suspend(() => (conn.sessionChanged && conn.wire !== "dead" ? resetSession(conn) : Effect.void))
  )

/**
 * Runs `f` in a transaction: BEGIN … COMMIT on a connection outside one, a
 * SAVEPOINT inside one. Failure and interruption roll back. `handleFor` makes
 * the handle `f` receives.
 */
export const transaction = <A, E, R>(
  conn: Conn,
  f: (connection: Connection) => Effect.Effect<A, E, R>,
  options: TransactionOptions | undefined,
  connection: Connection
): Effect.Effect<A, E | DbError.DbError, R> =>
  Effect.uninterruptibleMask((restore) => {
    if (conn.txDepth === 0) {
      // The hot path of every transaction: combinators, not a generator (whose stepping costs more per statement).
      sendBegin(conn, options)
      return Effect.flatMap(Effect.exit(restore(f(connection))), (exit): Effect.Effect<A, E | DbError.DbError, R> =>
        exit._tag === "Failure"
          ? Effect.andThen(rollback(conn), exit)
          // A COMMIT that failed (BEGIN was refused, a deferred constraint) is rolled back now, not at check-in:
          // inside an interaction the connection is used on, outside any transaction.
          : Effect.as(Effect.onError(commit(conn), () => rollback(conn)), exit.value))
    }
    return Effect.gen(function*() {
      if (options !== undefined) {
        return yield* new DbError.InvalidInput({
          message: "a nested transaction is a savepoint: isolation level and access mode belong to the outermost transaction"
        })
      }
      const name = `effect_dbpool_sp_${++conn.savepoints}`
      yield* control(conn, `SAVEPOINT ${name}`)
      conn.txDepth++
      const exit = yield* Effect.exit(restore(f(connection)))
      conn.txDepth--
      const undo = control(conn, `ROLLBACK TO SAVEPOINT ${name}`).pipe(
        Effect.tap(() => Effect.sync(() => { conn.failed = false })),
        Effect.ignore
      )
      if (exit._tag === "Failure") {
        yield* undo
        return yield* exit
      }
      if (conn.failed) {
        // A statement of f failed and f caught it (SAVEPOINT succeeded, so the failure is f's): RELEASE would
        // fail and leave the outer transaction aborted. Roll the savepoint back and say so, as commit does.
        yield* undo
        return yield* aborted("savepoint")
      }
      yield* Effect.onError(control(conn, `RELEASE SAVEPOINT ${name}`), () => undo)
      return exit.value
    })
  })

// ---------------------------------------------------------------------------
// transaction steps one at a time, for the effect/sql bridge (effectSql.ts), whose
// SqlClient drives BEGIN, savepoints, COMMIT and ROLLBACK itself
// ---------------------------------------------------------------------------

/**
 * Opens the outermost transaction with a statement of the caller's (`BEGIN
 * ISOLATION LEVEL …`, `START TRANSACTION …`), counted as `begin` counts it.
 * Uninterruptible: its outcome is always known.
 */
export const beginWith = (conn: Conn, text: string): Effect.Effect<void, DbError.DbError> =>
  Effect.uninterruptible(Effect.suspend(() => {
    conn.txDepth = 1
    conn.failed = false
    return Effect.asVoid(control(conn, text))
  }))

/** Opens a savepoint of the caller's name (an SQL identifier it made) one level deeper. Uninterruptible. */
export const savepoint = (conn: Conn, name: string): Effect.Effect<void, DbError.DbError> =>
  Effect.uninterruptible(Effect.suspend(() =>
    Effect.map(control(conn, `SAVEPOINT ${name}`), () => {
      conn.txDepth++
    })
  ))

/** Rolls back to a savepoint, which stays open (release it after); the transaction is usable again. Uninterruptible. */
export const rollbackToSavepoint = (conn: Conn, name: string): Effect.Effect<void, DbError.DbError> =>
  Effect.uninterruptible(Effect.suspend(() =>
    Effect.map(control(conn, `ROLLBACK TO SAVEPOINT ${name}`), () => {
      conn.failed = false
    })
  ))

/**
 * Releases a savepoint, one level up. If a statement inside it had failed (and
 * was caught), RELEASE would fail and leave the transaction aborted: it is
 * rolled back to and released instead, and that is a `TransactionAborted`, as
 * `transaction` does. Uninterruptible.
 */
export const releaseSavepoint = (conn: Conn, name: string): Effect.Effect<void, DbError.DbError> =>
  Effect.uninterruptible(Effect.suspend(() => {
    const failedBefore = conn.failed
    const undo = failedBefore ? rollbackToSavepoint(conn, name) : Effect.void
    return Effect.andThen(
      undo,
      Effect.flatMap(control(conn, `RELEASE SAVEPOINT ${name}`), () => {
        conn.txDepth--
        return failedBefore ? Effect.fail(aborted("savepoint")) : Effect.void
      })
    )
  }))

/** Sends a notification on this connection (inside its transaction, if any). */
export const notify = (conn: Conn, channel: string, payload: unknown, schema?: Schema.Top) =>
  Effect.flatMap(Notify.prepare(channel, payload, schema), (statement) => Effect.asVoid(run(conn, statement)))

const returned = new DbError.InvalidInput({
  message: "this connection was already returned to the pool (or its step has ended): use it only inside its interaction"
})

/**
 * The user-facing view of a held connection, valid while `valid()` holds:
 * once its interaction (or partial-transaction step) ends, it refuses to run.
 * `transactionOptions` adjusts what nested transactions ask for (the read pool's are read-only).
 */
export const handle = (
  conn: Conn,
  valid: () => boolean,
  transactionOptions: (options: TransactionOptions | undefined) => TransactionOptions | undefined = (o) => o,
  target?: Telemetry.Target
): Connection => {
  const held = <A, E, R>(effect: () => Effect.Effect<A, E, R>): Effect.Effect<A, E | DbError.InvalidInput, R> =>
    Effect.suspend((): Effect.Effect<A, E | DbError.InvalidInput, R> => (valid() ? effect() : Effect.fail(returned)))
  const connection: Connection = {
    pid: conn.pid,
    // The overloads of Connection["run"] are implemented by this one signature.
    // One look at the fiber for both checks: this runs for every statement of every transaction.
    run: ((statement: Statement, schema?: Schema.Top) =>
      Effect.withFiber((fiber) => {
        if (!valid()) return Effect.fail(returned)
        const effect = run(conn, statement, schema)
        return target !== undefined && Telemetry.tracing(fiber) ? tracedNow(target, statement.text, effect) : effect
      })) as Connection["run"],
    // Likewise for Connection["notify"].
    notify: ((channel: string, payload: unknown, schema?: Schema.Top) =>
      held(() => notify(conn, channel, payload, schema))) as Connection["notify"],
    transaction: (f, options) => held(() => transaction(conn, f, transactionOptions(options), connection)),
    // Likewise for Connection["stream"].
    stream: ((statement: Statement, schemaOrOptions?: Schema.Top | StreamOptions, options?: StreamOptions) =>
      {
        const rows = Stream.unwrap(held(() => Effect.succeed(streamStatement(conn, statement, schemaOrOptions, options))))
        return target === undefined ? rows : Telemetry.streamSpan(target, statement.text, operationOf(statement.text), rows)
      }) as Connection["stream"]
  }
  return connection
}
