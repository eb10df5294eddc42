/**
 * Statements: SQL text with its parameters, built safely and composable.
 *
 * A `Statement` is a plain value: building one runs nothing. Run it with a
 * pool (`pool.run(statement)`), a connection or a partial transaction; show
 * it with {@link dryRun}.
 *
 * @since 0.1.0
 */
import { Json, literal, quoteIdentifier } from "./internal/literal.ts"
import { mapPlaceholders } from "./internal/sqlText.ts"

const TypeId: unique symbol = Symbol.for("effect-dbpool/Statement")

/**
 * A value that can be bound as a parameter. Arrays become Postgres arrays,
 * plain objects and `sql.json(...)` become `jsonb`, `Uint8Array` becomes
 * `bytea`, `bigint` becomes `int8`, `Date` becomes `timestamptz`.
 *
 * @example
 * ```ts
 * import { Statement } from "effect-dbpool"
 *
 * const params: ReadonlyArray<Statement.Value> = [42, "text", 1n, new Date(), [1, 2, 3], { tags: ["a"] }]
 * Statement.text("INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6)", params)
 * ```
 *
 * @since 0.1.0
 */
export type Value =
  | string
  | number
  | bigint
  | boolean
  | null
  | undefined
  | Date
  | Uint8Array
  | Json
  | { readonly [key: string]: unknown }
  | ReadonlyArray<Value>

/**
 * SQL text with `$1`…`$n` placeholders and the values bound to them.
 *
 * @example
 * ```ts
 * import { sql } from "effect-dbpool"
 *
 * const byId = (id: number) => sql`SELECT * FROM test_values WHERE id = ${id}`
 * byId(123).text   // "SELECT * FROM test_values WHERE id = $1"
 * byId(123).params // [123]
 * ```
 *
 * @since 0.1.0
 */
export interface Statement {
  readonly [TypeId]: typeof TypeId
  readonly text: string
  readonly params: ReadonlyArray<Value>
}

/**
 * Is this value a {@link Statement}?
 *
 * @example
 * ```ts
 * import { sql, Statement } from "effect-dbpool"
 *
 * Statement.isStatement(sql`SELECT 1`) // true
 * ```
 *
 * @since 0.1.0
 */
export const isStatement = (u: unknown): u is Statement => typeof u === "object" && u !== null && TypeId in u

const make = (text: string, params: ReadonlyArray<Value>): Statement => ({ [TypeId]: TypeId, text, params })

/**
 * A statement from SQL text with `$1`…`$n` placeholders and their values:
 * gDBPool's `run(sql, params)` form. The text is trusted; the values are
 * always bound, never spliced in.
 *
 * @example
 * ```ts
 * import { Statement } from "effect-dbpool"
 *
 * Statement.text("SELECT * FROM test_values WHERE id = $1", [123])
 * ```
 *
 * @since 0.1.0
 */
export const text = (sqlText: string, params: ReadonlyArray<Value> = []): Statement => make(sqlText, params)

const append = (parts: Array<string>, params: Array<Value>, value: unknown): void => {
  if (isStatement(value)) {
    const offset = params.length
    parts.push(offset === 0 ? value.text : mapPlaceholders(value.text, (n) => `$${n + offset}`))
    params.push(...value.params)
  } else {
    params.push(value as Value) // checked when the statement runs: an unsupported value fails with InvalidInput
    parts.push(`$${params.length}`)
  }
}

/**
 * The text of a template whose values are all plain values depends only on its
 * call site's strings, which JavaScript keeps as one frozen object per site: built
 * once, the same string then reaches every cache keyed by text (the classifier,
 * the driver's prepared statements) without being joined and hashed again.
 */
const plainTexts = new WeakMap<TemplateStringsArray, string>()

const template = (strings: TemplateStringsArray, ...values: Array<unknown>): Statement => {
  let plain = true
  for (let i = 0; i < values.length; i++) {
    if (isStatement(values[i])) {
      plain = false
      break
    }
  }
  // A hand-made strings array (not frozen) may change: only a call site's own is cached.
  if (plain && Object.isFrozen(strings)) {
    let text = plainTexts.get(strings)
    if (text === undefined) {
      text = strings[0]!
      for (let i = 1; i < strings.length; i++) text += `$${i}${strings[i]!}`
      plainTexts.set(strings, text)
    }
    return make(text, values as Array<Value>) // checked when the statement runs, as append's values are
  }
  const parts: Array<string> = [strings[0]!]
  const params: Array<Value> = []
  for (let i = 0; i < values.length; i++) {
    append(parts, params, values[i])
    parts.push(strings[i + 1]!)
  }
  return make(parts.join(""), params)
}

/**
 * Joins statements (or values, bound as parameters) with a separator.
 *
 * @example
 * ```ts
 * import { sql } from "effect-dbpool"
 *
 * const conditions = [sql`val1 > ${10}`, sql`val2 < ${20}`]
 * sql`SELECT * FROM test_values WHERE ${sql.join(conditions, " AND ")}`
 * ```
 *
 * @since 0.1.0
 */
export const join = (items: ReadonlyArray<unknown>, separator = ", "): Statement => {
  const parts: Array<string> = []
  const params: Array<Value> = []
  items.forEach((item, i) => {
    if (i > 0) parts.push(separator)
    append(parts, params, item)
  })
  return make(parts.join(""), params)
}

/**
 * A quoted identifier (table, column, schema, channel), safe whatever its
 * characters. Several names make a qualified name: `sql.id("s", "t")` is `"s"."t"`.
 *
 * @example
 * ```ts
 * import { sql } from "effect-dbpool"
 *
 * sql`SELECT ${sql.id("val1")} FROM ${sql.id("public", "test_values")}`
 * ```
 *
 * @since 0.1.0
 */
export const id = (...names: ReadonlyArray<string>): Statement => make(names.map(quoteIdentifier).join("."), [])

/**
 * A parenthesised list of parameters for `IN`.
 *
 * `IN ()` is not SQL, so an empty list is an empty subquery: `x IN` it
 * matches nothing and `x NOT IN` it matches everything. Its one column
 * must have a type `x` can be compared with; without `type` it is `text`
 * (what Postgres makes of an untyped `NULL`), which suits text columns and
 * parameters. For other columns name the element type: it types the empty
 * subquery and casts every element of a non-empty list.
 *
 * @example
 * ```ts
 * import { sql } from "effect-dbpool"
 *
 * sql`SELECT * FROM test_values WHERE id IN ${sql.in([1, 2, 3])}`
 * // an empty list of ids matches no row (`id NOT IN` it: every row)
 * sql`SELECT * FROM test_values WHERE id IN ${sql.in([], "int4")}`
 * ```
 *
 * @since 0.1.0
 */
export const inList = (values: ReadonlyArray<Value>, type?: string): Statement => {
  // The type is trusted SQL text, like the text of `Statement.text`.
  const cast = type === undefined ? undefined : make(`::${type}`, [])
  if (values.length === 0) return make(`(SELECT NULL${cast?.text ?? ""} WHERE FALSE)`, [])
  return template`(${join(cast === undefined ? values : values.map((value) => template`${value}${cast}`))})`
}

/**
 * Marks a value to be sent as `jsonb`, for JSON arrays and scalars (plain
 * objects are JSON already; plain arrays are Postgres arrays).
 *
 * @example
 * ```ts
 * import { sql } from "effect-dbpool"
 *
 * sql`INSERT INTO events (tags) VALUES (${sql.json(["a", "b"])})`
 * ```
 *
 * @since 0.1.0
 */
export const json = (value: unknown): Json => new Json(value)

/**
 * The `sql` tagged template: every interpolated value is bound as a
 * parameter, nested statements (from `sql`, `sql.id`, `sql.in`, `sql.join`)
 * are spliced in with their parameters renumbered.
 *
 * @example
 * ```ts
 * import { sql } from "effect-dbpool"
 *
 * const column = sql.id("val1")
 * const statement = sql`UPDATE test_values SET ${column} = ${123} WHERE id = ${459}`
 * ```
 *
 * @since 0.1.0
 */
export const sql: {
  (strings: TemplateStringsArray, ...values: ReadonlyArray<unknown>): Statement
  readonly id: typeof id
  readonly in: typeof inList
  readonly join: typeof join
  readonly json: typeof json
  readonly text: typeof text
} = Object.assign(template, { id, in: inList, join, json, text })

/**
 * A statement of another builder that compiles itself to Postgres text with
 * `$1`…`$n` placeholders and the values bound to them: an `effect/sql`
 * statement of a client made by `EffectSql`.
 *
 * @example
 * ```ts
 * import { Statement } from "effect-dbpool"
 *
 * const compiled: Statement.Compilable = { compile: () => ["SELECT $1::int AS n", [1]] }
 * Statement.dryRun(compiled) // "SELECT '1'::int AS n"
 * ```
 *
 * @since 0.1.0
 */
export interface Compilable {
  readonly compile: () => readonly [sql: string, params: ReadonlyArray<unknown>]
}

/**
 * The SQL that would run, with every parameter inlined as a correctly quoted
 * Postgres literal of the type the bound parameter has (numbers and text
 * untyped, as postgres.js sends them). Needs no connection. Running the result
 * returns the same rows as running the statement. An `effect/sql` statement of
 * an `EffectSql` client is rendered the same way, from what it compiles to.
 * A value that cannot be sent (outside `Value`'s types: a `Map`, a function,
 * an invalid `Date`, at any depth of an array) throws, as running the
 * statement fails with `InvalidInput`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { SqlClient } from "effect/sql"
 * import { sql, Statement } from "effect-dbpool"
 *
 * Statement.dryRun(sql`SELECT * FROM test_values WHERE id = ${123};`)
 * // "SELECT * FROM test_values WHERE id = '123';"
 *
 * const shown = SqlClient.SqlClient.use((esql) =>
 *   Effect.succeed(Statement.dryRun(esql`SELECT * FROM test_values WHERE id IN ${esql.in([1, 2])}`))
 * ) // "SELECT * FROM test_values WHERE id IN ('1','2')"
 * ```
 *
 * @since 0.1.0
 */
export const dryRun = (statement: Statement | Compilable): string => {
  const [text, params] = isStatement(statement) ? [statement.text, statement.params] : statement.compile()
  return mapPlaceholders(text, (n) => n >= 1 && n <= params.length ? literal(params[n - 1]) : `$${n}`)
}
