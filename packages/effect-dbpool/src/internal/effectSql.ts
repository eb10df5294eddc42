/**
 * The effect/sql bridge: a `SqlClient` whose statements run on an
 * effect-dbpool pool.
 *
 * - Single statements outside a transaction are *borrowed*: `execute` (and
 *   `unprepared`, `withoutTransform`) go through `pool.run`, the pool's fast
 *   path, pipelining included. `raw` and `values` need the driver's result, so
 *   they hold a connection of their own for the statement.
 * - `withTransaction`, `reserve` and `stream` hold one pooled connection
 *   exclusively (the pool's `lease`), checked in like any other when their
 *   scope closes: rolled back and reset first if anything was left open.
 * - SqlClient drives the transaction (BEGIN, savepoints, COMMIT, ROLLBACK) by
 *   sending statements through the held connection. Those statements carry a
 *   marker only this module knows, and are carried out by `connection.ts`'s
 *   transaction steps, which keep the connection's own transaction depth —
 *   the state `isTransaction` reads and check-in trusts. A user statement
 *   that opens or closes a transaction is refused, as the pool refuses it.
 */
import { randomUUID } from "node:crypto"
import { type Array as Arr, Context, Effect, Layer, type Scope, Stream } from "effect"
import { Reactivity } from "effect/reactivity"
import { SqlClient, type SqlConnection, SqlError, Statement as SqlStatement } from "effect/sql"
import type { Row } from "../Connection.ts"
import * as DbError from "../DbError.ts"
import type { InteractionPool } from "../InteractionPool.ts"
import { ReadPool } from "../ReadPool.ts"
import * as Statement from "../Statement.ts"
import { WritePool } from "../WritePool.ts"
import * as Conn from "./connection.ts"
import { Json } from "./literal.ts"
import * as Pool from "./pool.ts"
import { isTransactionControl } from "./sqlText.ts"

// ---------------------------------------------------------------------------
// errors
// ---------------------------------------------------------------------------

type ReasonProps = { readonly cause: DbError.DbError; readonly message: string; readonly operation: string }

const nonBlank = (constraint: string | undefined): string => {
  const trimmed = constraint?.trim() ?? ""
  return trimmed.length === 0 ? "unknown" : trimmed
}

const bySqlState = (sqlState: string, props: ReasonProps, constraint: string | undefined): SqlError.SqlErrorReason => {
  if (sqlState.startsWith("08")) return new SqlError.ConnectionError(props)
  if (sqlState.startsWith("28")) return new SqlError.AuthenticationError(props)
  if (sqlState === "42501" || sqlState === "25006") return new SqlError.AuthorizationError(props)
  if (sqlState.startsWith("42")) return new SqlError.SqlSyntaxError(props)
  if (sqlState === "23505") return new SqlError.UniqueViolation({ ...props, constraint: nonBlank(constraint) })
  if (sqlState.startsWith("23")) return new SqlError.ConstraintError(props)
  if (sqlState === "40P01") return new SqlError.DeadlockError(props)
  if (sqlState === "40001") return new SqlError.SerializationError(props)
  if (sqlState === "55P03") return new SqlError.LockTimeoutError(props)
  if (sqlState === "57014") return new SqlError.StatementTimeoutError(props)
  return new SqlError.UnknownError(props)
}

/** The `SqlError` reason of a `DbError` (see `EffectSql.toSqlError` for the table). */
export const reasonOf = (error: DbError.DbError, operation: string): SqlError.SqlErrorReason => {
  const props: ReasonProps = { cause: error, message: error.message, operation }
  switch (error._tag) {
    case "ConnectionLost":
      // Lost after the statement was sent, its outcome is unknown (a COMMIT may have committed): not retryable.
      return error.sent ? new SqlError.UnknownError(props) : new SqlError.ConnectionError(props)
    case "ConnectFailed":
      return error.sqlState?.startsWith("28") === true
        ? new SqlError.AuthenticationError(props)
        : new SqlError.ConnectionError(props)
    case "PoolTimeout":
    case "NoReplicaAvailable":
      return new SqlError.ConnectionError(props)
    case "PoolClosed":
    case "InvalidInput":
    case "PayloadTooLarge":
      return new SqlError.UnknownError(props)
    default:
      return bySqlState(error.sqlState, props, error.constraint)
  }
}

/** Is this the `DbError` a `SqlError` of this client carries as its reason's cause? */
export const isDbErrorCause = (u: unknown): u is DbError.DbError =>
  DbError.isDbError(u) && u._tag !== "RowDecodeError" && u._tag !== "PayloadDecodeError" && u._tag !== "ListenerGaveUp"

export const toSqlError = (error: DbError.DbError, operation: string): SqlError.SqlError =>
  new SqlError.SqlError({ reason: reasonOf(error, operation) })

const mapError = (operation: string) => <A, R>(effect: Effect.Effect<A, DbError.DbError, R>): Effect.Effect<A, SqlError.SqlError, R> =>
  Effect.mapError(effect, (error) => toSqlError(error, operation))

// ---------------------------------------------------------------------------
// compiler
// ---------------------------------------------------------------------------

/** `json(value)`: a custom segment the compiler turns into one `jsonb` parameter. */
interface JsonSegment extends SqlStatement.Custom<"EffectDbpoolJson", unknown> {}

const JsonSegment = SqlStatement.custom<JsonSegment>("EffectDbpoolJson")

export const json = (value: unknown): SqlStatement.Fragment =>
  SqlStatement.fragment([JsonSegment(value, undefined, undefined)])

const escape = SqlStatement.defaultEscape("\"")

export const makeCompiler = (transform?: ((name: string) => string) | undefined, transformJson = true): SqlStatement.Compiler => {
  const transformValue = transformJson && transform !== undefined ? SqlStatement.defaultTransforms(transform).value : undefined
  return SqlStatement.makeCompiler<JsonSegment>({
    dialect: "pg",
    placeholder: (index) => `$${index}`,
    onIdentifier: transform === undefined
      ? escape
      : (value, withoutTransform) => escape(withoutTransform ? value : transform(value)),
    onRecordUpdate: (placeholders, alias, columns, values, returning) => [
      `(values ${placeholders}) AS ${alias}${columns}${returning === undefined ? "" : ` RETURNING ${returning[0]}`}`,
      returning === undefined ? values.flat() : [...values.flat(), ...returning[1]]
    ],
    onCustom: (segment, placeholder, withoutTransform) => {
      // @effect/sql-pg's `sql.json` fragments are JSON too, so statements written for PgClient compile here.
      const kind: string = segment.kind
      if (kind !== "EffectDbpoolJson" && kind !== "PgJson") {
        throw new TypeError(`effect-dbpool cannot compile the custom SQL segment "${kind}" (made for another driver)`)
      }
      const value = withoutTransform || transformValue === undefined ? segment.paramA : transformValue(segment.paramA)
      return [placeholder(undefined), [new Json(value)]]
    }
  })
}

// ---------------------------------------------------------------------------
// connections
// ---------------------------------------------------------------------------

/**
 * Transaction statements SqlClient sends carry this comment: only they are
 * carried out as transaction steps. Random per process, so no user statement
 * can pass for one.
 */
const marker = ` /* effect-dbpool ${randomUUID()} */`

type Step =
  | { readonly _tag: "begin" }
  | { readonly _tag: "rollback" }
  | { readonly _tag: "savepoint" | "release" | "rollbackTo"; readonly name: string }

const savepointStep = /^(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) (effect_sql_[0-9]+)$/

const stepOf = (text: string): Step | undefined => {
  if (!text.endsWith(marker)) return undefined
  const body = text.slice(0, text.length - marker.length)
  if (body === "BEGIN") return { _tag: "begin" }
  if (body === "ROLLBACK") return { _tag: "rollback" }
  const match = savepointStep.exec(body)
  if (match === null) return undefined
  const name = match[2]!
  return match[1] === "SAVEPOINT"
    ? { _tag: "savepoint", name }
    : match[1] === "RELEASE SAVEPOINT"
    ? { _tag: "release", name }
    : { _tag: "rollbackTo", name }
}

const transactionStart = /^\s*(?:begin|start\s+transaction)\b/i

const refusedControl = new DbError.InvalidInput({
  message: "transaction control statements (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …) are issued by SqlClient: use sql.withTransaction " +
    "(to begin with a statement of your own, provide it as SqlClient.BeginTransaction)"
})

const notABegin = new DbError.InvalidInput({
  message: "SqlClient.BeginTransaction must start a transaction: BEGIN … or START TRANSACTION …"
})

const returned = new DbError.InvalidInput({
  message: "this connection was already returned to the pool: use a reserved connection only inside its scope"
})

/** The driver's result of one statement, as `sql\`…\`.raw` returns it. */
export interface RawResult {
  /** The command tag, e.g. `"INSERT"`, `"SELECT"`, `"COMMIT"` (`"ROLLBACK"` when a COMMIT rolled back). */
  readonly command: string
  /** Rows affected or returned, as the server counted them (`null` for commands without a count). */
  readonly rowCount: number | null
  readonly rows: ReadonlyArray<Row>
  readonly columns: ReadonlyArray<{ readonly name: string; readonly type: number }>
}

const prepareUser = (conn: Conn.Conn, text: string, params: ReadonlyArray<unknown>, operation: string) => {
  if (isTransactionControl(text)) return Effect.fail(toSqlError(refusedControl, operation))
  // The values are checked when the statement is prepared (an unsupported one is InvalidInput), as `sql` values are.
  const prepared = Conn.prepare(Statement.text(text, params as ReadonlyArray<Statement.Value>), conn.readOnly)
  return Conn.isRefused(prepared) ? Effect.fail(toSqlError(prepared, operation)) : Effect.succeed(prepared)
}

/** A pooled connection held exclusively for a scope (a transaction, `reserve`, a stream). */
export class HeldConnection implements SqlConnection.Connection {
  /** False once the scope has closed: the connection is back in the pool. */
  live = true
  readonly conn: Conn.Conn
  constructor(conn: Conn.Conn) {
    this.conn = conn
  }

  /**
   * Statements pipelined with others on this connection are left to finish when interrupted (see `execute`) —
   * outside a transaction only: inside one, an interrupted statement is cancelled like `pool.transaction`'s (a
   * cancel landing on a sibling statement does no harm, the transaction rolls back), so the rollback does not
   * wait behind statements left running.
   */
  private readonly pipelined = () => this.conn.txDepth === 0 && this.conn.inflight.size > 1

  private guard<A>(effect: () => Effect.Effect<A, SqlError.SqlError>): Effect.Effect<A, SqlError.SqlError> {
    return Effect.suspend(() => (this.live ? effect() : Effect.fail(toSqlError(returned, "execute"))))
  }

  /** A transaction step SqlClient asked for. */
  private step(step: Step): Effect.Effect<ReadonlyArray<Row>, SqlError.SqlError> {
    const conn = this.conn
    switch (step._tag) {
      case "begin":
        return Effect.as(mapError("begin")(Conn.begin(conn)), [])
      case "rollback":
        return Effect.as(Conn.rollback(conn), [])
      case "savepoint":
        return Effect.as(mapError("savepoint")(Conn.savepoint(conn, step.name)), [])
      case "release":
        return Effect.as(mapError("releaseSavepoint")(Conn.releaseSavepoint(conn, step.name)), [])
      case "rollbackTo":
        return Effect.as(mapError("rollbackSavepoint")(Conn.rollbackToSavepoint(conn, step.name)), [])
    }
  }

  /** A transaction started with the statement provided as `SqlClient.BeginTransaction`. */
  private beginWith(text: string): Effect.Effect<ReadonlyArray<Row>, SqlError.SqlError> {
    // Anything else would leave SqlClient believing in a transaction the server never opened.
    if (!transactionStart.test(text)) return Effect.fail(toSqlError(notABegin, "begin"))
    const begin = Conn.beginWith(this.conn, text)
    // A read pool's transactions are read-only, whatever the statement asked for.
    const readOnly = this.conn.readOnly ? Effect.andThen(begin, Conn.execute(this.conn, "SET TRANSACTION READ ONLY", [])) : begin
    return Effect.as(mapError("begin")(readOnly), [])
  }

  /** A statement of the user's: transaction control is refused, as the pool refuses it. */
  private user(text: string, params: ReadonlyArray<unknown>, operation: string): Effect.Effect<ReadonlyArray<Row>, SqlError.SqlError> {
    return Effect.flatMap(prepareUser(this.conn, text, params, operation), (prepared) => {
      Conn.noteSessionChange(this.conn, prepared)
      return mapError(operation)(Effect.map(Conn.execute(this.conn, prepared.text, prepared.params, this.pipelined), Conn.plainRows))
    })
  }

  private rows(text: string, params: ReadonlyArray<unknown>, operation: string): Effect.Effect<ReadonlyArray<Row>, SqlError.SqlError> {
    return this.guard(() => {
      const step = stepOf(text)
      if (step !== undefined) return this.step(step)
      if (this.conn.txDepth > 0) return this.user(text, params, operation)
      // SqlClient sends a BeginTransaction statement as it is, unmarked: it is recognised by being that statement.
      return Effect.withFiber((fiber) =>
        fiber.getRef(SqlClient.BeginTransaction) === text ? this.beginWith(text) : this.user(text, params, operation)
      )
    })
  }

  execute(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ): Effect.Effect<ReadonlyArray<Row>, SqlError.SqlError> {
    const rows = this.rows(sql, params, "execute")
    return transformRows === undefined ? rows : Effect.map(rows, transformRows)
  }

  executeUnprepared(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ): Effect.Effect<ReadonlyArray<Row>, SqlError.SqlError> {
    // Every statement goes through the extended protocol (one statement per text); "unprepared" changes nothing.
    return this.execute(sql, params, transformRows)
  }

  executeRaw(sql: string, params: ReadonlyArray<unknown>): Effect.Effect<RawResult, SqlError.SqlError> {
    return this.guard(() =>
      Effect.flatMap(prepareUser(this.conn, sql, params, "executeRaw"), (prepared) => {
        Conn.noteSessionChange(this.conn, prepared)
        return mapError("executeRaw")(
          Effect.map(Conn.execute(this.conn, prepared.text, prepared.params, this.pipelined), (result) => ({
            command: result.command,
            rowCount: result.count ?? null,
            rows: Conn.plainRows(result),
            columns: (result.columns ?? []).map((c) => ({ name: c.name, type: c.type }))
          }))
        )
      })
    )
  }

  executeValues(sql: string, params: ReadonlyArray<unknown>): Effect.Effect<ReadonlyArray<ReadonlyArray<unknown>>, SqlError.SqlError> {
    return this.guard(() =>
      Effect.flatMap(prepareUser(this.conn, sql, params, "executeValues"), (prepared) => {
        Conn.noteSessionChange(this.conn, prepared)
        return mapError("executeValues")(Conn.executeValues(this.conn, prepared.text, prepared.params, this.pipelined))
      })
    )
  }

  executeValuesUnprepared(sql: string, params: ReadonlyArray<unknown>) {
    return this.executeValues(sql, params)
  }

  executeStream(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ): Stream.Stream<Row, SqlError.SqlError> {
    // Through a cursor on this held connection, a batch at a time (see Conn.stream).
    return Stream.unwrap(this.guard(() =>
      Effect.map(prepareUser(this.conn, sql, params, "executeStream"), (prepared) => {
        Conn.noteSessionChange(this.conn, prepared)
        const rows = Stream.mapError(Conn.stream(this.conn, prepared, 1000, undefined), (e) => toSqlError(e, "executeStream"))
        // Rows of a result are plain objects (Conn.plainRows).
        const objects = rows as Stream.Stream<Row, SqlError.SqlError>
        return transformRows === undefined ? objects : Stream.mapArray(objects, (batch) => transformRows(batch) as Arr.NonEmptyReadonlyArray<Row>) // a transform maps each row, keeping the batch non-empty
      })
    ))
  }
}

/** A connection held exclusively until the scope closes; afterwards it refuses to run. */
const hold = (internals: Pool.Internals): Effect.Effect<HeldConnection, SqlError.SqlError, Scope.Scope> =>
  Effect.gen(function*() {
    const conn = yield* mapError("acquireConnection")(internals.lease)
    const held = new HeldConnection(conn)
    // Added after the lease's check-in, so it runs before it: nothing can start on a returned connection.
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        held.live = false
      })
    )
    return held
  })

/**
 * What the borrower lends for one statement: not a connection but the pool,
 * so that the statement takes the pool's fast path (an idle connection, or
 * pipelining on a busy one).
 */
class PooledStatement implements SqlConnection.Connection {
  readonly pool: InteractionPool
  readonly internals: Pool.Internals
  constructor(pool: InteractionPool, internals: Pool.Internals) {
    this.pool = pool
    this.internals = internals
  }

  execute(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ): Effect.Effect<ReadonlyArray<Row>, SqlError.SqlError> {
    if (isTransactionControl(sql)) return Effect.fail(toSqlError(refusedControl, "execute"))
    // The values are checked when the statement is prepared (an unsupported one is InvalidInput), as `sql` values are.
    const rows = mapError("execute")(this.pool.run(Statement.text(sql, params as ReadonlyArray<Statement.Value>)))
    return transformRows === undefined ? rows : Effect.map(rows, transformRows)
  }

  executeUnprepared(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ) {
    return this.execute(sql, params, transformRows)
  }

  private held<A>(f: (held: HeldConnection) => Effect.Effect<A, SqlError.SqlError>): Effect.Effect<A, SqlError.SqlError> {
    return Effect.scoped(Effect.flatMap(hold(this.internals), f))
  }

  executeRaw(sql: string, params: ReadonlyArray<unknown>) {
    return this.held((held) => held.executeRaw(sql, params))
  }

  executeValues(sql: string, params: ReadonlyArray<unknown>) {
    return this.held((held) => held.executeValues(sql, params))
  }

  executeValuesUnprepared(sql: string, params: ReadonlyArray<unknown>) {
    return this.executeValues(sql, params)
  }

  executeStream(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ): Stream.Stream<Row, SqlError.SqlError> {
    return Stream.unwrap(Effect.map(hold(this.internals), (held) => held.executeStream(sql, params, transformRows)))
  }
}

// ---------------------------------------------------------------------------
// the client
// ---------------------------------------------------------------------------

export interface Options {
  readonly transformQueryNames?: ((name: string) => string) | undefined
  readonly transformResultNames?: ((name: string) => string) | undefined
  readonly transformJson?: boolean | undefined
  readonly spanAttributes?: Record<string, unknown> | undefined
}

const serverAttributes = (server: string): ReadonlyArray<readonly [string, unknown]> => {
  const match = /^(.*):([0-9]+)(?:\/(.*))?$/.exec(server)
  if (match === null) return []
  const attributes: Array<readonly [string, unknown]> = [["server.address", match[1]], ["server.port", Number(match[2])]]
  if (match[3] !== undefined && match[3].length > 0) attributes.push(["db.namespace", match[3]])
  return attributes
}

export const make = (
  pool: InteractionPool,
  options: Options = {}
): Effect.Effect<SqlClient.SqlClient, never, Reactivity.Reactivity> =>
  Effect.suspend(() => {
    const internals = Pool.internals(pool)
    if (internals === undefined) {
      return Effect.die(new TypeError(`EffectSql: pool "${pool.name}" was not made by DbPool.layer / DbPool.named`))
    }
    const acquirer = Effect.map(hold(internals), (held): SqlConnection.Connection => held)
    const borrowed = new PooledStatement(pool, internals)
    const transformJson = options.transformJson ?? true
    const commit = (connection: SqlConnection.Connection): Effect.Effect<void, SqlError.SqlError> =>
      connection instanceof HeldConnection
        ? mapError("commit")(Conn.commit(connection.conn))
        : Effect.die(new TypeError("EffectSql: COMMIT on a connection this client did not hold"))
    return SqlClient.make({
      driver: "effect-dbpool",
      acquirer,
      borrower: (f) => f(borrowed),
      transactionAcquirer: acquirer,
      compiler: makeCompiler(options.transformQueryNames, transformJson),
      transformRows: options.transformResultNames === undefined
        ? undefined
        : SqlStatement.defaultTransforms(options.transformResultNames, transformJson).array,
      spanAttributes: [
        ...Object.entries(options.spanAttributes ?? {}),
        ["db.system.name", "postgresql"],
        ...serverAttributes(internals.server),
        ["effect_dbpool.pool", pool.name]
      ],
      prepareTransactionControls: true,
      beginTransaction: `BEGIN${marker}`,
      rollback: `ROLLBACK${marker}`,
      commit,
      savepoint: (name) => `SAVEPOINT ${name}${marker}`,
      releaseSavepoint: (name) => `RELEASE SAVEPOINT ${name}${marker}`,
      rollbackSavepoint: (name) => `ROLLBACK TO SAVEPOINT ${name}${marker}`,
      isTransaction: (connection) => connection instanceof HeldConnection && connection.conn.txDepth > 0
    })
  })

export class ReadSqlClient extends Context.Service<ReadSqlClient, SqlClient.SqlClient>()("effect-dbpool/EffectSql/ReadSqlClient") {}

export const layer = (options?: Options): Layer.Layer<SqlClient.SqlClient, never, WritePool> =>
  Layer.effect(SqlClient.SqlClient, WritePool.use((pool) => make(pool, options))).pipe(
    Layer.provide(Reactivity.layer)
  )

export const layerRead = (options?: Options): Layer.Layer<SqlClient.SqlClient, never, ReadPool> =>
  Layer.effect(SqlClient.SqlClient, ReadPool.use((pool) => make(pool, options))).pipe(
    Layer.provide(Reactivity.layer)
  )

export const layerReadSqlClient = (options?: Options): Layer.Layer<ReadSqlClient, never, ReadPool> =>
  Layer.effect(ReadSqlClient, ReadPool.use((pool) => make(pool, options))).pipe(
    Layer.provide(Reactivity.layer)
  )
