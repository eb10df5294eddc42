/**
 * The `sql` template and dry runs: exact dry-run text for every kind of
 * value, placeholder renumbering that leaves literals, comments and quoted
 * identifiers alone, and — against the real server — that a dry run returns
 * the same rows as the statement with bound parameters.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { type Connection, sql, Statement, WritePool } from "effect-dbpool"
import fc from "fast-check"
import { harness } from "./support.ts"

const h = harness("statement")

const dry = Statement.dryRun

/** Rows as plain objects: the driver's row lists carry the statement text and other metadata. */
const plain = (rows: ReadonlyArray<Connection.Row>): Array<Record<string, unknown>> => rows.map((row) => ({ ...row }))

/** Runs a statement with bound parameters and as its dry run; both must succeed with the same rows. */
const sameRows = (conn: Connection.Connection, statement: Statement.Statement) =>
  Effect.gen(function*() {
    const text = dry(statement)
    const bound = yield* conn.run(statement).pipe(Effect.mapError((e) => new Error(`bound ${statement.text}: ${e.message}`)))
    const inlined = yield* conn.run(Statement.text(text)).pipe(Effect.mapError((e) => new Error(`dry run ${text}: ${e.message}`)))
    assert.deepStrictEqual(plain(inlined), plain(bound), `dry run: ${text}`)
    return plain(bound)
  })

const suffix = `${process.pid}_${Date.now().toString(36)}`

/** Thrown to roll back an observer transaction, carrying what it saw. */
class RolledBack {
  readonly outcome: { readonly rows: ReadonlyArray<unknown>; readonly tables: Record<string, unknown> }
  constructor(outcome: RolledBack["outcome"]) {
    this.outcome = outcome
  }
}

describe("dry run text (no connection, no Layer)", () => {
  it.live("gDBPool's example", () =>
    Effect.sync(() => {
      assert.strictEqual(
        dry(sql`SELECT * FROM test_values WHERE id = ${123};`),
        "SELECT * FROM test_values WHERE id = '123';"
      )
    }))

  it.live("text: quotes doubled, backslashes and control characters in the E'' form, other characters as they are", () =>
    Effect.sync(() => {
      assert.strictEqual(dry(sql`SELECT ${"it's"} AS v`), "SELECT 'it''s' AS v")
      assert.strictEqual(dry(sql`SELECT ${"''"}`), "SELECT ''''''")
      assert.strictEqual(dry(sql`SELECT ${""}`), "SELECT ''")
      assert.strictEqual(dry(sql`SELECT ${"C:\\temp\\new"}`), String.raw`SELECT E'C:\\temp\\new'`)
      assert.strictEqual(dry(sql`SELECT ${"it's \\"}`), String.raw`SELECT E'it''s \\'`)
      assert.strictEqual(dry(sql`SELECT ${"Grüße, 世界 😀 \u00a0\u2028"}`), "SELECT 'Grüße, 世界 😀 \u00a0\u2028'")
      assert.strictEqual(dry(sql`SELECT ${"a\nb\tc\rd\u0001\u001f"}`), String.raw`SELECT E'a\012b\011c\015d\001\037'`)
      // Octal escapes are always three digits, so a following digit stays a digit.
      assert.strictEqual(dry(sql`SELECT ${"\u00017"}`), String.raw`SELECT E'\0017'`)
      // DEL is not a control character for the lexer.
      assert.strictEqual(dry(sql`SELECT ${"\u007f"}`), "SELECT '\u007f'")
    }))

  it.live("null and undefined are NULL", () =>
    Effect.sync(() => {
      assert.strictEqual(dry(sql`SELECT ${null} AS a, ${undefined} AS b`), "SELECT NULL AS a, NULL AS b")
    }))

  it.live("numbers: untyped quoted literals of the text postgres.js sends (the server infers the type), so no -- comment can form", () =>
    Effect.sync(() => {
      assert.strictEqual(dry(sql`SELECT ${0}, ${42}, ${1.5}, ${1e21}, ${5e-324}, ${-0}`), "SELECT '0', '42', '1.5', '1e+21', '5e-324', '0'")
      assert.strictEqual(dry(sql`SELECT 1-${-1}`), "SELECT 1-'-1'")
      assert.strictEqual(dry(sql`SELECT ${NaN}::float8, ${Infinity}::float8, ${-Infinity}::float8`), "SELECT 'NaN'::float8, 'Infinity'::float8, '-Infinity'::float8")
    }))

  it.live("a value that cannot be sent makes the dry run throw what the run refuses (InvalidInput), at any depth of an array", () =>
    Effect.sync(() => {
      const unsendable: ReadonlyArray<unknown> = [new Map(), [new Map()], [[() => "secret"]], new Date(NaN), [new Date(NaN)], sql.json(undefined)]
      for (const value of unsendable) {
        // Statement.Value excludes these; a caller without types (or effect/sql's compile) can still pass them.
        assert.throws(() => dry(Statement.text("SELECT $1", [value as Statement.Value])), /cannot be sent/)
      }
    }))

  it.live("bigint is int8, booleans are TRUE/FALSE, a Date is an ISO timestamptz", () =>
    Effect.sync(() => {
      assert.strictEqual(dry(sql`SELECT ${9007199254740993n}`), "SELECT '9007199254740993'::int8")
      assert.strictEqual(dry(sql`SELECT 1-${-9223372036854775808n}`), "SELECT 1-'-9223372036854775808'::int8")
      assert.strictEqual(dry(sql`SELECT ${true}, ${false}`), "SELECT TRUE, FALSE")
      assert.strictEqual(dry(sql`SELECT ${new Date("2024-02-29T12:34:56.789Z")}`), "SELECT '2024-02-29T12:34:56.789Z'::timestamptz")
    }))

  it.live("JSON: plain objects and sql.json values are jsonb", () =>
    Effect.sync(() => {
      assert.strictEqual(
        dry(sql`SELECT ${{ a: 1, b: "it's", c: [true, null] }}`),
        `SELECT '{"a":1,"b":"it''s","c":[true,null]}'::jsonb`
      )
      // JSON escapes are backslashes: the E'' form keeps them.
      assert.strictEqual(dry(sql`SELECT ${{ s: "line\nbreak" }}`), String.raw`SELECT E'{"s":"line\\nbreak"}'::jsonb`)
      assert.strictEqual(dry(sql`SELECT ${sql.json([1, "two", null])}`), `SELECT '[1,"two",null]'::jsonb`)
      assert.strictEqual(dry(sql`SELECT ${sql.json("it's")}`), `SELECT '"it''s"'::jsonb`)
      assert.strictEqual(dry(sql`SELECT ${sql.json(42)}`), `SELECT '42'::jsonb`)
    }))

  it.live("arrays: Postgres array literals, nested, with NULL, with quotes and backslashes; typed elements cast", () =>
    Effect.sync(() => {
      assert.strictEqual(dry(sql`SELECT ${[1, 2, 3]}`), "SELECT '{1,2,3}'")
      assert.strictEqual(dry(sql`SELECT ${[]}`), "SELECT '{}'")
      assert.strictEqual(dry(sql`SELECT ${[[1, 2], [3, null]]}`), "SELECT '{{1,2},{3,NULL}}'")
      assert.strictEqual(dry(sql`SELECT ${["a", null, "NULL", ""]}`), `SELECT '{"a",NULL,"NULL",""}'`)
      assert.strictEqual(
        dry(sql`SELECT ${["say \"hi\"", "it's", "back\\slash", "a,b{c}"]}`),
        String.raw`SELECT E'{"say \\"hi\\"","it''s","back\\\\slash","a,b{c}"}'`
      )
      assert.strictEqual(dry(sql`SELECT ${[true, false]}`), "SELECT '{true,false}'::bool[]")
      assert.strictEqual(dry(sql`SELECT ${[null, 1n, 2n]}`), "SELECT '{NULL,1,2}'::int8[]")
      assert.strictEqual(dry(sql`SELECT ${[new Date("2024-02-29T12:34:56.789Z")]}`), `SELECT '{"2024-02-29T12:34:56.789Z"}'::timestamptz[]`)
      assert.strictEqual(dry(sql`SELECT ${[new Uint8Array([1, 255])]}`), String.raw`SELECT E'{"\\\\x01ff"}'::bytea[]`)
    }))

  it.live("bytea: hex in the E'' form", () =>
    Effect.sync(() => {
      assert.strictEqual(dry(sql`SELECT ${new Uint8Array([0, 1, 255])}`), String.raw`SELECT E'\\x0001ff'::bytea`)
      assert.strictEqual(dry(sql`SELECT ${new Uint8Array([])}`), String.raw`SELECT E'\\x'::bytea`)
      assert.strictEqual(dry(sql`SELECT ${Buffer.from("hi")}`), String.raw`SELECT E'\\x6869'::bytea`)
      // A view on part of a buffer shows only its own bytes.
      assert.strictEqual(dry(sql`SELECT ${new Uint8Array([9, 1, 2, 9]).subarray(1, 3)}`), String.raw`SELECT E'\\x0102'::bytea`)
    }))

  it.live("sql.id quotes identifiers, doubling embedded double quotes; qualified names join with dots", () =>
    Effect.sync(() => {
      assert.strictEqual(sql.id("val1").text, `"val1"`)
      assert.strictEqual(dry(sql`SELECT ${sql.id("val1")} FROM ${sql.id("public", "test_values")}`), `SELECT "val1" FROM "public"."test_values"`)
      assert.strictEqual(sql.id(`we"ird "" name`).text, `"we""ird """" name"`)
      assert.deepStrictEqual(sql.id("x").params, [])
      assert.throws(() => sql.id(""), RangeError)
      assert.throws(() => sql.id("a\u0000b"), RangeError)
    }))

  it.live("sql.in binds every element; an empty list is an empty subquery; a type casts both", () =>
    Effect.sync(() => {
      const s = sql`SELECT * FROM test_values WHERE id IN ${sql.in([1, 2, 3])} AND val1 > ${0}`
      assert.strictEqual(s.text, "SELECT * FROM test_values WHERE id IN ($1, $2, $3) AND val1 > $4")
      assert.deepStrictEqual(s.params, [1, 2, 3, 0])
      assert.strictEqual(dry(s), "SELECT * FROM test_values WHERE id IN ('1', '2', '3') AND val1 > '0'")
      assert.strictEqual(sql.in([]).text, "(SELECT NULL WHERE FALSE)")
      assert.strictEqual(sql.in([], "int4").text, "(SELECT NULL::int4 WHERE FALSE)")
      assert.strictEqual(sql.in([1, 2], "int4").text, "($1::int4, $2::int4)")
      assert.strictEqual(dry(sql`SELECT ${"x"} IN ${sql.in(["a", "it's"])}`), "SELECT 'x' IN ('a', 'it''s')")
    }))

  it.live("sql.join joins statements and values, renumbering", () =>
    Effect.sync(() => {
      const conditions = sql.join([sql`val1 > ${10}`, sql`val2 < ${20}`], " AND ")
      assert.strictEqual(conditions.text, "val1 > $1 AND val2 < $2")
      assert.deepStrictEqual(conditions.params, [10, 20])
      const s = sql`SELECT * FROM test_values WHERE id > ${5} AND ${conditions}`
      assert.strictEqual(s.text, "SELECT * FROM test_values WHERE id > $1 AND val1 > $2 AND val2 < $3")
      assert.deepStrictEqual(s.params, [5, 10, 20])
      assert.strictEqual(dry(s), "SELECT * FROM test_values WHERE id > '5' AND val1 > '10' AND val2 < '20'")
      assert.strictEqual(sql.join([1, "a", null]).text, "$1, $2, $3")
      assert.strictEqual(dry(sql.join([1, "a", null])), "'1', 'a', NULL")
      assert.strictEqual(sql.join([]).text, "")
      assert.strictEqual(dry(sql.join([sql.id("a"), sql.id("b")], " || ")), `"a" || "b"`)
    }))

  it.live("nested statements renumber placeholders, past $9 too", () =>
    Effect.sync(() => {
      const a = sql`val1 > ${10}`
      const b = sql`val2 < ${20} AND ${a}`
      assert.strictEqual(b.text, "val2 < $1 AND val1 > $2")
      const s = sql`SELECT ${"x"} AS x FROM test_values WHERE id = ${5} AND ${b} AND id <> ${6}`
      assert.strictEqual(s.text, "SELECT $1 AS x FROM test_values WHERE id = $2 AND val2 < $3 AND val1 > $4 AND id <> $5")
      assert.deepStrictEqual(s.params, ["x", 5, 20, 10, 6])
      // The same fragment twice gets two sets of placeholders.
      const p = sql`${7}`
      assert.strictEqual(sql`SELECT ${p} + ${p}`.text, "SELECT $1 + $2")
      // $1 → $2 must not touch $10 → $11 (and so on).
      const twelve = sql.join(Array.from({ length: 12 }, (_, i) => sql`${i + 1}`))
      assert.strictEqual(twelve.text, "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12")
      const shifted = sql`SELECT ${0}, ${twelve}`
      assert.strictEqual(shifted.text, "SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13")
      assert.strictEqual(dry(shifted), "SELECT '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12'")
      // A Statement.text fragment with its own numbering, used out of order.
      const t = sql`SELECT ${1}, ${Statement.text("$2 + $1", [10, 20])}`
      assert.strictEqual(t.text, "SELECT $1, $3 + $2")
      assert.deepStrictEqual(t.params, [1, 10, 20])
      assert.strictEqual(dry(t), "SELECT '1', '20' + '10'")
    }))

  it.live("$1 inside literals, comments, dollar quotes and quoted identifiers is neither renumbered nor replaced", () =>
    Effect.sync(() => {
      assert.strictEqual(dry(nestedTricky.outer), nestedTricky.expectedDryRun)
      assert.strictEqual(nestedTricky.outer.text, nestedTricky.expectedText)
      // The same at top level of a Statement.text.
      assert.strictEqual(dry(Statement.text("SELECT '$1', $1, \"$1\", $$$1$$ -- $1", ["x"])), "SELECT '$1', 'x', \"$1\", $$$1$$ -- $1")
      // A dollar quote's tag is any identifier (non-ASCII, longer than 64 characters); a line comment ends at \r too.
      const long = "t".repeat(70)
      assert.strictEqual(sql`SELECT ${"o"} AS a, ${Statement.text("$é$ $1 $é$ AS b", [])}`.text, "SELECT $1 AS a, $é$ $1 $é$ AS b")
      assert.strictEqual(sql`SELECT ${"o"}, ${Statement.text(`$${long}$ $1 $${long}$`, [])}`.text, `SELECT $1, $${long}$ $1 $${long}$`)
      assert.strictEqual(
        sql`SELECT ${"o"} AS a, ${Statement.text("1 AS one -- note\r, $1 AS b", [42n])}`.text,
        "SELECT $1 AS a, 1 AS one -- note\r, $2 AS b"
      )
      assert.strictEqual(dry(Statement.text("SELECT 1 AS a -- note\r, $1 AS b", ["x"])), "SELECT 1 AS a -- note\r, 'x' AS b")
    }))

  it.live("Statement.text with $n placeholders dry-runs; a placeholder without a value stays", () =>
    Effect.sync(() => {
      assert.strictEqual(
        dry(Statement.text("SELECT * FROM test_values WHERE id = $1 AND val1 <> $2", [123, -1])),
        "SELECT * FROM test_values WHERE id = '123' AND val1 <> '-1'"
      )
      assert.strictEqual(dry(Statement.text("SELECT $2::text || $1::text", ["a", "b"])), "SELECT 'b'::text || 'a'::text")
      assert.strictEqual(dry(Statement.text("SELECT $1, $3", [1, 2])), "SELECT '1', $3")
      assert.strictEqual(dry(Statement.text("SELECT 1")), "SELECT 1")
    }))
})

/**
 * A nested statement whose text holds `$1` where it is not a placeholder:
 * string literals (standard, doubled quotes, E'' with an escaped quote,
 * lowercase e''), a quoted identifier, dollar-quoted strings, line and
 * nested block comments.
 */
const nestedTricky = (() => {
  const innerText = String.raw`SELECT '$1' AS a, $1::text AS b, "$1".x AS c, $$ $1 $$ AS d, $t$ $1 $t$ AS e, E'\' $1' AS f, e'\\' AS f2, 'it''s $1' AS f3, /* $1 /* nested $1 */ $1 */ $2::text AS g -- $1
FROM (SELECT 'q' AS x) AS "$1"`
  const inner = Statement.text(innerText, ["p1", "p2"])
  const outer = sql`SELECT ${"outer"}::text AS o, s.* FROM (${inner}) AS s`
  // Replacement functions: a replacement string would give `$` patterns a meaning.
  const shiftedInner = innerText.replace("$1::text AS b", () => "$2::text AS b").replace("$2::text AS g", () => "$3::text AS g")
  return {
    outer,
    expectedText: `SELECT $1::text AS o, s.* FROM (${shiftedInner}) AS s`,
    expectedDryRun: `SELECT 'outer'::text AS o, s.* FROM (${
      innerText.replace("$1::text AS b", () => "'p1'::text AS b").replace("$2::text AS g", () => "'p2'::text AS g")
    }) AS s`,
    expectedRow: { o: "outer", a: "$1", b: "p1", c: "q", d: " $1 ", e: " $1 ", f: "' $1", f2: "\\", f3: "it's $1", g: "p2" }
  }
})()

describe("dry runs against the server", () => {
  it.live("examples return the same rows bound and dry-run", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          const [gdb] = yield* sameRows(conn, sql`SELECT * FROM test_values WHERE id = ${123};`)
          assert.strictEqual(gdb?.["id"], 123)
          const [neg] = yield* sameRows(conn, sql`SELECT 1-${-1} AS v, 2*${-3} AS w`)
          assert.deepStrictEqual(neg, { v: 2, w: -6 })
          // Numbers are untyped in both forms: the context decides (a typed literal would make these fail or differ).
          const [untyped] = yield* sameRows(conn, sql`SELECT ${1} || ${2} AS cat, ${5} = '5.0' AS eq, coalesce(${1}, 'x') AS c, ${1e21}::text AS big`)
          assert.deepStrictEqual(untyped, { cat: "12", eq: false, c: "1", big: "1e+21" })
          const [tricky] = yield* sameRows(conn, nestedTricky.outer)
          assert.deepStrictEqual(tricky, nestedTricky.expectedRow)
          yield* sameRows(conn, sql`SELECT ${"it's \\ \n \u0001 Grüße 😀"}::text AS v, ${null}::int AS n, ${undefined}::text AS u`)
          yield* sameRows(conn, sql`SELECT ${NaN}::float8 AS a, ${Infinity}::float8 AS b, ${-Infinity}::float8 AS c, ${1e21}::numeric AS d`)
          yield* sameRows(conn, sql`SELECT ${9007199254740993n} AS a, 1-${-5n} AS b, ${-9223372036854775808n} AS b2, ${true} AS c, ${false} AS d`)
          yield* sameRows(conn, sql`SELECT ${new Date("2024-02-29T12:34:56.789Z")} AS v`)
          yield* sameRows(conn, sql`SELECT ${{ a: 1, b: "it's", s: "line\nbreak \\ \"q\"", c: [true, null] }} AS v`)
          yield* sameRows(conn, sql`SELECT ${sql.json([1, "two", null])} AS a, ${sql.json("it's")} AS b, ${sql.json(42)} AS c`)
          yield* sameRows(conn, sql`SELECT ${[[1, 2], [3, null]]}::int[]::text AS a, ${["say \"hi\"", "it's", "back\\slash", "a,b{c}", null, "NULL"]}::text[]::text AS b`)
          yield* sameRows(conn, sql`SELECT ${new Uint8Array([0, 1, 255])} AS a, ${new Uint8Array([9, 1, 2, 9]).subarray(1, 3)} AS b`)
          const [id] = yield* sameRows(conn, sql`SELECT 1 AS ${sql.id(`we"ird "" name`)}`)
          assert.deepStrictEqual(id, { [`we"ird "" name`]: 1 })
          const [ids] = yield* sameRows(
            conn,
            sql`SELECT array_agg(id ORDER BY id)::text AS ids FROM test_values WHERE id IN ${sql.in([1, 2, 3])} AND ${sql.join([sql`val1 >= ${0}`, sql`val2 >= ${0}`], " AND ")}`
          )
          assert.deepStrictEqual(ids, { ids: "{1,2,3}" })
          const [text] = yield* sameRows(conn, Statement.text("SELECT $2::text || $1::text AS v", ["a", "b"]))
          assert.deepStrictEqual(text, { v: "ba" })
        })
      )
    }).pipe(Effect.provide(h.pools())))

  it.live("an empty sql.in matches nothing with IN and everything with NOT IN, NULL included", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          for (const [column, empty] of [[sql.id("id"), sql.in([], "int4")], [sql`id::text`, sql.in([])]] as const) {
            const [counts] = yield* sameRows(
              conn,
              sql`SELECT count(*) FILTER (WHERE ${column} IN ${empty})::int AS matched,
                         count(*) FILTER (WHERE ${column} NOT IN ${empty})::int AS unmatched,
                         count(*)::int AS total
                  FROM test_values`
            )
            assert.strictEqual(counts?.["matched"], 0)
            assert.isAbove(Number(counts?.["total"]), 0)
            assert.strictEqual(counts?.["unmatched"], counts?.["total"])
          }
          // Unlike `IN (NULL)`, the empty list decides even for NULL.
          const [nulls] = yield* sameRows(
            conn,
            sql`SELECT (NULL::int4 IN ${sql.in([], "int4")}) AS a, (NULL::int4 NOT IN ${sql.in([], "int4")}) AS b, (${"x"} NOT IN ${sql.in([])}) AS c`
          )
          assert.deepStrictEqual(nulls, { a: false, b: true, c: true })
          const [typed] = yield* sameRows(conn, sql`SELECT count(*)::int AS n FROM test_values WHERE id IN ${sql.in([1, 2, 3], "int4")}`)
          assert.deepStrictEqual(typed, { n: 3 })
        })
      )
    }).pipe(Effect.provide(h.pools())))

  it.live("SQL injection through values and identifiers runs as harmless data, whatever the protocol and string settings", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const victim = `dbpool_stmt_victim_${suffix}`
      yield* Effect.acquireRelease(h.observe(`CREATE TABLE ${victim} (x int)`), () => h.observe(`DROP TABLE IF EXISTS ${victim}`))
      const valuePayloads = [
        "'); DROP TABLE test_values; --",
        `'; DROP TABLE ${victim}; --`,
        `\\'; DROP TABLE ${victim}; --`,
        `\\\\'; DROP TABLE ${victim}; --`,
        `\\\\\\'); DROP TABLE ${victim}; --`,
        `$$; DROP TABLE ${victim}; --`,
        `*/; DROP TABLE ${victim}; /*`,
        `"}'; DROP TABLE ${victim}; --`,
        `\n'; DROP TABLE ${victim}; --\n`
      ]
      const identifierPayloads = [`x"; DROP TABLE ${victim}; --`, `x""; DROP TABLE ${victim}; --`]
      // Placeholders the lexer must skip inside the statement's own text: in a dollar quote whose tag is any identifier
      // (non-ASCII, long), and after a line comment a carriage return ends. The value tries to close that quote.
      const quotes = ["$é$", `$${"t".repeat(70)}$`]

      /**
       * Runs the dry-run text in the simple query protocol, which runs
       * several statements: an escape that failed would run the DROP here.
       * Always rolled back, and run before the pool runs the same text.
       */
      const simple = (text: string, settings: string) =>
        Effect.promise(() =>
          h.observer.begin(async (tx) => {
            await tx.unsafe(settings)
            const results = await tx.unsafe(text).simple()
            const [tables] = await tx.unsafe(
              `SELECT to_regclass('test_values') IS NOT NULL AS test_values, to_regclass('${victim}') IS NOT NULL AS victim`
            )
            throw new RolledBack({ rows: Array.from(results, (r) => ({ ...r })), tables: { ...tables } })
          }).then(
            () => ({ rows: [], tables: { error: "not rolled back" } }),
            (e: unknown) => (e instanceof RolledBack ? e.outcome : { rows: [], tables: { error: String(e) } })
          )
        )

      for (const p of valuePayloads) {
        const statement = sql`SELECT ${p}::text AS v, (${[p, null]}::text[])[1] AS a1, ${{ p }}::jsonb ->> 'p' AS j`
        const text = dry(statement)
        for (const settings of ["SET LOCAL standard_conforming_strings = on", "SET LOCAL standard_conforming_strings = off"]) {
          const result = yield* simple(text, settings)
          assert.deepStrictEqual(result, { rows: [{ v: p, a1: p, j: p }], tables: { test_values: true, victim: true } }, `${settings}: ${text}`)
        }
        const rows = yield* pool.run(Statement.text(text))
        assert.deepStrictEqual(plain(rows), [{ v: p, a1: p, j: p }], text)
      }
      for (const quote of quotes) {
        const p = `${quote}; DROP TABLE ${victim}; --`
        const text = dry(Statement.text(`SELECT ${quote} value: $1 ${quote} AS label, $1::text AS v`, [p]))
        const result = yield* simple(text, "SET LOCAL standard_conforming_strings = on")
        assert.deepStrictEqual(result, { rows: [{ label: " value: $1 ", v: p }], tables: { test_values: true, victim: true } }, text)
      }
      const afterComment = Statement.text("SELECT ' $1 ' AS label -- note\r, $1::text AS v", [`'; DROP TABLE ${victim}; --`])
      assert.deepStrictEqual(plain(yield* pool.run(afterComment)), [{ label: " $1 ", v: `'; DROP TABLE ${victim}; --` }])
      assert.deepStrictEqual(plain(yield* pool.run(Statement.text(dry(afterComment)))), plain(yield* pool.run(afterComment)))
      for (const p of identifierPayloads) {
        const text = dry(sql`SELECT ${1}::int AS ${sql.id(p)}`)
        const result = yield* simple(text, "SET LOCAL standard_conforming_strings = off")
        assert.deepStrictEqual(result, { rows: [{ [p]: 1 }], tables: { test_values: true, victim: true } }, text)
        assert.deepStrictEqual(plain(yield* pool.run(Statement.text(text))), [{ [p]: 1 }], text)
      }
      const [left] = yield* h.observe<{ test_values: boolean; victim: boolean }>(
        `SELECT to_regclass('test_values') IS NOT NULL AS test_values, to_regclass('${victim}') IS NOT NULL AS victim`
      )
      assert.deepStrictEqual(left, { test_values: true, victim: true })
    }).pipe(Effect.scoped, Effect.provide(h.pools())))

  it.live("property: for generated values of every kind, the dry run returns the same rows as the bound statement", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const noNul = (s: string) => s.replaceAll("\u0000", "")
      const tricky = fc.constantFrom("'", "\\", "\"", "$", "$$", "-", "--", "/*", "*/", "\n", "\r", "\t", "\u0001", "\u001f", "\u007f", "é", "😀", "E", "{", "}", ",", " ", "0", "7", "NULL")
      const text = fc.oneof(
        fc.string({ unit: "binary", maxLength: 30 }).map(noNul),
        fc.string({ unit: tricky, maxLength: 20 }),
        fc.string({ unit: "binary-ascii", maxLength: 30 }).map(noNul)
      )
      const jsonNoNul = (v: unknown) => !JSON.stringify(v).includes("\\u0000")
      const kinds: ReadonlyArray<{ readonly name: string; readonly cast: string; readonly values: fc.Arbitrary<Statement.Value> }> = [
        { name: "text", cast: "text", values: text },
        { name: "integer", cast: "int4", values: fc.integer() },
        { name: "safe integer", cast: "numeric", values: fc.maxSafeInteger() },
        { name: "double", cast: "float8", values: fc.double() },
        { name: "double as numeric", cast: "numeric", values: fc.double() },
        { name: "bigint", cast: "int8", values: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }) },
        { name: "boolean", cast: "bool", values: fc.boolean() },
        {
          name: "date",
          cast: "timestamptz",
          values: fc.date({ min: new Date("0001-01-01T00:00:00.000Z"), max: new Date("9999-12-31T23:59:59.999Z"), noInvalidDate: true })
        },
        {
          name: "JSON object",
          cast: "jsonb",
          values: fc.dictionary(fc.string({ unit: "binary", maxLength: 8 }), fc.jsonValue({ stringUnit: "binary", maxDepth: 3 }), { maxKeys: 5 })
            .filter(jsonNoNul)
        },
        { name: "sql.json value", cast: "jsonb", values: fc.jsonValue({ maxDepth: 3 }).filter((v) => v !== null && jsonNoNul(v)).map(sql.json) },
        { name: "int array", cast: "int4[]", values: fc.array(fc.option(fc.integer(), { nil: null }), { maxLength: 8 }) },
        {
          name: "2-d int array",
          cast: "int4[]",
          values: fc.integer({ min: 1, max: 3 }).chain((n) =>
            fc.array(fc.array(fc.option(fc.integer(), { nil: null }), { minLength: n, maxLength: n }), { minLength: 1, maxLength: 3 })
          )
        },
        { name: "text array", cast: "text[]", values: fc.array(fc.option(text, { nil: null }), { maxLength: 6 }) },
        { name: "bytea", cast: "bytea", values: fc.uint8Array({ maxLength: 40 }) }
      ]
      for (const kind of kinds) {
        // On one connection per kind; compared as the driver returns them and as the server's text.
        yield* pool.interaction((conn) =>
          Effect.tryPromise({
            try: () =>
              fc.assert(
                fc.asyncProperty(kind.values, (v) =>
                  Effect.runPromise(
                    sameRows(conn, sql`SELECT x AS v, x::text AS t FROM (SELECT ${v}${Statement.text(`::${kind.cast}`)}) AS s(x)`)
                  ).then(() => undefined)),
                { numRuns: 100 }
              ),
            catch: (e) => new Error(`${kind.name}: ${e instanceof Error ? e.message : String(e)}`)
          })
        )
      }
    }).pipe(Effect.provide(h.pools())))
})

describe("values the bound path must handle like the dry run", () => {
  it.live("arrays of bigint, boolean, Date and bytea bind as arrays", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          const [row] = yield* sameRows(
            conn,
            sql`SELECT ${[1n, null, 2n]}::int8[]::text AS a, ${[true, false]}::bool[]::text AS b,
                       ${[new Date("2024-02-29T12:34:56.789Z")]}::timestamptz[]::text AS c, ${[new Uint8Array([1, 255])]}::bytea[]::text AS d`
          )
          assert.deepStrictEqual(row, { a: "{1,NULL,2}", b: "{t,f}", c: "{\"2024-02-29 12:34:56.789+00\"}", d: String.raw`{"\\x01ff"}` })
        })
      )
    }).pipe(Effect.provide(h.pools())))

  it.live("sql.json(null) is the JSON null, not SQL NULL", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      yield* pool.interaction((conn) =>
        Effect.gen(function*() {
          const [row] = yield* sameRows(conn, sql`SELECT jsonb_typeof(${sql.json(null)}) AS t`)
          assert.deepStrictEqual(row, { t: "null" })
        })
      )
    }).pipe(Effect.provide(h.pools())))

  it.live("NULL elements of result arrays come back as null", () =>
    Effect.gen(function*() {
      const pool = yield* WritePool
      const rows = yield* pool.run(
        sql`SELECT ${[1, null]}::int4[] AS a, ${["x", null, "NULL"]}::text[] AS b, '{t,NULL}'::bool[] AS c, '{NULL}'::jsonb[] AS d`
      )
      assert.deepStrictEqual(plain(rows), [{ a: [1, null], b: ["x", null, "NULL"], c: [true, null], d: [null] }])
    }).pipe(Effect.provide(h.pools())))
})
