import * as DbError from "../DbError.ts"

const classNames: Record<string, string> = {
  "00": "Successful Completion",
  "01": "Warning",
  "02": "No Data",
  "03": "SQL Statement Not Yet Complete",
  "08": "Connection Exception",
  "09": "Triggered Action Exception",
  "0A": "Feature Not Supported",
  "0B": "Invalid Transaction Initiation",
  "0F": "Locator Exception",
  "0L": "Invalid Grantor",
  "0P": "Invalid Role Specification",
  "0Z": "Diagnostics Exception",
  "20": "Case Not Found",
  "21": "Cardinality Violation",
  "22": "Data Exception",
  "23": "Integrity Constraint Violation",
  "24": "Invalid Cursor State",
  "25": "Invalid Transaction State",
  "26": "Invalid SQL Statement Name",
  "27": "Triggered Data Change Violation",
  "28": "Invalid Authorization Specification",
  "2B": "Dependent Privilege Descriptors Still Exist",
  "2D": "Invalid Transaction Termination",
  "2F": "SQL Routine Exception",
  "34": "Invalid Cursor Name",
  "38": "External Routine Exception",
  "39": "External Routine Invocation Exception",
  "3B": "Savepoint Exception",
  "3D": "Invalid Catalog Name",
  "3F": "Invalid Schema Name",
  "40": "Transaction Rollback",
  "42": "Syntax Error or Access Rule Violation",
  "44": "WITH CHECK OPTION Violation",
  "53": "Insufficient Resources",
  "54": "Program Limit Exceeded",
  "55": "Object Not In Prerequisite State",
  "57": "Operator Intervention",
  "58": "System Error",
  "72": "Snapshot Failure",
  F0: "Configuration File Error",
  HV: "Foreign Data Wrapper Error",
  P0: "PL/pgSQL Error",
  XX: "Internal Error"
}

/** `"23505"` → `"23 Integrity Constraint Violation"`. */
export const sqlStateClass = (sqlState: string): string => {
  const cls = sqlState.slice(0, 2)
  return `${cls} ${classNames[cls] ?? "Unknown Class"}`
}

/** The SQLSTATEs with a tag of their own; every other one is a `DatabaseError`. */
const byCode: Record<string, new(fields: DbError.ServerErrorFields) => DbError.DbError> = {
  "23505": DbError.UniqueViolation,
  "23503": DbError.ForeignKeyViolation,
  "23514": DbError.CheckViolation,
  "23502": DbError.NotNullViolation,
  "40001": DbError.SerializationFailure,
  "40P01": DbError.Deadlock,
  "55P03": DbError.LockNotAvailable,
  "57014": DbError.StatementTimeout,
  "25006": DbError.ReadOnlyTransaction,
  "42601": DbError.SyntaxError,
  "25P02": DbError.TransactionAborted
}

/** The fields postgres.js puts on a `PostgresError` (typed loosely: errors arrive as `unknown`). */
interface DriverError {
  readonly message?: unknown
  readonly code?: unknown
  readonly detail?: unknown
  readonly hint?: unknown
  readonly constraint_name?: unknown
  readonly table_name?: unknown
  readonly column_name?: unknown
  /** The non-localized severity (`ERROR`, `FATAL`, `PANIC`). */
  readonly severity?: unknown
}

const str = (u: unknown): string | undefined => (typeof u === "string" && u.length > 0 ? u : undefined)

const connectionCodes = new Set([
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
  "CONNECT_TIMEOUT",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT"
])

/** SQLSTATEs after which the connection is unusable. */
export const isFatalSqlState = (code: string): boolean =>
  code.startsWith("08") || code === "57P01" || code === "57P02" || code === "57P03"

/**
 * Did the server end the session with this error? An error reported with
 * severity `ERROR` ends only the statement, whatever its SQLSTATE: e.g. a
 * bind message with the wrong number of parameters is a protocol violation
 * (08P01) after which the session goes on.
 */
const endsSession = (e: DriverError, code: string): boolean => str(e.severity) !== "ERROR" && isFatalSqlState(code)

/** Is this driver failure a dead connection (as opposed to a statement error)? */
export const isConnectionFailure = (u: unknown): boolean => {
  if (typeof u !== "object" || u === null) return false
  const e: DriverError = u
  const code = str(e.code)
  return code !== undefined && (connectionCodes.has(code) || endsSession(e, code))
}

/**
 * Turns whatever postgres.js rejected with into a tagged error. The driver's
 * own messages for connection errors name `host:port` only; passwords never
 * reach them.
 */
export const fromDriver = (u: unknown, statement: string | undefined): DbError.DbError => {
  const e: DriverError = typeof u === "object" && u !== null ? u : {}
  const message = str(e.message) ?? String(u)
  const code = str(e.code)
  // Socket error codes can look like SQLSTATEs ("EPIPE" is five capitals): they are checked first.
  if (code !== undefined && connectionCodes.has(code)) {
    return new DbError.ConnectionLost({ message: `connection lost: ${message}`, sqlState: code, statement, sent: true })
  }
  if (code === undefined || !/^[0-9A-Z]{5}$/.test(code)) {
    if (isConnectionFailure(u)) {
      return new DbError.ConnectionLost({ message: `connection lost: ${message}`, sqlState: code, statement, sent: true })
    }
    return new DbError.DatabaseError({
      message,
      sqlState: "XX000",
      sqlStateClass: sqlStateClass("XX000"),
      statement
    })
  }
  const fields: DbError.ServerErrorFields = {
    message,
    sqlState: code,
    sqlStateClass: sqlStateClass(code),
    detail: str(e.detail),
    hint: str(e.hint),
    constraint: str(e.constraint_name),
    table: str(e.table_name),
    column: str(e.column_name),
    statement
  }
  if (endsSession(e, code)) {
    return new DbError.ConnectionLost({ message: `connection lost: ${message}`, sqlState: code, sqlStateClass: fields.sqlStateClass, statement, sent: true })
  }
  const Tagged = byCode[code]
  return Tagged === undefined ? new DbError.DatabaseError(fields) : new Tagged(fields)
}
