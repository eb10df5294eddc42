/**
 * Rendering rows (aligned table, JSON, CSV) and errors (one line on stderr).
 */
import { DbError } from "effect-dbpool"

/** A cell as text: dates as ISO strings, objects and arrays as JSON, NULL as an empty cell. */
const cellText = (value: unknown): string => {
  if (value === null || value === undefined) return ""
  if (value instanceof Date) return value.toISOString()
  if (value instanceof Uint8Array) return `\\x${Buffer.from(value).toString("hex")}`
  if (typeof value === "object") return JSON.stringify(value, jsonReplacer)
  return String(value)
}

/**
 * JSON cannot hold a bigint (written as a string, as Postgres' own json does for int8 beyond 2^53), NaN or the
 * infinities (as Postgres spells them); bytes are `\\x` hex, as Postgres prints bytea. A Buffer's own toJSON runs
 * before a replacer sees the value, so bytes are read from the holder.
 */
export function jsonReplacer(this: unknown, key: string, value: unknown): unknown {
  // JSON.stringify calls a replacer with the object or array holding the value as `this`.
  const raw = typeof this === "object" && this !== null ? (this as Record<string, unknown>)[key] : value
  if (raw instanceof Uint8Array) return `\\x${Buffer.from(raw).toString("hex")}`
  if (typeof value === "bigint") return value.toString()
  if (typeof value === "number" && !Number.isFinite(value)) return String(value)
  return value
}

const columnsOf = (rows: ReadonlyArray<Readonly<Record<string, unknown>>>): ReadonlyArray<string> => {
  const columns: Array<string> = []
  const seen = new Set<string>()
  for (const row of rows) {
    for (const key of Object.keys(row)) {
      if (!seen.has(key)) {
        seen.add(key)
        columns.push(key)
      }
    }
  }
  return columns
}

const escapes: Record<string, string> = { "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" }
const escapeCell = (text: string): string => text.replace(/[\\\n\r\t]/g, (c) => escapes[c]!)

/** An aligned table, psql style, with a row count at the end unless `rowCount: false`. */
export const table = (
  rows: ReadonlyArray<Readonly<Record<string, unknown>>>,
  options: { readonly rowCount?: boolean } = {}
): string => {
  const columns = columnsOf(rows)
  const count = `(${rows.length} ${rows.length === 1 ? "row" : "rows"})`
  if (columns.length === 0) return options.rowCount === false ? "(none)" : count
  // Escaped so that a cell stays on its line and "a\\nb" (backslash, n) differs from a line break.
  const cells = rows.map((row) => columns.map((c) => escapeCell(cellText(row[c]))))
  // A loop, not Math.max(...cells): spreading 130,000 rows overflows the stack.
  const widths = columns.map((c, i) => {
    let width = c.length
    for (const r of cells) width = Math.max(width, r[i]!.length)
    return width
  })
  const numeric = columns.map((c) => rows.length > 0 && rows.every((r) => typeof r[c] === "number" || typeof r[c] === "bigint" || r[c] === null))
  const line = (values: ReadonlyArray<string>, alignRight: boolean) =>
    values.map((v, i) => alignRight && numeric[i] ? v.padStart(widths[i]!) : v.padEnd(widths[i]!)).join(" | ").trimEnd()
  return [
    line(columns, false),
    widths.map((w) => "-".repeat(w)).join("-+-"),
    ...cells.map((r) => line(r, true)),
    ...(options.rowCount === false ? [] : [count])
  ].join("\n")
}

/** One JSON array of the rows. */
export const json = (rows: ReadonlyArray<unknown>): string => JSON.stringify(rows, jsonReplacer)

const csvField = (text: string): string => /[",\r\n]/.test(text) || text !== text.trim() ? `"${text.replace(/"/g, '""')}"` : text

/** A CSV field as COPY … CSV writes it: NULL is an empty field, an empty string a quoted one (`""`). */
const csvValue = (value: unknown): string => {
  if (value === null || value === undefined) return ""
  const text = cellText(value)
  return text === "" ? '""' : csvField(text)
}

/** RFC 4180 CSV with a header line; NULL is an empty field, an empty string `""`. */
export const csv = (rows: ReadonlyArray<Readonly<Record<string, unknown>>>): string => {
  const columns = columnsOf(rows)
  if (columns.length === 0) return ""
  return [columns.map(csvField).join(","), ...rows.map((row) => columns.map((c) => csvValue(row[c])).join(","))]
    .join("\n")
}

/**
 * A failure as one line: the error's tag, SQLSTATE and its class, the
 * message, and the server's hint when it gave one. effect-dbpool's errors
 * never carry a password or a URL (`ConnectFailed.server` is `host:port/db`).
 */
export const errorLine = (error: unknown): string => {
  if (DbError.isDbError(error)) {
    const e = error as unknown as Record<string, unknown>
    const parts: Array<string> = [`error: ${String(e["_tag"])}`]
    if (typeof e["sqlState"] === "string") {
      parts.push(`SQLSTATE ${e["sqlState"]}${typeof e["sqlStateClass"] === "string" ? ` (${e["sqlStateClass"]})` : ""}`)
    }
    if (typeof e["server"] === "string") parts.push(`server ${e["server"]}`)
    let line = `${parts.join(", ")}: ${oneLine(String(e["message"]))}`
    if (typeof e["detail"] === "string") line += ` — detail: ${oneLine(e["detail"])}`
    if (typeof e["hint"] === "string") line += ` — hint: ${oneLine(e["hint"])}`
    return line
  }
  if (error instanceof Error) return `error: ${oneLine(error.message)}`
  return `error: ${oneLine(String(error))}`
}

const oneLine = (text: string): string => text.replace(/\s*\n\s*/g, " ").trim()
