/**
 * One pooled connection: a postgres.js instance with `max: 1`, so that every
 * statement of an interaction lands on the same backend, and the library —
 * not the driver — decides when a connection is reused, rolled back or
 * thrown away. The driver's own pool, `begin` and `reserve` are never used:
 * they are where its failure modes live.
 */
import { Effect, Redacted, Schema, type Scope } from "effect"
import postgres from "postgres"
import type { Connection, Row, TransactionOptions } from "../Connection.ts"
import * as DbError from "../DbError.ts"
import type { Statement, Value } from "../Statement.ts"
import { fromDriver, isConnectionFailure, sqlStateClass } from "./errors.ts"
import { arrayText, arrayTypeOid, isJsonObject, Json } from "./literal.ts"
import { arrayTypesQuery, installArrayParsers } from "./arrays.ts"
import * as Notify from "./notify.ts"
import { changesSession, isTransactionControl } from "./sqlText.ts"

/** How to open connections; derived from the pool's config. */
export interface ConnectOptions {
  readonly url: Redacted.Redacted<string>
  /** `host:port/database`, for messages and logs. */
  readonly server: string
  readonly readOnly: boolean
  readonly connectTimeoutMillis: number
  readonly maxLifetimeMillis: number
  readonly applicationName: string
}

/** Mutable state of one connection, owned by whoever holds it from the pool. */
export class Conn {
  /** The socket closed or a statement failed with a connection error: never use again. */
  dead = false
  /** A cancel request may still be on its way to the server: retire rather than reuse. */
  doubtful = false
  /** 0 outside a transaction, 1 inside one, more inside savepoints. */
  txDepth = 0
  /** A statement failed inside the current transaction: the server ignores the rest until rollback. */
  failed = false
  /** A `SET` (without `LOCAL`) ran: settings are reset before the connection is reused. */
  sessionChanged = false
  /** Autocommit statements pipelined on this connection right now (0 when idle or held exclusively). */
  sharers = 0
  /** Held by one interaction, transaction or partial transaction. */
  exclusive = false
  /** A cancel request for a statement on it is in flight: no statement may join it meanwhile. */
  cancelling = false
  /** Bumped at every check-in: a handle from an earlier hand-out sees it changed and refuses to run. */
  lease = 0
  /** Makes savepoint names unique on this connection. */
  savepoints = 0
  /** When it last went idle (ms since epoch), for the idle timeout. */
  idleSince = Date.now()
  pid = 0
  readonly sql: postgres.Sql
  readonly server: string
  readonly expiresAt: number
  constructor(sql: postgres.Sql, server: string, expiresAt: number) {
    this.sql = sql
    this.server = server
    this.expiresAt = expiresAt
  }
}

const lost = (conn: Conn, statement: string | undefined) =>
  new DbError.ConnectionLost({ message: `connection to ${conn.server} was lost`, statement })

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
const driver = (options: ConnectOptions, onclose: () => void): postgres.Sql =>
  postgres(Redacted.value(options.url), {
    max: 1,
    idle_timeout: 0,
    max_lifetime: null,
    connect_timeout: Math.max(1, Math.ceil(options.connectTimeoutMillis / 1000)),
    prepare: true,
    fetch_types: false,
    onnotice: () => {},
    onclose,
    connection: {
      application_name: options.applicationName,
      ...(options.readOnly ? { default_transaction_read_only: true } : {})
    }
  })

/** Opens a connection and learns its backend pid; the scope closes it. */
export const open = (options: ConnectOptions): Effect.Effect<Conn, DbError.DbError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      // Up to 10% less than the max lifetime, so that connections opened together do not all retire together.
      const expiresAt = Date.now() + options.maxLifetimeMillis * (1 - Math.random() * 0.1)
      let conn: Conn | undefined
      let sql: postgres.Sql
      try {
        sql = driver(options, () => {
          if (conn !== undefined) conn.dead = true
        })
      } catch {
        // The driver throws on a URL it cannot parse, with the URL in the error: say so without repeating it.
        return Effect.fail(
          new DbError.ConnectFailed({ message: `cannot connect: the connection URL is not valid`, server: options.server })
        )
      }
      conn = new Conn(sql, options.server, expiresAt)
      const c = conn
      return Effect.tryPromise({
        try: () => sql.unsafe(`SELECT pg_backend_pid() AS pid, ${arrayTypesQuery} AS array_types`),
        catch: (cause) => connectFailed(options.server, cause)
      }).pipe(
        Effect.map((rows) => {
          c.pid = Number(rows[0]?.["pid"])
          installArrayParsers(sql, rows[0]?.["array_types"])
          return c
        }),
        Effect.onError(() =>
          Effect.suspend(() => {
            // Nothing to end gracefully: without this, end() would wait its full timeout for a connection that never was.
            c.dead = true
            return close(c)
          })
        )
      )
    }),
    close
  )

/** Ends the driver instance; a connection that will not end gracefully within a second is destroyed. */
export const close = (conn: Conn): Effect.Effect<void> =>
  Effect.promise(() => conn.sql.end({ timeout: conn.dead || conn.doubtful ? 0 : 1 }).catch(() => undefined)).pipe(
    Effect.timeout(3000),
    Effect.ignore
  )

const jsonNull = { toJSON: () => null }

const toDriverValue = (conn: Conn, value: unknown): unknown => {
  if (value === undefined) return null
  // Json holds any JSON-encodable value; a JSON null must not become SQL NULL, so it is sent as an object serialising to null.
  if (value instanceof Json) return conn.sql.json((value.value === null ? jsonNull : value.value) as postgres.JSONValue)
  if (value instanceof Date && Number.isNaN(value.getTime())) throw new RangeError("an invalid Date cannot be sent")
  // Arrays are sent as array literals, typed like the dry run types them (the driver would name the element type).
  if (Array.isArray(value)) return conn.sql.typed(arrayText(value), arrayTypeOid(value))
  if (isJsonObject(value)) return conn.sql.json(value as postgres.JSONValue) // a plain object is JSON by definition of isJsonObject
  const type = typeof value
  if (type === "function" || type === "symbol") throw new TypeError(`a ${type} cannot be sent as a parameter`)
  // Any other object (a Map, a class instance) would be sent as "[object …]": refuse it rather than store that.
  if (type === "object" && value !== null && !(value instanceof Date) && !(value instanceof Uint8Array)) {
    throw new TypeError(`a ${value.constructor?.name ?? "object"} cannot be sent as a parameter (use sql.json for JSON)`)
  }
  return value
}

const toDriverParams = (conn: Conn, params: ReadonlyArray<Value>): Effect.Effect<Array<postgres.ParameterOrJSON<never>>, DbError.InvalidInput> =>
  Effect.try({
    // postgres.js's parameter type is narrower than what it accepts at run time (Date, Uint8Array, bigint, arrays).
    try: () => params.map((p) => toDriverValue(conn, p)) as Array<postgres.ParameterOrJSON<never>>,
    catch: (e) => new DbError.InvalidInput({ message: e instanceof Error ? e.message : String(e) })
  })

/** How long an interrupted statement may take to settle after its cancel request before the connection is destroyed. */
const cancelGraceMillis = 5000

type Outcome = { readonly ok: true; readonly rows: postgres.RowList<Array<postgres.Row>> } | {
  readonly ok: false
  readonly error: unknown
}

/**
 * Sends a cancel request and waits (boundedly) for the statement to end, so
 * that the connection is never handed back while it may still run. A
 * statement that ended otherwise than cancelled leaves the request possibly
 * in flight: the connection is retired. One that does not end is destroyed.
 */
const cancelAndSettle = (conn: Conn, query: { readonly cancel: () => unknown }, outcome: Promise<Outcome>) =>
  Effect.promise(async () => {
    conn.cancelling = true
    try {
      const cancelled = query.cancel()
      if (cancelled !== undefined) await Promise.resolve(cancelled).catch(() => undefined)
      let timer: ReturnType<typeof setTimeout> | undefined
      const settled = await Promise.race([
        outcome,
        new Promise<undefined>((resolve) => {
          timer = setTimeout(() => resolve(undefined), cancelGraceMillis)
        })
      ])
      clearTimeout(timer)
      if (settled === undefined) {
        conn.dead = true
        await conn.sql.end({ timeout: 0 }).catch(() => undefined)
      } else if (settled.ok || (settled.error as { code?: unknown } | null)?.code !== "57014") {
        conn.doubtful = true
      }
    } finally {
      conn.cancelling = false
    }
  })

const noteFailure = (conn: Conn, error: unknown): void => {
  if (isConnectionFailure(error)) conn.dead = true
  else if (conn.txDepth > 0) conn.failed = true
}

/**
 * Runs one statement. Interruption sends a cancel request and waits (boundedly)
 * for the statement to end on the server, so that a connection is never
 * handed back while its last statement may still be running.
 */
export const execute = (
  conn: Conn,
  text: string,
  params: ReadonlyArray<Value>
): Effect.Effect<postgres.RowList<Array<postgres.Row>>, DbError.DbError> =>
  Effect.suspend(() => {
    if (conn.dead) return Effect.fail(lost(conn, text))
    return Effect.flatMap(toDriverParams(conn, params), (driverParams) =>
      Effect.callback<postgres.RowList<Array<postgres.Row>>, DbError.DbError>((resume) => {
        // simple: false keeps the extended protocol even without parameters, so text holds one statement only
        // (a smuggled "; BEGIN" is a syntax error); the option exists at run time but not in the driver's typings.
        const query = conn.sql.unsafe(text, driverParams, { prepare: true, simple: false } as postgres.UnsafeQueryOptions)
        const outcome: Promise<Outcome> = query.then(
          (rows) => ({ ok: true, rows }),
          (error: unknown) => {
            noteFailure(conn, error)
            return { ok: false, error }
          }
        )
        outcome.then((o) => resume(o.ok ? Effect.succeed(o.rows) : Effect.fail(fromDriver(o.error, text))))
        // A cancel request cancels whatever runs on the backend when it lands: with other statements pipelined on
        // this connection it could hit one of theirs. So a shared statement is left to finish (it is autocommit).
        return Effect.suspend(() => (conn.sharers > 1 ? Effect.void : cancelAndSettle(conn, query, outcome)))
      }))
  })

const transactionControlRefused = new DbError.InvalidInput({
  message:
    "transaction control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …) are issued by the library: use transaction(...) or a partial transaction"
})

const decodeRows = <S extends Schema.Top>(schema: S, statement: string) => {
  const decode = Schema.decodeUnknownEffect(Schema.Array(schema))
  return (rows: ReadonlyArray<Row>) =>
    Effect.mapError(decode(rows), (cause) =>
      new DbError.RowDecodeError({ message: `rows of "${statement.slice(0, 200)}" do not match the schema: ${cause.message}`, statement, cause }))
}

/** Runs a user statement, optionally decoding its rows. */
export const run = (conn: Conn, statement: Statement, schema?: Schema.Top): Effect.Effect<ReadonlyArray<unknown>, DbError.DbError | DbError.RowDecodeError, unknown> => {
  if (isTransactionControl(statement.text)) return Effect.fail(transactionControlRefused)
  if (changesSession(statement.text)) conn.sessionChanged = true
  // Plain arrays of plain objects: the driver's RowList carries extra fields users should not depend on.
  const rows = Effect.map(execute(conn, statement.text, statement.params), (result) => Array.from(result))
  return schema === undefined ? rows : Effect.flatMap(rows, decodeRows(schema, statement.text))
}

const beginText = (options: TransactionOptions | undefined): string => {
  let text = "BEGIN"
  if (options?.isolationLevel !== undefined) text += ` ISOLATION LEVEL ${options.isolationLevel.toUpperCase()}`
  if (options?.readOnly === true) text += " READ ONLY"
  if (options?.readOnly === false) text += " READ WRITE"
  if (options?.deferrable === true) text += " DEFERRABLE"
  return text
}

/** Opens the outermost transaction on a connection. */
export const begin = (conn: Conn, options?: TransactionOptions): Effect.Effect<void, DbError.DbError> =>
  Effect.suspend(() => {
    // Counted as open before BEGIN is sent: if its outcome is lost, check-in rolls back (harmless outside a transaction).
    conn.txDepth = 1
    conn.failed = false
    return Effect.asVoid(execute(conn, beginText(options), []))
  })

/** Commits; a COMMIT the server turned into ROLLBACK (a statement had failed) is an error. */
export const commit = (conn: Conn): Effect.Effect<void, DbError.DbError> =>
  Effect.suspend(() => {
    const failedBefore = conn.failed
    return execute(conn, "COMMIT", []).pipe(
      Effect.ensuring(Effect.sync(() => {
        conn.txDepth = 0
        conn.failed = false
      })),
      Effect.flatMap((result) =>
        result.command === "ROLLBACK" || failedBefore
          ? Effect.fail(
            new DbError.TransactionAborted({
              message: "the transaction was rolled back instead of committed: one of its statements had failed",
              sqlState: "25P02",
              sqlStateClass: sqlStateClass("25P02")
            })
          )
          : Effect.void
      )
    )
  })

/** Undoes session settings (back to the connection's startup values); a connection that cannot is marked dead. */
export const resetSession = (conn: Conn): Effect.Effect<void> =>
  // RESET ALL leaves role and session authorization alone (they are not reset by it), and temp tables are not settings.
  Effect.forEach(["SET SESSION AUTHORIZATION DEFAULT", "RESET ALL", "DISCARD TEMP"], (text) => execute(conn, text, []), {
    discard: true
  }).pipe(
    Effect.timeout(cancelGraceMillis),
    Effect.matchCause({
      onFailure: () => {
        conn.dead = true
      },
      onSuccess: () => {
        conn.sessionChanged = false
      }
    })
  )

/** Rolls back; a connection that cannot roll back is marked dead so the pool discards it. */
export const rollback = (conn: Conn): Effect.Effect<void> =>
  Effect.suspend(() =>
    conn.dead
      ? Effect.void
      : execute(conn, "ROLLBACK", []).pipe(
        Effect.timeout(cancelGraceMillis),
        Effect.catchCause(() => Effect.sync(() => { conn.dead = true })),
        Effect.asVoid
      )
  ).pipe(Effect.ensuring(Effect.sync(() => {
    conn.txDepth = 0
    conn.failed = false
  })))

/**
 * Runs `f` in a transaction: BEGIN … COMMIT on a connection outside one, a
 * SAVEPOINT inside one. Failure and interruption roll back.
 */
export const transaction = <A, E, R>(
  conn: Conn,
  f: (connection: Connection) => Effect.Effect<A, E, R>,
  options?: TransactionOptions
): Effect.Effect<A, E | DbError.DbError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.gen(function*() {
      if (conn.txDepth === 0) {
        yield* Effect.onError(begin(conn, options), () => rollback(conn))
        const exit = yield* Effect.exit(restore(f(handle(conn))))
        if (exit._tag === "Failure") {
          yield* rollback(conn)
          return yield* exit
        }
        yield* commit(conn)
        return exit.value
      }
      if (options !== undefined) {
        return yield* new DbError.InvalidInput({
          message: "a nested transaction is a savepoint: isolation level and access mode belong to the outermost transaction"
        })
      }
      const name = `effect_dbpool_sp_${++conn.savepoints}`
      yield* execute(conn, `SAVEPOINT ${name}`, [])
      conn.txDepth++
      const exit = yield* Effect.exit(restore(f(handle(conn))))
      conn.txDepth--
      const undo = execute(conn, `ROLLBACK TO SAVEPOINT ${name}`, []).pipe(
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
        return yield* new DbError.TransactionAborted({
          message: "the savepoint was rolled back instead of released: one of its statements had failed",
          sqlState: "25P02",
          sqlStateClass: sqlStateClass("25P02")
        })
      }
      yield* Effect.onError(execute(conn, `RELEASE SAVEPOINT ${name}`, []), () => undo)
      return exit.value
    })
  )

/** Sends a notification on this connection (inside its transaction, if any). */
export const notify = (conn: Conn, channel: string, payload: unknown, schema?: Schema.Top) =>
  Effect.flatMap(Notify.prepare(channel, payload, schema), (statement) => Effect.asVoid(run(conn, statement)))

/** The user-facing view of a held connection. */
export const handle = (conn: Conn): Connection => {
  const lease = conn.lease
  const held = <A, E, R>(effect: () => Effect.Effect<A, E, R>): Effect.Effect<A, E | DbError.InvalidInput, R> =>
    Effect.suspend((): Effect.Effect<A, E | DbError.InvalidInput, R> =>
      conn.lease === lease
        ? effect()
        : Effect.fail(
          new DbError.InvalidInput({
            message: "this connection was already returned to the pool: use it only inside its interaction"
          })
        )
    )
  return {
    pid: conn.pid,
    // The overloads of Connection["run"] are implemented by this one signature.
    run: ((statement: Statement, schema?: Schema.Top) => held(() => run(conn, statement, schema))) as Connection["run"],
    // Likewise for Connection["notify"].
    notify: ((channel: string, payload: unknown, schema?: Schema.Top) =>
      held(() => notify(conn, channel, payload, schema))) as Connection["notify"],
    transaction: (f, options) => held(() => transaction(conn, f, options))
  }
}
