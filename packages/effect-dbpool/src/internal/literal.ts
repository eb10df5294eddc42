/**
 * Postgres literals for dry runs. Each literal has the type the server would
 * give the bound parameter: values postgres.js sends untyped (text, numbers,
 * arrays of those) become untyped quoted literals — a number too, so `${1} ||
 * ${2}` is `'12'` in both forms and `id = ${1.5}` fails in both —, values it
 * sends typed (bigint, boolean, Date, bytes, JSON) get the same type here.
 */

/** A JSON value wrapped by `sql.json`, sent as `jsonb`. */
export class Json {
  readonly value: unknown
  constructor(value: unknown) {
    this.value = value
  }
}

const needsEscapeString = /[\\\u0000-\u001f]/

/** A SQL string literal; backslashes and control characters use the `E''` form so that no setting of `standard_conforming_strings` changes its meaning. */
export const quoteString = (s: string): string => {
  if (!needsEscapeString.test(s)) return `'${s.replaceAll("'", "''")}'`
  let out = "E'"
  for (const ch of s) {
    if (ch === "\\") out += "\\\\"
    else if (ch === "'") out += "''"
    else if (ch < " ") out += `\\${ch.charCodeAt(0).toString(8).padStart(3, "0")}`
    else out += ch
  }
  return out + "'"
}

/** A quoted identifier; a NUL byte cannot be part of one. */
export const quoteIdentifier = (name: string): string => {
  if (name.length === 0 || name.includes("\u0000")) {
    throw new RangeError("an identifier must be a non-empty string without NUL bytes")
  }
  return `"${name.replaceAll("\"", "\"\"")}"`
}

const isPlainObject = (u: unknown): u is object =>
  typeof u === "object" && u !== null && (Object.getPrototypeOf(u) === Object.prototype || Object.getPrototypeOf(u) === null)

export const isJsonObject = isPlainObject

const hex = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex")

/** The element of a Postgres array literal, e.g. `"a b"` or `NULL`. */
const arrayElement = (u: unknown): string => {
  if (u === null || u === undefined) return "NULL"
  if (Array.isArray(u)) return `{${u.map(arrayElement).join(",")}}`
  if (typeof u === "number" || typeof u === "bigint" || typeof u === "boolean") return String(u)
  const text = u instanceof Date
    ? u.toISOString()
    : u instanceof Uint8Array
    ? `\\x${hex(u)}`
    : isPlainObject(u) || u instanceof Json
    ? JSON.stringify(u instanceof Json ? u.value : u)
    : String(u)
  return `"${text.replaceAll("\\", "\\\\").replaceAll("\"", "\\\"")}"`
}

const firstScalar = (u: ReadonlyArray<unknown>): unknown => {
  for (const x of u) {
    if (Array.isArray(x)) {
      const inner = firstScalar(x)
      if (inner !== undefined) return inner
    } else if (x !== null && x !== undefined) {
      return x
    }
  }
  return undefined
}

/**
 * The element type (oid) of an array whose first non-null scalar is one
 * postgres.js sends typed: bigint, boolean, Date, bytes. Other arrays are
 * sent untyped and take the type the server infers.
 */
export const typedArrayElementOid = (u: ReadonlyArray<unknown>): number | undefined => {
  const sample = firstScalar(u)
  return typeof sample === "bigint"
    ? 20
    : typeof sample === "boolean"
    ? 16
    : sample instanceof Date
    ? 1184
    : sample instanceof Uint8Array
    ? 17
    : undefined
}

const arrayTypeNames: Record<number, string> = { 20: "int8[]", 16: "bool[]", 1184: "timestamptz[]", 17: "bytea[]" }
const arrayTypeOids: Record<number, number> = { 20: 1016, 16: 1000, 1184: 1185, 17: 1001 }

/** The array type (oid) a bound array is sent with; 0 (untyped, the server infers it) for text and numbers. */
export const arrayTypeOid = (u: ReadonlyArray<unknown>): number => {
  const element = typedArrayElementOid(u)
  return element === undefined ? 0 : arrayTypeOids[element] ?? 0
}

/** The Postgres array literal of a JS array, e.g. `{1,NULL,"a b"}`: what is sent as the parameter, and quoted for a dry run. */
export const arrayText = (u: ReadonlyArray<unknown>): string => `{${u.map(arrayElement).join(",")}}`

/** The array cast for the type a bound array has (see {@link typedArrayElementOid}). */
const arrayCast = (u: ReadonlyArray<unknown>): string => {
  const oid = typedArrayElementOid(u)
  return oid === undefined ? "" : `::${arrayTypeNames[oid]}`
}

/**
 * Why a value cannot be sent as a parameter, if it cannot: a function, a
 * symbol, an invalid Date, or an object that is neither JSON, bytes nor a
 * Date (a Map, a class instance would be stored as `"[object …]"`) — at any
 * depth of an array. `sql.json` of a value with no JSON text (`undefined`).
 */
export const unsendable = (u: unknown): Error | undefined => {
  if (u === null || u === undefined) return undefined
  switch (typeof u) {
    case "string":
    case "number":
    case "bigint":
    case "boolean":
      return undefined
    case "function":
    case "symbol":
      return new TypeError(`a ${typeof u} cannot be sent as a parameter`)
  }
  if (u instanceof Date) return Number.isNaN(u.getTime()) ? new RangeError("an invalid Date cannot be sent") : undefined
  if (u instanceof Uint8Array || isPlainObject(u)) return undefined
  if (u instanceof Json) {
    return u.value === undefined || typeof u.value === "function" || typeof u.value === "symbol"
      ? new TypeError("sql.json of a value without a JSON text (undefined, a function) cannot be sent")
      : undefined
  }
  if (Array.isArray(u)) {
    for (const element of u) {
      const refused = unsendable(element)
      if (refused !== undefined) return refused
    }
    return undefined
  }
  // typeof "object", not null: it has a constructor unless made with Object.create(null), which isPlainObject took.
  return new TypeError(`a ${(u as object).constructor?.name ?? "object"} cannot be sent as a parameter (use sql.json for JSON)`)
}

/** Renders one parameter value as the literal the server would read it as; throws what {@link unsendable} says. */
export const literal = (u: unknown): string => {
  const refused = unsendable(u)
  if (refused !== undefined) throw refused
  if (u === null || u === undefined) return "NULL"
  switch (typeof u) {
    case "string":
      return quoteString(u)
    case "number":
      // postgres.js sends a number untyped, as this text: the server infers its type from the context.
      return quoteString(String(u))
    case "bigint":
      return `'${u.toString()}'::int8`
    case "boolean":
      return u ? "TRUE" : "FALSE"
  }
  if (u instanceof Date) return `${quoteString(u.toISOString())}::timestamptz`
  if (u instanceof Uint8Array) return `${quoteString(`\\x${hex(u)}`)}::bytea`
  if (u instanceof Json) return `${quoteString(JSON.stringify(u.value))}::jsonb`
  if (Array.isArray(u)) return `${quoteString(arrayText(u))}${arrayCast(u)}`
  if (isPlainObject(u)) return `${quoteString(JSON.stringify(u))}::jsonb`
  return quoteString(String(u))
}
