/**
 * effect/sql over effect-dbpool (`EffectSql`) against the real server: the
 * statement helpers, SqlSchema, SqlResolver batching, SqlModel, the Migrator,
 * `withTransaction` (savepoints, rollback on failure and interruption, a
 * connection never returned dirty), the read client, and errors as `SqlError`
 * reasons. What matters is observed from Postgres (the observer connection,
 * pg_stat_activity), not only from what the client returns.
 *
 * Tables are this file's own (`effsql_…_<pid>_<time>`), created and dropped
 * from the observer; the seeded `test_values` rows are only read.
 */
import { NodeFileSystem, NodePath } from "@effect/platform-node"
import { assert, describe, it } from "@effect/vitest"
import { Array as Arr, Cause, Data, Deferred, Effect, Exit, Fiber, Layer, Option, Schema, Stream } from "effect"
import { Model } from "effect/schema"
import { Migrator, SqlClient, SqlError, SqlModel, SqlResolver, SqlSchema, Statement as SqlStatement } from "effect/sql"
import * as MigratorFileSystem from "effect/sql/MigratorFileSystem"
import { DbError, type DbPool, EffectSql, Statement, WritePool } from "effect-dbpool"
import { fileURLToPath } from "node:url"
import { afterAll } from "vitest"
import { harness, outsideTransaction, poll } from "./support.ts"

const h = harness("effect-sql")

const suffix = `${process.pid}_${Date.now().toString(36)}`
const created: Array<string> = []
let tables = 0

/** A table of this file's, created from outside the pools, dropped after the file. */
const table = (name: string, columns: string) =>
  Effect.gen(function*() {
    const t = `effsql_${name}_${suffix}_${++tables}`
    yield* h.observe(`CREATE TABLE "${t}" (${columns})`)
    created.push(t)
    return t
  })

// Registered after the harness's: hooks run last-registered first, so the observer is still open.
afterAll(async () => {
  for (const t of created) await h.observer.unsafe(`DROP TABLE IF EXISTS "${t}" CASCADE`)
})

/** The write pool's SqlClient (and the read pool's as ReadSqlClient), with the pools themselves. */
const Live = (config: Partial<DbPool.Config> = {}) =>
  Layer.mergeAll(EffectSql.layer(), EffectSql.layerReadSqlClient()).pipe(Layer.provideMerge(h.pools(config)))

/** Counts statements SqlClient runs (its CurrentTransformer hook sees every one). */
const counting = () => {
  const seen: Array<string> = []
  const transformer: SqlStatement.Transformer = (self) =>
    Effect.sync(() => {
      seen.push(self.compile()[0])
      return self
    })
  return { seen, around: Effect.provideService(SqlStatement.CurrentTransformer, transformer) }
}

/** The error `self` fails with; a success is a defect, so the test fails saying what it got. */
const failure = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<E, never, R> =>
  Effect.flip(self).pipe(Effect.mapError((a) => new Error(`expected a failure, got a success: ${JSON.stringify(a)}`)), Effect.orDie)

const rowsOf = <T>(text: string, params: ReadonlyArray<unknown> = []) => h.observe<T>(text, params)

/** The server-side state of one backend (`idle`, `idle in transaction`, `active`, …), undefined if gone. */
const backend = (pid: number) =>
  Effect.map(
    h.observe<{ state: string | null; query: string }>("SELECT state, query FROM pg_stat_activity WHERE pid = $1", [pid]),
    (rows) => rows[0]
  )

const sqlErrorOf = (u: unknown): SqlError.SqlError => {
  assert.isTrue(SqlError.isSqlError(u), `expected a SqlError, got ${String(u)}`)
  if (!SqlError.isSqlError(u)) throw new Error("unreachable")
  return u
}

describe("statements", () => {
  it.live("sql`…` with sql.in, sql.and / sql.or, identifiers and unsafe", () =>
    Effect.gen(function*() {
      const t = yield* table("people", "id int PRIMARY KEY, name text NOT NULL, age int NOT NULL, \"Mixed Case\" text")
      const sql = yield* SqlClient.SqlClient
      yield* sql`INSERT INTO ${sql(t)} ${
        sql.insert([
          { id: 1, name: "Ann", age: 31, "Mixed Case": "a" },
          { id: 2, name: "Bob", age: 17, "Mixed Case": "b" },
          { id: 3, name: "Cid", age: 45, "Mixed Case": "c" },
          { id: 4, name: "Dee", age: 9, "Mixed Case": "d" }
        ])
      }`
      const inList = yield* sql<{ id: number }>`SELECT id FROM ${sql(t)} WHERE id IN ${sql.in([1, 3, 99])} ORDER BY id`
      assert.deepStrictEqual(inList, [{ id: 1 }, { id: 3 }])
      const byColumn = yield* sql<{ name: string }>`SELECT name FROM ${sql(t)} WHERE ${sql.in("name", ["Bob", "Dee"])} ORDER BY id`
      assert.deepStrictEqual(byColumn, [{ name: "Bob" }, { name: "Dee" }])
      // An empty list: `IN` matches nothing, `NOT IN` everything (compiled to `= ANY('{}')` / `<> ALL('{}')`).
      assert.deepStrictEqual(yield* sql`SELECT id FROM ${sql(t)} WHERE id IN ${sql.in([])}`, [])
      assert.strictEqual((yield* sql`SELECT id FROM ${sql(t)} WHERE id NOT IN ${sql.in([])}`).length, 4)
      assert.deepStrictEqual(yield* sql`SELECT id FROM ${sql(t)} WHERE ${sql.in("id", [])}`, [])
      const where = sql.and([sql`age >= ${18}`, sql.or([sql`name = ${"Ann"}`, sql`name = ${"Cid"}`]), sql`${sql("Mixed Case")} <> ${"z"}`])
      const adults = yield* sql<{ id: number }>`SELECT id FROM ${sql(t)} WHERE ${where} ORDER BY id`
      assert.deepStrictEqual(adults, [{ id: 1 }, { id: 3 }])
      assert.deepStrictEqual(yield* sql`SELECT id FROM ${sql(t)} WHERE ${sql.and([])} AND id = ${4}`, [{ id: 4 }])
      // A schema-qualified identifier: a dot separates the parts.
      const qualified = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(`public.${t}`)}`
      assert.deepStrictEqual(qualified, [{ n: 4 }])
      // unsafe: trusted text with $n placeholders and bound values.
      const unsafe = yield* sql.unsafe<{ name: string }>(`SELECT name FROM "${t}" WHERE age < $1 ORDER BY id`, [18])
      assert.deepStrictEqual(unsafe, [{ name: "Bob" }, { name: "Dee" }])
      // An identifier is quoted whatever its characters: this is a column name, not SQL.
      const hostile = yield* failure(sql`SELECT ${sql("id\"; DROP TABLE x; --")} FROM ${sql(t)}`)
      assert.strictEqual(hostile.reason._tag, "SqlSyntaxError") // 42703 undefined_column
      assert.strictEqual(EffectSql.sqlState(hostile), "42703")
      assert.deepStrictEqual(yield* rowsOf(`SELECT count(*)::int AS n FROM "${t}"`), [{ n: 4 }])
    }).pipe(Effect.provide(Live())))

  it.live("sql.insert of one row and of many, with returning; the rows are on the server", () =>
    Effect.gen(function*() {
      const t = yield* table("insert", "id serial PRIMARY KEY, name text NOT NULL, tags text[], doc jsonb")
      const sql = yield* SqlClient.SqlClient
      const [one] = yield* sql<{ id: number; name: string }>`INSERT INTO ${sql(t)} ${sql.insert({ name: "one" }).returning("id, name")}`
      assert.deepStrictEqual(one, { id: 1, name: "one" })
      const many = yield* sql<{ id: number; name: string; tags: Array<string>; doc: unknown }>`INSERT INTO ${sql(t)} ${
        sql.insert([
          { name: "two", tags: ["a", "b"], doc: { nested: [1, 2] } },
          { name: "three", tags: [], doc: EffectSql.json(["x", 1, null]) }
        ]).returning("*")
      }`
      assert.deepStrictEqual(many, [
        { id: 2, name: "two", tags: ["a", "b"], doc: { nested: [1, 2] } },
        { id: 3, name: "three", tags: [], doc: ["x", 1, null] }
      ])
      // returning with a fragment
      const [viaFragment] = yield* sql<{ upper: string }>`INSERT INTO ${sql(t)} ${sql.insert({ name: "four" }).returning(sql`upper(name) AS upper`)}`
      assert.deepStrictEqual(viaFragment, { upper: "FOUR" })
      assert.deepStrictEqual(
        yield* rowsOf(`SELECT id, name, tags, doc FROM "${t}" ORDER BY id`),
        [
          { id: 1, name: "one", tags: null, doc: null },
          { id: 2, name: "two", tags: ["a", "b"], doc: { nested: [1, 2] } },
          { id: 3, name: "three", tags: [], doc: ["x", 1, null] },
          { id: 4, name: "four", tags: null, doc: null }
        ]
      )
    }).pipe(Effect.provide(Live())))

  it.live("sql.update (one row, omitting columns, returning) and sql.updateValues", () =>
    Effect.gen(function*() {
      const t = yield* table("update", "id int PRIMARY KEY, name text NOT NULL, age int NOT NULL")
      const sql = yield* SqlClient.SqlClient
      yield* sql`INSERT INTO ${sql(t)} ${sql.insert([{ id: 1, name: "a", age: 1 }, { id: 2, name: "b", age: 2 }, { id: 3, name: "c", age: 3 }])}`
      // `.returning` goes at the end of what the helper renders, so it suits statements without a WHERE.
      const [updated] = yield* sql<{ id: number; name: string; age: number }>`UPDATE ${sql(t)} SET ${
        sql.update({ id: 1, name: "A", age: 10 }, ["id"])
      } WHERE id = ${1} RETURNING *`
      assert.deepStrictEqual(updated, { id: 1, name: "A", age: 10 })
      yield* sql`UPDATE ${sql(t)} SET ${sql.update({ name: "B" })} WHERE id = ${2}`
      const viaValues = yield* sql<{ id: number; name: string }>`UPDATE ${sql(t)} SET name = data.name FROM ${
        sql.updateValues([{ id: 2, name: "bee" }, { id: 3, name: "sea" }], "data")
      } WHERE ${sql(t)}.id = data.id::int RETURNING ${sql(t)}.id, ${sql(t)}.name`
      assert.deepStrictEqual([...viaValues].sort((x, y) => x.id - y.id), [{ id: 2, name: "bee" }, { id: 3, name: "sea" }])
      assert.deepStrictEqual(yield* rowsOf(`SELECT id, name, age FROM "${t}" ORDER BY id`), [
        { id: 1, name: "A", age: 10 },
        { id: 2, name: "bee", age: 2 },
        { id: 3, name: "sea", age: 3 }
      ])
    }).pipe(Effect.provide(Live())))

  it.live("raw has the command tag and row count; values keeps columns of one name; stream", () =>
    Effect.gen(function*() {
      const t = yield* table("raw", "id int PRIMARY KEY")
      const sql = yield* SqlClient.SqlClient
      const raw = yield* sql`INSERT INTO ${sql(t)} SELECT generate_series(1, ${5})`.raw
      assert.deepInclude(raw, { command: "INSERT", rowCount: 5, rows: [] })
      const values = yield* sql`SELECT 1 AS x, 2 AS x, ${"three"}::text AS y`.values
      assert.deepStrictEqual(values, [[1, 2, "three"]])
      const streamed = yield* Stream.runCollect(sql<{ id: number }>`SELECT id FROM ${sql(t)} ORDER BY id`.stream)
      assert.deepStrictEqual(Array.from(streamed), [{ id: 1 }, { id: 2 }, { id: 3 }, { id: 4 }, { id: 5 }])
    }).pipe(Effect.provide(Live())))
})

describe("paths", () => {
  it.live("a single statement takes the pool's fast path (it may join a busy connection); raw holds one of its own", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      // One connection, busy with a slow statement; waiting for a connection of one's own gives up after 300 ms.
      const slow = yield* Effect.forkChild(sql`SELECT pg_sleep(1.5), 'slow' AS tag`)
      yield* poll(h.sessions, (ss) => ss.some((s) => s.state === "active" && s.query.includes("pg_sleep(1.5)")))
      // A single statement is pipelined on the busy connection: it waits for the slow one, but not for a connection.
      const joined = yield* Effect.exit(sql<{ n: number }>`SELECT ${7}::int AS n`)
      assert.deepStrictEqual(joined, Exit.succeed([{ n: 7 }]))
      // raw needs a connection of its own, and none frees up within the acquire timeout.
      const slow2 = yield* Effect.forkChild(sql`SELECT pg_sleep(1.5), 'slow2' AS tag`)
      yield* poll(h.sessions, (ss) => ss.some((s) => s.state === "active" && s.query.includes("'slow2'")))
      const held = yield* failure(sql`SELECT 1`.raw)
      assert.strictEqual(held.reason._tag, "ConnectionError")
      assert.strictEqual(held.reason.operation, "acquireConnection")
      assert.strictEqual(EffectSql.dbError(held)?._tag, "PoolTimeout")
      yield* Fiber.join(slow)
      yield* Fiber.join(slow2)
    }).pipe(Effect.provide(Live({ maxSize: 1, acquireTimeout: "300 millis" }))))
})

describe("values", () => {
  it.live("objects are jsonb, EffectSql.json makes JSON arrays and scalars, arrays are Postgres arrays, bigint, Date, bytes", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const when = new Date("2024-02-29T12:34:56.789Z")
      const [row] = yield* sql<Record<string, unknown>>`SELECT
        ${{ a: 1, b: [true, null] }}::jsonb AS object,
        ${EffectSql.json([1, "two"])} AS json_array,
        ${EffectSql.json("scalar")} AS json_scalar,
        jsonb_typeof(${EffectSql.json(null)}) AS json_null,
        ${[1, 2, 3]}::int[] AS ints,
        ${["x", null, "y z"]}::text[] AS texts,
        ${9007199254740993n} AS big,
        ${when} AS at,
        ${new Uint8Array([0, 255])} AS bytes`
      assert.deepStrictEqual(row?.["object"], { a: 1, b: [true, null] })
      assert.deepStrictEqual(row?.["json_array"], [1, "two"])
      assert.strictEqual(row?.["json_scalar"], "scalar")
      assert.strictEqual(row?.["json_null"], "null")
      assert.deepStrictEqual(row?.["ints"], [1, 2, 3])
      assert.deepStrictEqual(row?.["texts"], ["x", null, "y z"])
      assert.strictEqual(row?.["big"], "9007199254740993")
      assert.strictEqual((row?.["at"] as Date).toISOString(), when.toISOString()) // a timestamptz arrives as a Date
      assert.deepStrictEqual([...(row?.["bytes"] as Uint8Array)], [0, 255]) // bytea arrives as a Buffer
      // A value that cannot be sent is refused before it reaches the server.
      const refused = yield* failure(sql`SELECT ${new Map([[1, 2]])} AS m`)
      assert.strictEqual(EffectSql.dbError(refused)?._tag, "InvalidInput")
    }).pipe(Effect.provide(Live())))

  it.live("Statement.dryRun renders an effect/sql statement, and the dry run returns the same rows", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const statement = sql<{ id: number; val1: number }>`SELECT id, val1 FROM ${sql("test_values")} WHERE ${
        sql.and([sql.in("id", [1, 2, 3]), sql`val1 >= ${-1}`, sql`${"it's"} <> ${"x"}`])
      } ORDER BY id`
      const text = Statement.dryRun(statement)
      assert.strictEqual(
        text,
        `SELECT id, val1 FROM "test_values" WHERE ("id" IN ('1','2','3') AND val1 >= '-1' AND 'it''s' <> 'x') ORDER BY id`
      )
      const bound = yield* statement
      const inlined = yield* sql.unsafe<{ id: number; val1: number }>(text)
      assert.deepStrictEqual(inlined, bound)
      assert.strictEqual(bound.length, 3)
      const insert = sql`INSERT INTO t ${sql.insert({ doc: EffectSql.json([1]), at: new Date(0), tags: ["a"] })}`
      assert.strictEqual(
        Statement.dryRun(insert),
        `INSERT INTO t ("doc","at","tags") VALUES ('[1]'::jsonb,'1970-01-01T00:00:00.000Z'::timestamptz,'{"a"}')`
      )
    }).pipe(Effect.provide(Live())))
})

describe("SqlSchema", () => {
  const Person = Schema.Struct({ id: Schema.Number, name: Schema.String, age: Schema.Number })

  it.live("findAll, findOne, findOneOption, findNonEmpty and void against the server", () =>
    Effect.gen(function*() {
      const t = yield* table("schema", "id int PRIMARY KEY, name text NOT NULL, age int NOT NULL")
      const sql = yield* SqlClient.SqlClient
      const insert = SqlSchema.void({
        Request: Person,
        execute: (person) => sql`INSERT INTO ${sql(t)} ${sql.insert(person)}`
      })
      yield* insert({ id: 1, name: "Ann", age: 31 })
      yield* insert({ id: 2, name: "Bob", age: 17 })
      yield* insert({ id: 3, name: "Cid", age: 45 })
      const olderThan = SqlSchema.findAll({
        Request: Schema.Number,
        Result: Person,
        execute: (age) => sql`SELECT * FROM ${sql(t)} WHERE age > ${age} ORDER BY id`
      })
      assert.deepStrictEqual(yield* olderThan(20), [{ id: 1, name: "Ann", age: 31 }, { id: 3, name: "Cid", age: 45 }])
      assert.deepStrictEqual(yield* olderThan(99), [])
      const byId = SqlSchema.findOne({
        Request: Schema.NumberFromString, // encoded to a string before execute: the server casts it
        Result: Person,
        execute: (id) => sql`SELECT * FROM ${sql(t)} WHERE id = ${id}::int`
      })
      assert.deepStrictEqual(yield* byId(2), { id: 2, name: "Bob", age: 17 })
      assert.isTrue(Cause.isNoSuchElementError(yield* failure(byId(9))))
      const maybe = SqlSchema.findOneOption({ Request: Schema.Number, Result: Person, execute: (id) => sql`SELECT * FROM ${sql(t)} WHERE id = ${id}` })
      assert.deepStrictEqual(yield* maybe(3), Option.some({ id: 3, name: "Cid", age: 45 }))
      assert.deepStrictEqual(yield* maybe(9), Option.none())
      const named = SqlSchema.findNonEmpty({
        Request: Schema.Array(Schema.String),
        Result: Person,
        execute: (names) => sql`SELECT * FROM ${sql(t)} WHERE name IN ${sql.in(names)} ORDER BY id`
      })
      assert.deepStrictEqual((yield* named(["Cid", "Ann"])).map((p) => p.id), [1, 3])
      assert.isTrue(Cause.isNoSuchElementError(yield* failure(named(["nobody"]))))
      // Rows that do not match the Result schema are a SchemaError.
      const wrong = SqlSchema.findAll({ Request: Schema.Void, Result: Person, execute: () => sql`SELECT id, name, age::text AS age FROM ${sql(t)}` })
      assert.isTrue(Schema.isSchemaError(yield* failure(wrong(undefined))))
      assert.deepStrictEqual(yield* rowsOf(`SELECT count(*)::int AS n FROM "${t}"`), [{ n: 3 }])
    }).pipe(Effect.provide(Live())))
})

describe("SqlResolver", () => {
  const Item = Schema.Struct({ id: Schema.Number, name: Schema.String, batch: Schema.Number })

  /** Every statement of a resolver takes one number from this sequence: rows of one statement share it. */
  const setup = Effect.gen(function*() {
    const t = yield* table("resolver", "id serial PRIMARY KEY, name text NOT NULL")
    const seq = `${t}_batches`
    yield* h.observe(`CREATE SEQUENCE "${seq}"`)
    created.push(seq) // DROP TABLE IF EXISTS of a sequence name does nothing: dropped with the table below
    yield* h.observe(`ALTER SEQUENCE "${seq}" OWNED BY "${t}".id`)
    yield* h.observe(`INSERT INTO "${t}" (name) SELECT 'name' || i FROM generate_series(1, 100) i`)
    return { t, seq }
  })

  it.live("ordered: concurrent inserts are one statement, results in request order", () =>
    Effect.gen(function*() {
      const { seq, t } = yield* setup
      const sql = yield* SqlClient.SqlClient
      const count = counting()
      const Insert = SqlResolver.ordered({
        Request: Schema.String,
        Result: Item,
        execute: (names) =>
          sql`INSERT INTO ${sql(t)} ${sql.insert(Arr.map(names, (name) => ({ name })))} RETURNING id, name, (SELECT nextval(${seq})::int) AS batch`
      })
      const names = Array.from({ length: 20 }, (_, i) => `new${i}`)
      const results = yield* Effect.forEach(names, (name) => SqlResolver.request(name, Insert), { concurrency: "unbounded" }).pipe(count.around)
      assert.deepStrictEqual(results.map((r) => r.name), names)
      assert.deepStrictEqual(results.map((r) => r.id), names.map((_, i) => 101 + i))
      // One statement ran: on the server (one batch number) and through the client.
      assert.deepStrictEqual(new Set(results.map((r) => r.batch)), new Set([1]))
      assert.strictEqual(count.seen.length, 1)
      assert.deepStrictEqual(yield* rowsOf(`SELECT last_value::int AS n FROM "${seq}"`), [{ n: 1 }])
      assert.deepStrictEqual(yield* rowsOf(`SELECT count(*)::int AS n FROM "${t}"`), [{ n: 120 }])
      // Fewer rows than requests: ResultLengthMismatch, for every request of the batch.
      const Select = SqlResolver.ordered({
        Request: Schema.Number,
        Result: Item,
        execute: (ids) => sql`SELECT id, name, 0 AS batch FROM ${sql(t)} WHERE id IN ${sql.in(ids)}`
      })
      const error = yield* failure(Effect.all([1, 2, 999].map((id) => SqlResolver.request(id, Select)), { concurrency: "unbounded" }))
      assert.instanceOf(error, SqlError.ResultLengthMismatch)
      if (error instanceof SqlError.ResultLengthMismatch) {
        assert.strictEqual(error.expected, 3)
        assert.strictEqual(error.actual, 2)
      }
    }).pipe(Effect.provide(Live())))

  it.live("grouped and findById: one statement for many concurrent requests, duplicates and misses included", () =>
    Effect.gen(function*() {
      const { seq, t } = yield* setup
      const sql = yield* SqlClient.SqlClient
      yield* h.observe(`INSERT INTO "${t}" (name) VALUES ('name7')`) // id 101: a second row named name7
      const count = counting()
      const ByName = SqlResolver.grouped({
        Request: Schema.String,
        RequestGroupKey: (name) => name,
        Result: Item,
        ResultGroupKey: (item) => item.name,
        execute: (names) => sql`SELECT id, name, (SELECT nextval(${seq})::int) AS batch FROM ${sql(t)} WHERE name IN ${sql.in(names)} ORDER BY id`
      })
      const byName = yield* Effect.all({
        seven: SqlResolver.request("name7", ByName),
        eight: SqlResolver.request("name8", ByName),
        sevenAgain: SqlResolver.request("name7", ByName),
        missing: Effect.flip(SqlResolver.request("nobody", ByName))
      }, { concurrency: "unbounded" }).pipe(count.around)
      assert.deepStrictEqual(byName.seven.map((i) => i.id), [7, 101])
      assert.deepStrictEqual(byName.sevenAgain.map((i) => i.id), [7, 101])
      assert.deepStrictEqual(byName.eight.map((i) => i.id), [8])
      assert.isTrue(Cause.isNoSuchElementError(byName.missing))
      assert.strictEqual(count.seen.length, 1)
      assert.deepStrictEqual(new Set([...byName.seven, ...byName.eight].map((i) => i.batch)), new Set([1]))

      const ById = SqlResolver.findById({
        Id: Schema.Number,
        Result: Item,
        ResultId: (item) => item.id,
        execute: (ids) => sql`SELECT id, name, (SELECT nextval(${seq})::int) AS batch FROM ${sql(t)} WHERE id IN ${sql.in(ids)}`
      })
      const ids = [5, 3, 5, 77, 1000, 3, 42]
      const found = yield* Effect.forEach(ids, (id) => Effect.exit(SqlResolver.request(id, ById)), { concurrency: "unbounded" }).pipe(count.around)
      assert.deepStrictEqual(found.map((e) => Exit.isSuccess(e) ? e.value.id : "missing"), [5, 3, 5, 77, "missing", 3, 42])
      assert.deepStrictEqual(new Set(found.flatMap((e) => Exit.isSuccess(e) ? [e.value.batch] : [])), new Set([2]))
      assert.strictEqual(count.seen.length, 2) // the grouped statement and this one
      const [last] = yield* rowsOf<{ n: number }>(`SELECT last_value::int AS n FROM "${seq}"`)
      assert.strictEqual(last?.n, 2)
    }).pipe(Effect.provide(Live())))

  it.live("requests inside withTransaction are batched on the transaction's connection and see its writes", () =>
    Effect.gen(function*() {
      const { t } = yield* setup
      const sql = yield* SqlClient.SqlClient
      const ById = SqlResolver.findById({
        Id: Schema.Number,
        Result: Schema.Struct({ id: Schema.Number, name: Schema.String, pid: Schema.Number }),
        ResultId: (item) => item.id,
        execute: (ids) => sql`SELECT id, name, pg_backend_pid() AS pid FROM ${sql(t)} WHERE id IN ${sql.in(ids)}`
      })
      const [inside, pid] = yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`UPDATE ${sql(t)} SET name = ${"changed"} WHERE id IN ${sql.in([1, 2])}`
        const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
        const rows = yield* Effect.forEach([1, 2, 3], (id) => SqlResolver.request(id, ById), { concurrency: "unbounded" })
        return [rows, row?.pid] as const
      }))
      assert.deepStrictEqual(inside.map((r) => r.name), ["changed", "changed", "name3"])
      assert.deepStrictEqual(new Set(inside.map((r) => r.pid)), new Set([pid]))
    }).pipe(Effect.provide(Live())))
})

describe("SqlModel", () => {
  class Person extends Model.Class<Person>("Person")({
    id: Schema.Int.pipe(Model.FieldExcept(["insert", "jsonCreate"])),
    name: Schema.String,
    age: Schema.Int,
    deletedAt: Schema.NullOr(Schema.Date).pipe(Model.FieldOnly(["select", "update"]))
  }) {}

  it.live("makeRepository: insert, findById, update, delete (soft), insertVoid, updateVoid", () =>
    Effect.gen(function*() {
      const t = yield* table("model", "id serial PRIMARY KEY, name text NOT NULL, age int NOT NULL, \"deletedAt\" timestamptz")
      const repo = yield* SqlModel.makeRepository(Person, { tableName: t, spanPrefix: "People", idColumn: "id", softDeleteColumn: "deletedAt" })
      const ann = yield* repo.insert(Person.insert.make({ name: "Ann", age: 31 }))
      assert.deepStrictEqual(ann, new Person({ id: 1, name: "Ann", age: 31, deletedAt: null }))
      yield* repo.insertVoid(Person.insert.make({ name: "Bob", age: 17 }))
      assert.deepStrictEqual(yield* repo.findById(2), new Person({ id: 2, name: "Bob", age: 17, deletedAt: null }))
      const older = yield* repo.update(Person.update.make({ ...ann, age: 32 }))
      assert.strictEqual(older.age, 32)
      yield* repo.updateVoid(Person.update.make({ id: 2, name: "Robert", age: 18, deletedAt: null }))
      yield* repo.delete(1)
      assert.isTrue(Cause.isNoSuchElementError(yield* failure(repo.findById(1))))
      assert.isTrue(Cause.isNoSuchElementError(yield* failure(repo.findById(99))))
      const server = yield* rowsOf<{ id: number; name: string; age: number; deleted: boolean }>(
        `SELECT id, name, age, "deletedAt" IS NOT NULL AS deleted FROM "${t}" ORDER BY id`
      )
      assert.deepStrictEqual(server, [{ id: 1, name: "Ann", age: 32, deleted: true }, { id: 2, name: "Robert", age: 18, deleted: false }])
    }).pipe(Effect.provide(Live())))

  it.live("makeResolvers: concurrent inserts and lookups are batched", () =>
    Effect.gen(function*() {
      const t = yield* table("model_resolvers", "id serial PRIMARY KEY, name text NOT NULL, age int NOT NULL, \"deletedAt\" timestamptz")
      const count = counting()
      const people = yield* Effect.gen(function*() {
        const resolvers = yield* SqlModel.makeResolvers(Person, { tableName: t, spanPrefix: "People", idColumn: "id" })
        const inserted = yield* Effect.forEach(
          ["a", "b", "c", "d"],
          (name, i) => SqlResolver.request(Person.insert.make({ name, age: i }), resolvers.insert),
          { concurrency: "unbounded" }
        )
        const found = yield* Effect.forEach(inserted, (p) => SqlResolver.request(p.id, resolvers.findById), { concurrency: "unbounded" })
        return found
      }).pipe(Effect.scoped, count.around)
      assert.deepStrictEqual(people.map((p) => [p.id, p.name, p.age]), [[1, "a", 0], [2, "b", 1], [3, "c", 2], [4, "d", 3]])
      assert.strictEqual(count.seen.length, 2, count.seen.join("\n"))
    }).pipe(Effect.provide(Live())))
})

describe("Migrator", () => {
  const schema = "effsql_migrator" // the migrations in test/migrations-effect-sql name it; nothing else uses it
  const migrations = (folder: string) => MigratorFileSystem.fromFileSystem(fileURLToPath(new URL(`./migrations-effect-sql/${folder}`, import.meta.url)))
  const run = Migrator.make({})
  const options = (folder: string) => ({ loader: migrations(folder), table: `${schema}.migrations` })
  const applied = Effect.map(rowsOf<{ migration_id: number; name: string }>(`SELECT migration_id, name FROM ${schema}.migrations ORDER BY 1`), (rows) =>
    rows.map((r) => [r.migration_id, r.name]))
  const items = Effect.map(rowsOf<{ name: string }>(`SELECT name FROM ${schema}.items ORDER BY id`), (rows) => rows.map((r) => r.name))

  it.live("runs a migrations folder once (a second run does nothing), and a failing run leaves nothing behind", () =>
    Effect.gen(function*() {
      yield* h.observe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
      yield* h.observe(`CREATE SCHEMA ${schema}`)
      assert.deepStrictEqual(yield* run(options("ok")), [[1, "create_items"], [2, "seed_items"]])
      assert.deepStrictEqual(yield* applied, [[1, "create_items"], [2, "seed_items"]])
      assert.deepStrictEqual(yield* items, ["first", "second"])

      // Idempotent: nothing pending, nothing run (the seed would otherwise violate the unique name).
      assert.deepStrictEqual(yield* run(options("ok")), [])
      assert.deepStrictEqual(yield* items, ["first", "second"])

      // 3 creates a table and writes; 4 writes, alters a table, then fails: the run is one transaction.
      const error = yield* failure(run(options("failing")))
      assert.strictEqual(error._tag, "MigrationError")
      if (error._tag === "MigrationError") {
        assert.strictEqual(error.kind, "Failed")
        assert.include(error.message, "4_broken")
        const cause = sqlErrorOf(error.cause)
        assert.strictEqual(cause.reason._tag, "UniqueViolation")
      }
      assert.deepStrictEqual(yield* rowsOf(`SELECT to_regclass('${schema}.notes') IS NULL AS gone`), [{ gone: true }])
      assert.deepStrictEqual(
        yield* rowsOf(`SELECT count(*)::int AS n FROM information_schema.columns WHERE table_schema = '${schema}' AND column_name = 'price'`),
        [{ n: 0 }]
      )
      assert.deepStrictEqual(yield* items, ["first", "second"])
      assert.deepStrictEqual(yield* applied, [[1, "create_items"], [2, "seed_items"]])
      // And the folder that succeeded still has nothing to do.
      assert.deepStrictEqual(yield* run(options("ok")), [])
    }).pipe(
      Effect.provide(Layer.mergeAll(Live(), NodeFileSystem.layer, NodePath.layer)),
      Effect.ensuring(h.observe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))
    ))
})

class Boom extends Data.TaggedError("Boom")<{ readonly step: string }> {}

describe("withTransaction", () => {
  const count = (t: string) => Effect.map(rowsOf<{ n: number }>(`SELECT count(*)::int AS n FROM "${t}"`), (rows) => rows[0]?.n)
  const ids = (t: string) => Effect.map(rowsOf<{ id: number }>(`SELECT id FROM "${t}" ORDER BY id`), (rows) => rows.map((r) => r.id))

  it.live("commits on success: a real transaction on one backend, invisible outside until COMMIT", () =>
    Effect.gen(function*() {
      const t = yield* table("tx_commit", "id int PRIMARY KEY")
      const sql = yield* SqlClient.SqlClient
      const pid = yield* sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 1 })}`
        const [row] = yield* sql<{ pid: number; xid: string }>`SELECT pg_backend_pid() AS pid, pg_current_xact_id()::text AS xid`
        yield* sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 2 })}`
        const [again] = yield* sql<{ pid: number; xid: string }>`SELECT pg_backend_pid() AS pid, pg_current_xact_id()::text AS xid`
        assert.deepStrictEqual(again, row) // one backend, one transaction id
        assert.strictEqual((yield* backend(row!.pid))?.state, "idle in transaction")
        assert.strictEqual(yield* count(t), 0)
        return row!.pid
      }))
      assert.deepStrictEqual(yield* ids(t), [1, 2])
      assert.strictEqual((yield* backend(pid))?.state, "idle")
    }).pipe(Effect.provide(Live())))

  it.live("rolls back on failure; the typed error comes out", () =>
    Effect.gen(function*() {
      const t = yield* table("tx_rollback", "id int PRIMARY KEY")
      const sql = yield* SqlClient.SqlClient
      const error = yield* failure(sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 1 })}`
        return yield* new Boom({ step: "after insert" })
      })))
      assert.deepStrictEqual(error, new Boom({ step: "after insert" }))
      assert.strictEqual(yield* count(t), 0)
      // A statement that fails rolls back too, with its SqlError.
      const sqlFailure = yield* failure(sql.withTransaction(Effect.andThen(sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 1 })}`, sql`SELECT 1/0`)))
      assert.strictEqual(EffectSql.sqlState(sqlErrorOf(sqlFailure)), "22012")
      assert.strictEqual(yield* count(t), 0)
    }).pipe(Effect.provide(Live())))

  it.live("nested: an inner failure rolls back its savepoint only, the outer commits", () =>
    Effect.gen(function*() {
      const t = yield* table("tx_nested", "id int PRIMARY KEY")
      const sql = yield* SqlClient.SqlClient
      const insert = (id: number) => sql`INSERT INTO ${sql(t)} ${sql.insert({ id })}`
      const inner = yield* sql.withTransaction(Effect.gen(function*() {
        yield* insert(1)
        const failed = yield* Effect.flip(sql.withTransaction(Effect.gen(function*() {
          yield* insert(2)
          yield* sql.withTransaction(insert(3)) // released into the inner savepoint, which then rolls back
          return yield* new Boom({ step: "inner" })
        })))
        yield* sql.withTransaction(insert(4)) // a savepoint that succeeds
        yield* insert(5)
        return failed
      }))
      assert.deepStrictEqual(inner, new Boom({ step: "inner" }))
      assert.deepStrictEqual(yield* ids(t), [1, 4, 5])
    }).pipe(Effect.provide(Live())))

  it.live("a statement failure caught inside a savepoint: the savepoint is undone (a defect), the transaction stays usable", () =>
    Effect.gen(function*() {
      const t = yield* table("tx_caught_sp", "id int PRIMARY KEY")
      const sql = yield* SqlClient.SqlClient
      const insert = (id: number) => sql`INSERT INTO ${sql(t)} ${sql.insert({ id })}`
      yield* sql.withTransaction(Effect.gen(function*() {
        yield* insert(1)
        const exit = yield* Effect.exit(sql.withTransaction(Effect.andThen(insert(2), Effect.ignore(insert(1)))))
        // Releasing it would commit a half-failed savepoint: SqlClient turns the TransactionAborted into a defect.
        assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause))
        yield* insert(3) // the transaction is not aborted: the savepoint was rolled back
      }))
      assert.deepStrictEqual(yield* ids(t), [1, 3])
    }).pipe(Effect.provide(Live())))

  it.live("a statement failure caught at the top level: COMMIT becomes ROLLBACK and that is an error; nothing is committed", () =>
    Effect.gen(function*() {
      const t = yield* table("tx_caught", "id int PRIMARY KEY")
      const sql = yield* SqlClient.SqlClient
      const error = yield* failure(sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 1 })}`
        yield* Effect.ignore(sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 1 })}`)
      })))
      assert.strictEqual(error.reason._tag, "UnknownError")
      assert.strictEqual(error.reason.operation, "commit")
      assert.strictEqual(EffectSql.dbError(error)?._tag, "TransactionAborted")
      assert.strictEqual(EffectSql.sqlState(error), "25P02")
      assert.strictEqual(yield* count(t), 0)
    }).pipe(Effect.provide(Live())))

  it.live("a failing COMMIT (deferred constraint) is a typed error and the connection goes back clean", () =>
    Effect.gen(function*() {
      const t = yield* table("tx_deferred", "id int, CONSTRAINT effsql_deferred_unique UNIQUE (id) DEFERRABLE INITIALLY DEFERRED")
      const sql = yield* SqlClient.SqlClient
      const pid = yield* Deferred.make<number>()
      const error = yield* failure(sql.withTransaction(Effect.gen(function*() {
        const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
        yield* Deferred.succeed(pid, row!.pid)
        yield* sql`INSERT INTO ${sql(t)} ${sql.insert([{ id: 1 }, { id: 1 }])}` // checked at COMMIT
      })))
      assert.strictEqual(error.reason._tag, "UniqueViolation")
      assert.strictEqual(error.reason.operation, "commit")
      assert.strictEqual(EffectSql.sqlState(error), "23505")
      assert.strictEqual(yield* count(t), 0)
      assert.strictEqual((yield* backend(yield* Deferred.await(pid)))?.state, "idle")
      // The one connection of the pool is usable, outside any transaction.
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(Live({ maxSize: 1 }))))

  it.live("interruption rolls back: the statement is cancelled on the server, the backend is not left idle in transaction", () =>
    Effect.gen(function*() {
      const t = yield* table("tx_interrupt", "id int PRIMARY KEY")
      const sql = yield* SqlClient.SqlClient
      const started = yield* Deferred.make<number>()
      const fiber = yield* Effect.forkChild(sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 1 })}`
        const [row] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
        yield* Deferred.succeed(started, row!.pid)
        yield* sql`SELECT pg_sleep(30)`
      })))
      const pid = yield* Deferred.await(started)
      const sleeping = yield* poll(backend(pid), (b) => b?.state === "active" && b.query.includes("pg_sleep(30)"))
      assert.strictEqual(sleeping?.state, "active")
      const interrupted = Date.now()
      yield* Fiber.interrupt(fiber)
      assert.isBelow(Date.now() - interrupted, 5000) // cancelled, not waited out
      const after = yield* backend(pid)
      assert.strictEqual(after?.state, "idle")
      assert.match(after?.query ?? "", /^ROLLBACK/)
      assert.strictEqual(yield* count(t), 0)
      // The same (only) connection is reused, outside any transaction.
      assert.deepStrictEqual(yield* sql`SELECT pg_backend_pid() AS pid`, [{ pid }])
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(Live({ maxSize: 1 }))))

  it.live("interruption of concurrent statements in a transaction cancels them: the rollback does not wait behind them", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const fiber = yield* Effect.forkChild(sql.withTransaction(
        Effect.all([sql`SELECT pg_sleep(30)`, sql`SELECT pg_sleep(30)`], { concurrency: 2, discard: true })
      ))
      const sleeping = yield* poll(h.sessions, (ss) => ss.some((s) => s.state === "active" && s.query.includes("pg_sleep(30)")))
      assert.isTrue(sleeping.some((s) => s.state === "active" && s.query.includes("pg_sleep(30)")), "a statement runs")
      const interrupted = Date.now()
      yield* Fiber.interrupt(fiber)
      // Left running, the statements would hold the ROLLBACK back until its 5 s bound.
      assert.isBelow(Date.now() - interrupted, 4000, "cancelled, not waited out")
      // Nothing runs and nothing is left in a transaction (the connection may be retired: a cancel meant for one
      // statement may still land on whatever runs next there).
      const after = yield* poll(h.sessions, (ss) => ss.every((s) => s.state === "idle"))
      assert.isTrue(after.every((s) => s.state === "idle"), JSON.stringify(after))
      assert.isTrue(yield* outsideTransaction)
    }).pipe(Effect.provide(Live({ maxSize: 1 }))))

  it.live("interruption while waiting for a connection: nothing is begun, nothing leaks", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(sql.withTransaction(Deferred.await(release)))
      const held = yield* poll(h.sessions, (ss) => ss.some((s) => s.state === "idle in transaction"))
      assert.isTrue(held.some((s) => s.state === "idle in transaction"), "the only connection is held in a transaction")
      const pool = yield* WritePool
      const waiter = yield* Effect.forkChild(sql.withTransaction(sql`SELECT 1`))
      assert.strictEqual((yield* poll(pool.stats, (s) => s.pending === 1)).pending, 1, "the waiter queues for the connection")
      yield* Fiber.interrupt(waiter)
      assert.strictEqual((yield* pool.stats).pending, 0, "the interrupted waiter left the queue")
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      const sessions = yield* poll(h.sessions, (ss) => ss.every((s) => s.state === "idle"))
      assert.deepStrictEqual(sessions.map((s) => s.state), ["idle"])
    }).pipe(Effect.provide(Live({ maxSize: 1 }))))

  it.live("SqlClient.BeginTransaction sets the isolation level; plain withTransaction is read committed", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const isolation = sql<{ iso: string }>`SELECT current_setting('transaction_isolation') AS iso`
      assert.deepStrictEqual(yield* sql.withTransaction(isolation), [{ iso: "read committed" }])
      const serializable = yield* sql.withTransaction(isolation).pipe(
        Effect.provideService(SqlClient.BeginTransaction, "BEGIN ISOLATION LEVEL SERIALIZABLE")
      )
      assert.deepStrictEqual(serializable, [{ iso: "serializable" }])
      // A bad BEGIN fails typed, runs nothing, and leaves nothing open.
      let ran = false
      const bad = yield* failure(sql.withTransaction(Effect.sync(() => {
        ran = true
      })).pipe(Effect.provideService(SqlClient.BeginTransaction, "BEGIN ISOLATION LEVEL SOMETIMES")))
      assert.strictEqual(bad.reason._tag, "SqlSyntaxError")
      assert.strictEqual(bad.reason.operation, "begin")
      assert.isFalse(ran)
      // A BeginTransaction that opens no transaction is refused: the effect would otherwise run in autocommit.
      const notABegin = yield* failure(sql.withTransaction(Effect.sync(() => {
        ran = true
      })).pipe(Effect.provideService(SqlClient.BeginTransaction, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")))
      assert.strictEqual(EffectSql.dbError(notABegin)?._tag, "InvalidInput")
      assert.isFalse(ran)
    }).pipe(Effect.provide(Live())))

  it.live("transaction control written by hand is refused, inside a transaction and out", () =>
    Effect.gen(function*() {
      const t = yield* table("tx_control", "id int PRIMARY KEY")
      const sql = yield* SqlClient.SqlClient
      for (const statement of [sql`BEGIN`, sql`COMMIT`, sql.unsafe("SAVEPOINT effect_sql_1"), sql`ROLLBACK`, sql`START TRANSACTION`.raw]) {
        const error = yield* failure(statement)
        assert.strictEqual(EffectSql.dbError(error)?._tag, "InvalidInput")
        assert.include(error.message, "sql.withTransaction")
      }
      // On a reserved connection too.
      const reserved = yield* failure(Effect.scoped(Effect.flatMap(sql.reserve, (conn) => conn.execute("BEGIN", [], undefined))))
      assert.strictEqual(EffectSql.dbError(reserved)?._tag, "InvalidInput")
      const inside = yield* failure(sql.withTransaction(Effect.gen(function*() {
        yield* sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 1 })}`
        yield* sql`COMMIT`
      })))
      assert.strictEqual(EffectSql.dbError(inside)?._tag, "InvalidInput")
      assert.strictEqual(yield* count(t), 0) // the refused COMMIT failed the transaction, which rolled back
    }).pipe(Effect.provide(Live())))

  it.live("on a reserved connection, an interrupted .values statement pipelined behind another is left to finish: no connection lost", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const pidOf = (rows: ReadonlyArray<unknown>) => (rows[0] as { pid?: number } | undefined)?.pid
      const pid = yield* Effect.scoped(Effect.gen(function*() {
        const conn = yield* sql.reserve
        const running = yield* Effect.forkChild(conn.execute("SELECT pg_sleep(0.5), pg_backend_pid() AS pid", [], undefined))
        yield* poll(h.sessions, (ss) => ss.some((s) => s.state === "active" && s.query.includes("pg_sleep(0.5)")))
        const queued = yield* Effect.forkChild(conn.executeValues("SELECT 2 AS two", []))
        yield* Effect.sleep("100 millis") // handed to the driver, pipelined behind the sleep
        yield* Fiber.interrupt(queued)
        const pid = pidOf(yield* Fiber.join(running))
        // Answered in order: once this is, the left statement has finished (the check-in retires a connection
        // with a statement still running on it).
        yield* conn.execute("SELECT 1", [], undefined)
        return pid
      }))
      // A cancel request for it would be sent once it starts and could miss it (it takes microseconds): the
      // connection would then be in doubt and retired, so the next statement would get another backend.
      assert.strictEqual(pidOf(yield* sql`SELECT pg_backend_pid() AS pid`), pid)
    }).pipe(Effect.provide(Live({ maxSize: 1 }))))

  it.live("reserve holds one backend for the scope and refuses once the scope has closed", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const conn = yield* Effect.scoped(Effect.gen(function*() {
        const conn = yield* sql.reserve
        const a = yield* conn.execute("SELECT pg_backend_pid() AS pid", [], undefined)
        yield* conn.execute("SET application_name = 'changed by the test'", [], undefined)
        const b = yield* conn.execute("SELECT pg_backend_pid() AS pid", [], undefined)
        assert.deepStrictEqual(a, b)
        return conn
      }))
      const error = yield* failure(conn.execute("SELECT 1", [], undefined))
      assert.include(error.message, "returned to the pool")
      // The session setting was reset before the connection went back.
      const [row] = yield* sql<{ name: string }>`SELECT current_setting('application_name') AS name`
      assert.strictEqual(row?.name, h.appName)
    }).pipe(Effect.provide(Live({ maxSize: 1 }))))
})

describe("read client", () => {
  it.live("refuses writes with a typed error (AuthorizationError, SQLSTATE 25006), in transactions too; reads work", () =>
    Effect.gen(function*() {
      const t = yield* table("read", "id int PRIMARY KEY")
      yield* h.observe(`INSERT INTO "${t}" VALUES (1)`)
      const read = yield* EffectSql.ReadSqlClient
      assert.deepStrictEqual(yield* read`SELECT id FROM ${read(t)}`, [{ id: 1 }])
      const refused = yield* failure(read`INSERT INTO ${read(t)} ${read.insert({ id: 2 })}`)
      assert.strictEqual(refused.reason._tag, "AuthorizationError")
      assert.strictEqual(EffectSql.dbError(refused)?._tag, "ReadOnlyTransaction")
      assert.strictEqual(EffectSql.sqlState(refused), "25006")
      const inTransaction = yield* failure(read.withTransaction(read`DELETE FROM ${read(t)}`))
      assert.strictEqual(EffectSql.sqlState(inTransaction), "25006")
      // A transaction of the read client is read-only whatever its BEGIN asks for.
      const readWrite = yield* failure(
        read.withTransaction(read`UPDATE ${read(t)} SET id = 3`).pipe(Effect.provideService(SqlClient.BeginTransaction, "BEGIN READ WRITE"))
      )
      assert.strictEqual(EffectSql.sqlState(readWrite), "25006")
      assert.strictEqual((yield* failure(read`UPDATE ${read(t)} SET id = 4`.raw)).reason._tag, "AuthorizationError")
      // Nor can a statement of its own make it read-write (refused before it is sent).
      const unlocked = yield* failure(read.withTransaction(Effect.andThen(read`SET TRANSACTION READ WRITE`, read`DELETE FROM ${read(t)}`)))
      assert.strictEqual(EffectSql.dbError(unlocked)?._tag, "ReadOnlyTransaction")
      const unlockedSession = yield* failure(Effect.andThen(
        read`SELECT set_config('default_transaction_read_only', 'off', false)`,
        read`DELETE FROM ${read(t)}`
      ))
      assert.strictEqual(EffectSql.sqlState(unlockedSession), "25006")
      assert.deepStrictEqual(yield* rowsOf(`SELECT id FROM "${t}"`), [{ id: 1 }])
      // layerRead provides SqlClient itself over the read pool.
      const viaLayer = yield* failure(SqlClient.SqlClient.use((sql) => sql`DELETE FROM ${sql(t)}`).pipe(
        Effect.provide(EffectSql.layerRead().pipe(Layer.provide(h.pools())))
      ))
      assert.strictEqual(EffectSql.sqlState(sqlErrorOf(viaLayer)), "25006")
      assert.deepStrictEqual(yield* rowsOf(`SELECT id FROM "${t}"`), [{ id: 1 }])
    }).pipe(Effect.provide(Live())))
})

describe("errors", () => {
  it.live("server errors map to SqlError reasons and keep the SQLSTATE and the DbError", () =>
    Effect.gen(function*() {
      const parent = yield* table("err_parent", "id int PRIMARY KEY")
      const t = yield* table("err", `id int CONSTRAINT effsql_err_pk PRIMARY KEY, parent int REFERENCES "${parent}"(id), n int NOT NULL CHECK (n >= 0)`)
      yield* h.observe(`INSERT INTO "${parent}" VALUES (1)`)
      const sql = yield* SqlClient.SqlClient
      const insert = (row: { id: number; parent: number | null; n: number | null }) => failure(sql`INSERT INTO ${sql(t)} ${sql.insert(row)}`)
      yield* sql`INSERT INTO ${sql(t)} ${sql.insert({ id: 1, parent: 1, n: 1 })}`
      const unique = yield* insert({ id: 1, parent: 1, n: 1 })
      assert.strictEqual(unique.reason._tag, "UniqueViolation")
      if (unique.reason._tag === "UniqueViolation") assert.strictEqual(unique.reason.constraint, "effsql_err_pk")
      assert.strictEqual(EffectSql.sqlState(unique), "23505")
      assert.isFalse(unique.isRetryable)
      for (const [row, sqlState] of [[{ id: 2, parent: 9, n: 1 }, "23503"], [{ id: 2, parent: 1, n: -1 }, "23514"], [{ id: 2, parent: 1, n: null }, "23502"]] as const) {
        const e = yield* insert(row)
        assert.strictEqual(e.reason._tag, "ConstraintError")
        assert.strictEqual(EffectSql.sqlState(e), sqlState)
      }
      const syntax = yield* failure(sql`SELEKT 1`)
      assert.strictEqual(syntax.reason._tag, "SqlSyntaxError")
      assert.strictEqual(EffectSql.dbError(syntax)?._tag, "SyntaxError")
      const divide = yield* failure(sql`SELECT 1 / ${0}::int`)
      assert.strictEqual(divide.reason._tag, "UnknownError")
      assert.strictEqual(EffectSql.sqlState(divide), "22012")
      assert.strictEqual(divide.reason.cause, EffectSql.dbError(divide))
      assert.include(divide.message, "division by zero")
      // statement_timeout
      const timeout = yield* failure(sql.withTransaction(Effect.andThen(sql`SET LOCAL statement_timeout = 50`, sql`SELECT pg_sleep(5)`)))
      assert.strictEqual(timeout.reason._tag, "StatementTimeoutError")
      assert.isTrue(timeout.isRetryable)
    }).pipe(Effect.provide(Live())))

  it.live("lock conflicts: NOWAIT is a LockTimeoutError, a concurrent update under repeatable read a SerializationError", () =>
    Effect.gen(function*() {
      const t = yield* table("err_lock", "id int PRIMARY KEY, v int NOT NULL")
      yield* h.observe(`INSERT INTO "${t}" VALUES (1, 0)`)
      const sql = yield* SqlClient.SqlClient
      const locked = yield* Deferred.make<void>()
      const done = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(sql.withTransaction(Effect.gen(function*() {
        yield* sql`UPDATE ${sql(t)} SET v = v + 1 WHERE id = ${1}`
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(done)
      })))
      yield* Deferred.await(locked)
      const nowait = yield* failure(sql.withTransaction(sql`SELECT * FROM ${sql(t)} WHERE id = ${1} FOR UPDATE NOWAIT`))
      assert.strictEqual(nowait.reason._tag, "LockTimeoutError")
      assert.strictEqual(EffectSql.sqlState(nowait), "55P03")
      // Repeatable read: take a snapshot, then update the row the holder has changed and commits.
      const conflict = yield* Effect.forkChild(sql.withTransaction(Effect.gen(function*() {
        yield* sql`SELECT v FROM ${sql(t)} WHERE id = ${1}`
        yield* Deferred.succeed(done, undefined)
        yield* sql`UPDATE ${sql(t)} SET v = v + 10 WHERE id = ${1}`
      })).pipe(Effect.provideService(SqlClient.BeginTransaction, "BEGIN ISOLATION LEVEL REPEATABLE READ")))
      yield* Fiber.join(holder)
      const serialization = sqlErrorOf(yield* failure(Fiber.join(conflict)))
      assert.strictEqual(serialization.reason._tag, "SerializationError")
      assert.strictEqual(EffectSql.sqlState(serialization), "40001")
      assert.isTrue(serialization.isRetryable)
      assert.deepStrictEqual(yield* rowsOf(`SELECT v FROM "${t}"`), [{ v: 1 }])
    }).pipe(Effect.provide(Live())))

  it("toSqlError: errors without a server SQLSTATE", () => {
    const lostBefore = EffectSql.toSqlError(new DbError.ConnectionLost({ message: "lost", sent: false }), "execute")
    assert.strictEqual(lostBefore.reason._tag, "ConnectionError")
    assert.isTrue(lostBefore.isRetryable)
    const lostAfter = EffectSql.toSqlError(new DbError.ConnectionLost({ message: "lost", sent: true }), "commit")
    assert.strictEqual(lostAfter.reason._tag, "UnknownError") // a COMMIT may have committed: not retryable
    assert.isFalse(lostAfter.isRetryable)
    const auth = EffectSql.toSqlError(new DbError.ConnectFailed({ message: "no", server: "h:5432/db", sqlState: "28P01" }), "acquireConnection")
    assert.strictEqual(auth.reason._tag, "AuthenticationError")
    assert.strictEqual(EffectSql.sqlState(auth), "28P01")
    const blank = EffectSql.toSqlError(new DbError.UniqueViolation({ message: "dup", sqlState: "23505", sqlStateClass: "23", constraint: "  " }), "execute")
    assert.strictEqual(blank.reason._tag === "UniqueViolation" ? blank.reason.constraint : undefined, "unknown")
    const closed = EffectSql.toSqlError(new DbError.PoolClosed({ message: "closed", pool: "default/write" }), "acquireConnection")
    assert.strictEqual(closed.reason._tag, "UnknownError")
    assert.strictEqual(EffectSql.sqlState(closed), undefined)
  })
})
