/**
 * Every tagged error, produced by the real server (or the real pool), with
 * its tag, SQLSTATE and SQLSTATE class — and none of them carrying the
 * database password.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Fiber, Layer, Redacted } from "effect"
import { type Connection, DbError, ReadPool, sql, Statement, WritePool } from "effect-dbpool"
import { inject } from "vitest"
import { harness, poll } from "./support.ts"

const h = harness("errors")

const password = new URL(inject("databaseUrl")).password
const suffix = `${process.pid}_${Date.now().toString(36)}`

/** Every error a test here sees goes through this: neither the password nor the URL shows, in any form. */
const assertNoSecret = (error: DbError.DbError, secrets: ReadonlyArray<string> = [password]) => {
  for (const shown of [error.message, JSON.stringify(error), String(error), error.stack ?? ""]) {
    for (const secret of secrets) assert.notInclude(shown, secret, `${error._tag} shows a password`)
    assert.notInclude(shown, inject("databaseUrl"), `${error._tag} shows the URL`)
  }
}

type Tag = DbError.DbError["_tag"]
type Tagged<T extends Tag> = Extract<DbError.DbError, { readonly _tag: T }>

function assertTag<T extends Tag>(error: DbError.DbError, tag: T): asserts error is Tagged<T> {
  assert.strictEqual(error._tag, tag, `expected ${tag}, got ${error._tag}: ${error.message}`)
}

/** Checks a server error's tag, SQLSTATE and class, and that it shows no secret; returns it narrowed. */
const expectServerError = <T extends Tag>(error: DbError.DbError, tag: T, sqlState: string, sqlStateClass: string): Tagged<T> => {
  assertTag(error, tag)
  assert.strictEqual("sqlState" in error ? error.sqlState : undefined, sqlState, error.message)
  assert.strictEqual("sqlStateClass" in error ? error.sqlStateClass : undefined, sqlStateClass)
  assertNoSecret(error)
  return error
}

/** A table of this file's own, visible to every session, dropped when the scope closes. */
const scratchTable = (label: string) =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const name = `dbpool_errors_${label}_${suffix}`
      yield* h.observe(`CREATE TABLE ${name} (id int PRIMARY KEY, val int NOT NULL)`)
      yield* h.observe(`INSERT INTO ${name} VALUES (1, 0), (2, 0)`)
      return sql.id(name)
    }),
    (table) => h.observe(`DROP TABLE IF EXISTS ${table.text}`)
  )

const integrity = "23 Integrity Constraint Violation"

const selectOne = Effect.gen(function*() {
  const pool = yield* WritePool
  return yield* pool.run(sql`SELECT 1`)
})

/** Temp tables with every kind of constraint, on the interaction's connection. */
const constraintTables = (conn: Connection.Connection) =>
  Effect.gen(function*() {
    yield* conn.run(sql`CREATE TEMP TABLE err_parent (
      id int CONSTRAINT err_parent_pkey PRIMARY KEY,
      email text CONSTRAINT err_parent_email_key UNIQUE,
      qty int CONSTRAINT err_parent_qty_positive CHECK (qty > 0),
      name text NOT NULL DEFAULT 'x')`)
    yield* conn.run(sql`CREATE TEMP TABLE err_child (parent int CONSTRAINT err_child_parent_fkey REFERENCES err_parent (id))`)
    yield* conn.run(sql`INSERT INTO err_parent (id, email, qty) VALUES (${1}, ${"a@b.c"}, ${1})`)
  })

const dropConstraintTables = (conn: Connection.Connection) =>
  Effect.ignore(conn.run(sql`DROP TABLE IF EXISTS err_child, err_parent`))

describe("integrity constraint violations", () => {
  it.live("UniqueViolation (23505) names the constraint and table", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          yield* constraintTables(conn)
          return yield* Effect.flip(conn.run(sql`INSERT INTO err_parent (id, email, qty) VALUES (${2}, ${"a@b.c"}, ${1})`))
        }).pipe(Effect.ensuring(dropConstraintTables(conn)))
      )
      const e = expectServerError(error, "UniqueViolation", "23505", integrity)
      assert.strictEqual(e.constraint, "err_parent_email_key")
      assert.strictEqual(e.table, "err_parent")
      assert.strictEqual(e.statement, "INSERT INTO err_parent (id, email, qty) VALUES ($1, $2, $3)")
      assert.include(e.detail ?? "", "already exists")
    }).pipe(Effect.provide(h.pools())))

  it.live("ForeignKeyViolation (23503)", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          yield* constraintTables(conn)
          return yield* Effect.flip(conn.run(sql`INSERT INTO err_child (parent) VALUES (${99})`))
        }).pipe(Effect.ensuring(dropConstraintTables(conn)))
      )
      const e = expectServerError(error, "ForeignKeyViolation", "23503", integrity)
      assert.strictEqual(e.constraint, "err_child_parent_fkey")
      assert.strictEqual(e.table, "err_child")
    }).pipe(Effect.provide(h.pools())))

  it.live("CheckViolation (23514)", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          yield* constraintTables(conn)
          return yield* Effect.flip(conn.run(sql`UPDATE err_parent SET qty = ${-1} WHERE id = ${1}`))
        }).pipe(Effect.ensuring(dropConstraintTables(conn)))
      )
      const e = expectServerError(error, "CheckViolation", "23514", integrity)
      assert.strictEqual(e.constraint, "err_parent_qty_positive")
    }).pipe(Effect.provide(h.pools())))

  it.live("NotNullViolation (23502) names the column", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          yield* constraintTables(conn)
          return yield* Effect.flip(conn.run(sql`INSERT INTO err_parent (id, name) VALUES (${3}, ${null})`))
        }).pipe(Effect.ensuring(dropConstraintTables(conn)))
      )
      const e = expectServerError(error, "NotNullViolation", "23502", integrity)
      assert.strictEqual(e.column, "name")
      assert.strictEqual(e.table, "err_parent")
    }).pipe(Effect.provide(h.pools())))
})

describe("concurrency errors", () => {
  it.live("SerializationFailure (40001): two concurrent serializable transactions", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const table = yield* scratchTable("serial")
      const read = yield* Deferred.make<void>()
      const written = yield* Deferred.make<void>()
      const first = yield* Effect.forkChild(Effect.flip(pool.transaction((conn) =>
        Effect.gen(function*() {
          // The first statement takes the transaction's snapshot.
          yield* conn.run(sql`SELECT val FROM ${table} WHERE id = ${1}`)
          yield* Deferred.succeed(read, undefined)
          yield* Deferred.await(written)
          yield* conn.run(sql`UPDATE ${table} SET val = val + 1 WHERE id = ${1}`)
        }), { isolationLevel: "serializable" })))
      yield* Deferred.await(read)
      yield* pool.transaction((conn) => conn.run(sql`UPDATE ${table} SET val = 100 WHERE id = ${1}`), { isolationLevel: "serializable" })
        .pipe(Effect.ensuring(Deferred.succeed(written, undefined)))
      const error = yield* Fiber.join(first)
      expectServerError(error, "SerializationFailure", "40001", "40 Transaction Rollback")
      // The first transaction was rolled back: the second one's write stands.
      const [row] = yield* h.observe<{ val: number }>(`SELECT val FROM ${table.text} WHERE id = 1`)
      assert.strictEqual(row?.val, 100)
    }).pipe(Effect.scoped, Effect.provide(h.pools())))

  it.live("Deadlock (40P01): two transactions lock two rows in opposite orders", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const table = yield* scratchTable("deadlock")
      const firstLocked = yield* Deferred.make<void>()
      const secondLocked = yield* Deferred.make<void>()
      const lockBoth = (first: number, second: number, mine: Deferred.Deferred<void>, theirs: Deferred.Deferred<void>) =>
        pool.transaction((conn) =>
          Effect.gen(function*() {
            yield* conn.run(sql`SELECT * FROM ${table} WHERE id = ${first} FOR UPDATE`)
            yield* Deferred.succeed(mine, undefined)
            yield* Deferred.await(theirs)
            yield* conn.run(sql`SELECT * FROM ${table} WHERE id = ${second} FOR UPDATE`)
          })
        )
      const results = yield* Effect.all([
        Effect.result(lockBoth(1, 2, firstLocked, secondLocked)),
        Effect.result(lockBoth(2, 1, secondLocked, firstLocked))
      ], { concurrency: 2 })
      const failures = results.flatMap((r) => (r._tag === "Failure" ? [r.failure] : []))
      assert.strictEqual(failures.length, 1, "the server aborts exactly one of the two")
      expectServerError(failures[0]!, "Deadlock", "40P01", "40 Transaction Rollback")
    }).pipe(Effect.scoped, Effect.provide(h.pools())))

  it.live("LockNotAvailable (55P03): FOR UPDATE NOWAIT while another transaction holds the lock", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const table = yield* scratchTable("nowait")
      const locked = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(pool.transaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`SELECT * FROM ${table} WHERE id = ${1} FOR UPDATE`)
          yield* Deferred.succeed(locked, undefined)
          yield* Deferred.await(release)
        })
      ))
      yield* Deferred.await(locked)
      const error = yield* Effect.flip(pool.run(sql`SELECT * FROM ${table} WHERE id = ${1} FOR UPDATE NOWAIT`))
        .pipe(Effect.ensuring(Deferred.succeed(release, undefined)))
      yield* Fiber.join(holder)
      expectServerError(error, "LockNotAvailable", "55P03", "55 Object Not In Prerequisite State")
    }).pipe(Effect.scoped, Effect.provide(h.pools())))

  it.live("StatementTimeout (57014): SET LOCAL statement_timeout, then pg_sleep", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const started = Date.now()
      const error = yield* Effect.flip(pool.transaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`SET LOCAL statement_timeout = 100`)
          yield* conn.run(sql`SELECT pg_sleep(2)`)
        })
      ))
      expectServerError(error, "StatementTimeout", "57014", "57 Operator Intervention")
      assert.isBelow(Date.now() - started, 1500)
      // The setting was local to the rolled-back transaction.
      const [row] = yield* pool.run(sql`SELECT current_setting('statement_timeout') AS t`)
      assert.strictEqual(row?.["t"], "0")
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("PoolTimeout: no connection becomes free within acquireTimeout", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const held = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(pool.interaction(() =>
        Effect.andThen(Deferred.succeed(held, undefined), Deferred.await(release))
      ))
      yield* Deferred.await(held)
      const started = Date.now()
      const error = yield* Effect.flip(pool.run(sql`SELECT 1`)).pipe(Effect.ensuring(Deferred.succeed(release, undefined)))
      const waited = Date.now() - started
      yield* Fiber.join(holder)
      assertTag(error, "PoolTimeout")
      assertNoSecret(error)
      assert.strictEqual(error.pool, "default/write")
      assert.strictEqual(error.timeoutMillis, 200)
      assert.strictEqual(error.stats.max, 1)
      assert.strictEqual(error.stats.used, 1)
      assert.isAtLeast(waited, 150)
      assert.isBelow(waited, 2000)
      // Once the holder is done the pool serves again.
      assert.strictEqual((yield* pool.run(sql`SELECT 1 AS one`))[0]?.["one"], 1)
    }).pipe(Effect.provide(h.pools({ maxSize: 1, acquireTimeout: "200 millis" }))))
})

describe("statement errors", () => {
  it.live("ReadOnlyTransaction (25006): a write through the ReadPool, or in a read-only transaction", () =>
    Effect.gen(function*() {
      const read = yield* ReadPool
      const write = yield* WritePool
      const viaReadPool = yield* Effect.flip(read.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${-1}`))
      expectServerError(viaReadPool, "ReadOnlyTransaction", "25006", "25 Invalid Transaction State")
      const viaOption = yield* Effect.flip(write.transaction((conn) => conn.run(sql`UPDATE test_values SET val1 = val1 WHERE id = ${-1}`), { readOnly: true }))
      expectServerError(viaOption, "ReadOnlyTransaction", "25006", "25 Invalid Transaction State")
    }).pipe(Effect.provide(h.pools())))

  it.live("SyntaxError (42601)", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const e = expectServerError(
        yield* Effect.flip(pool.run(sql`SELEC * FROM test_values WHERE id = ${1}`)),
        "SyntaxError",
        "42601",
        "42 Syntax Error or Access Rule Violation"
      )
      assert.strictEqual(e.statement, "SELEC * FROM test_values WHERE id = $1")
    }).pipe(Effect.provide(h.pools())))

  it.live("DatabaseError for everything else: undefined table 42P01, invalid integer text 22P02, division by zero 22012", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      expectServerError(
        yield* Effect.flip(pool.run(sql`SELECT * FROM dbpool_no_such_table_${Statement.text(suffix)}`)),
        "DatabaseError",
        "42P01",
        "42 Syntax Error or Access Rule Violation"
      )
      expectServerError(yield* Effect.flip(pool.run(sql`SELECT ${"abc"}::int`)), "DatabaseError", "22P02", "22 Data Exception")
      expectServerError(yield* Effect.flip(pool.run(sql`SELECT 'abc'::int`)), "DatabaseError", "22P02", "22 Data Exception")
      expectServerError(yield* Effect.flip(pool.run(sql`SELECT ${1}::int / ${0}::int`)), "DatabaseError", "22012", "22 Data Exception")
    }).pipe(Effect.provide(h.pools())))

  it.live("a NUL byte in a text parameter is a typed error, and the connection stays usable", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const outcome = yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          const error = yield* Effect.flip(conn.run(sql`SELECT ${"a\u0000b"}::text AS v`))
          const [after] = yield* conn.run(sql`SELECT ${"ok"}::text AS v, pg_backend_pid() AS pid`)
          return { error, after, pid: conn.pid }
        })
      )
      assertNoSecret(outcome.error)
      if (outcome.error._tag === "InvalidInput") {
        assert.include(outcome.error.message.toLowerCase(), "nul")
      } else {
        expectServerError(outcome.error, "DatabaseError", "22021", "22 Data Exception")
      }
      assert.deepStrictEqual(outcome.after, { v: "ok", pid: outcome.pid })
      // And the pool hands out healthy connections.
      assert.strictEqual((yield* pool.run(sql`SELECT ${"fine"}::text AS v`))[0]?.["v"], "fine")
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("an invalid Date, a Map or a function is InvalidInput, alone or at any depth of an array, refused before it reaches the server", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* Effect.flip(pool.run(sql`SELECT ${new Date(Number.NaN)}::timestamptz`))
      assertTag(error, "InvalidInput")
      assertNoSecret(error)
      assert.include(error.message, "Date")
      const t = yield* scratchTable("unsendable")
      // Outside Statement.Value's types, as from untyped callers: an array element was stored as "[object Map]",
      // a function's source, or sent as the text "invalid".
      const elements: ReadonlyArray<unknown> = [[new Date(Number.NaN)], [new Map()], [["a", () => "secret"]]]
      for (const value of elements) {
        const refused = yield* Effect.flip(pool.run(sql`INSERT INTO ${t} VALUES (3, cardinality(${value as Statement.Value}::text[]))`))
        assertTag(refused, "InvalidInput")
        assert.match(refused.message, /cannot be sent/)
      }
      assert.deepStrictEqual(yield* h.observe(`SELECT id FROM ${t.text} ORDER BY id`), [{ id: 1 }, { id: 2 }])
    }).pipe(Effect.scoped, Effect.provide(h.pools())))

  it.live("a wrong parameter count is a typed DatabaseError that leaves the connection usable", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          // Fewer values than placeholders: the server rejects the bind message (08P01, at severity ERROR).
          const tooFew = yield* Effect.flip(conn.run(Statement.text("SELECT $1::int AS a, $2::int AS b", [1])))
          expectServerError(tooFew, "DatabaseError", "08P01", "08 Connection Exception")
          // More values than placeholders: the extra one has no type.
          const tooMany = yield* Effect.flip(conn.run(Statement.text("SELECT $1::int AS a", [1, 2])))
          expectServerError(tooMany, "DatabaseError", "42P18", "42 Syntax Error or Access Rule Violation")
          const [row] = yield* conn.run(sql`SELECT pg_backend_pid() AS pid`)
          assert.strictEqual(row?.["pid"], conn.pid)
        })
      )
    }).pipe(Effect.provide(h.pools())))
})

describe("connection and pool errors", () => {
  it.live("PoolClosed: a pool used after its Layer was released", () =>
    Effect.gen(function*() {
      const { read, write } = yield* Effect.scoped(Effect.gen(function*() {
        const context = yield* Layer.build(h.pools())
        const write = Context.get(context, WritePool)
        // Open while the scope is: it works.
        assert.strictEqual((yield* write.run(sql`SELECT 1 AS one`))[0]?.["one"], 1)
        return { read: Context.get(context, ReadPool), write }
      }))
      const errors = [
        yield* Effect.flip(write.run(sql`SELECT 1`)),
        yield* Effect.flip(write.interaction((conn) => conn.run(sql`SELECT 1`))),
        yield* Effect.flip(write.transaction((conn) => conn.run(sql`SELECT 1`))),
        yield* Effect.flip(Effect.scoped(write.partialTransaction())),
        yield* Effect.flip(read.run(sql`SELECT 1`))
      ]
      for (const [i, error] of errors.entries()) {
        assertTag(error, "PoolClosed")
        assertNoSecret(error)
        assert.strictEqual(error.pool, i === errors.length - 1 ? "default/read" : "default/write")
      }
    }))

  it.live("ConnectionLost: the backend running a statement is terminated; the pool replaces the connection", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const marker = `errors_terminate_${suffix}`
      const sleeper = yield* Effect.forkChild(Effect.flip(pool.run(Statement.text(`SELECT pg_sleep(30) AS ${marker}`))))
      let pid: number | undefined
      for (let i = 0; i < 100 && pid === undefined; i++) {
        const rows = yield* h.observe<{ pid: number }>(
          "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'active' AND query LIKE $2",
          [h.appName, `%${marker}%`]
        )
        pid = rows[0]?.pid
        if (pid === undefined) yield* Effect.sleep("50 millis")
      }
      assert.isDefined(pid, "the sleeping statement never showed up in pg_stat_activity")
      yield* h.observe("SELECT pg_terminate_backend($1)", [pid])
      const error = yield* Fiber.join(sleeper)
      assertTag(error, "ConnectionLost")
      assertNoSecret(error)
      assert.strictEqual(error.statement, `SELECT pg_sleep(30) AS ${marker}`)
      // The server says 57P01 (admin shutdown); a driver that only saw the socket close reports its own code.
      if (error.sqlState === "57P01") {
        assert.strictEqual(error.sqlStateClass, "57 Operator Intervention")
      } else {
        assert.strictEqual(error.sqlState, "CONNECTION_CLOSED")
        assert.isUndefined(error.sqlStateClass)
      }
      // The statement was running: its outcome is unknown, so it is not safe to run again blindly.
      assert.isTrue(error.sent)
      assert.isFalse(DbError.isRetryable(error))
      const [row] = yield* pool.run(sql`SELECT pg_backend_pid() AS pid`)
      assert.notStrictEqual(row?.["pid"], pid)
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("ConnectionLost before a statement was sent says so, and is retryable", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const error = yield* Effect.flip(pool.interaction((conn) =>
        Effect.gen(function*() {
          const [row] = yield* conn.run(sql`SELECT pg_backend_pid() AS pid`)
          yield* h.observe("SELECT pg_terminate_backend($1)", [row?.["pid"]])
          // Wait until the backend is gone and the driver has seen the socket close, then send on the dead connection.
          yield* poll(h.sessions, (ss) => !ss.some((s) => s.pid === Number(row?.["pid"])))
          yield* Effect.sleep("100 millis")
          return yield* conn.run(sql`SELECT 1`)
        })
      ))
      assertTag(error, "ConnectionLost")
      assertNoSecret(error)
      assert.isFalse(error.sent, error.message)
      assert.isTrue(DbError.isRetryable(error))
      assert.isTrue(DbError.isDbError(error))
    }).pipe(Effect.provide(h.pools({ maxSize: 1 }))))

  it.live("isDbError and isRetryable: what Postgres asks to retry, and nothing else", () =>
    Effect.gen(function*() {
      const serialization = new DbError.SerializationFailure({ message: "x", sqlState: "40001", sqlStateClass: "40 Transaction Rollback" })
      const unique = new DbError.UniqueViolation({ message: "x", sqlState: "23505", sqlStateClass: integrity })
      assert.isTrue(DbError.isRetryable(serialization))
      assert.isTrue(DbError.isRetryable(new DbError.Deadlock({ message: "x", sqlState: "40P01", sqlStateClass: "40 Transaction Rollback" })))
      assert.isFalse(DbError.isRetryable(unique))
      assert.isFalse(DbError.isRetryable(new Error("x")))
      assert.isTrue(DbError.isDbError(unique))
      assert.isFalse(DbError.isDbError({ _tag: "UniqueViolation" }))
      assert.isFalse(DbError.isDbError(new Error("UniqueViolation")))
      // A real PoolTimeout from a pool of one held connection.
      const pool = yield* WritePool
      const timeout = yield* pool.interaction(() => Effect.flip(pool.run(sql`SELECT 1`)))
      assert.strictEqual(timeout._tag, "PoolTimeout")
      assert.isTrue(DbError.isRetryable(timeout))
    }).pipe(Effect.provide(h.pools({ maxSize: 1, acquireTimeout: "100 millis" }))))

  it.live("ConnectFailed: a wrong password or a closed port; no message shows either password", () =>
    Effect.gen(function*() {
      const url = new URL(inject("databaseUrl"))
      const wrongPassword = `wrong-${suffix}-secret`
      const badPassword = new URL(url)
      badPassword.password = wrongPassword
      const auth = yield* Effect.flip(selectOne.pipe(Effect.provide(h.pools({ url: Redacted.make(badPassword.toString()) }))))
      assertTag(auth, "ConnectFailed")
      assertNoSecret(auth, [password, wrongPassword])
      assert.strictEqual(auth.sqlState, "28P01")
      assert.strictEqual(auth.sqlStateClass, "28 Invalid Authorization Specification")
      assert.strictEqual(auth.server, `${url.hostname}:${url.port}/postgres`)

      // Port 1 on localhost: nothing listens, the connection is refused; the real password is in the URL.
      const closedPort = new URL(url)
      closedPort.port = "1"
      const refused = yield* Effect.flip(selectOne.pipe(Effect.provide(h.pools({ url: Redacted.make(closedPort.toString()) }))))
      assertTag(refused, "ConnectFailed")
      assertNoSecret(refused)
      assert.strictEqual(refused.server, `${url.hostname}:1/postgres`)

      // An "@" left unencoded in the password: the URL parser (and the driver) take the userinfo up to the last "@".
      const secret = `Secret${suffix}`
      const atInPassword = Redacted.make(`postgres://postgres:wrong@${secret}@${url.host}/postgres`)
      const atAuth = yield* Effect.flip(selectOne.pipe(Effect.provide(h.pools({ url: atInPassword }))))
      assertTag(atAuth, "ConnectFailed")
      assertNoSecret(atAuth, [secret])
      assert.strictEqual(atAuth.server, `${url.hostname}:${url.port}/postgres`)
    }))
})
