/**
 * Array columns. postgres.js 3.4.9 parses unquoted `NULL` array elements as
 * the string "NULL" (or NaN, false, an Invalid Date), and it looks up array
 * types with a query nobody awaits — a connection dying during it is an
 * unhandled rejection. So connections are opened with `fetch_types: false`,
 * and the array types are learnt in the connect round trip and parsed here.
 */
import type postgres from "postgres"

type Parser = ((text: string) => unknown) & { array?: boolean }

/** Element type oid → array type oid pairs of every array type, as JSON; run with the connect query. */
export const arrayTypesQuery = `(SELECT coalesce(json_agg(json_build_array(e.oid, e.typarray)), '[]')
  FROM pg_catalog.pg_type e WHERE e.typarray <> 0 AND e.typcategory <> 'A')`

/** Parses array text after its opening brace (the form the driver hands array parsers). */
const parseArray = (text: string, element: Parser | undefined, delimiter: string): Array<unknown> => {
  let i = 0
  const level = (): Array<unknown> => {
    const out: Array<unknown> = []
    while (i < text.length) {
      const c = text[i]
      if (c === "}") {
        i++
        return out
      } else if (c === delimiter) {
        i++
      } else if (c === "{") {
        i++
        out.push(level())
      } else if (c === "\"") {
        let s = ""
        i++
        while (i < text.length && text[i] !== "\"") {
          if (text[i] === "\\") i++
          s += text[i]
          i++
        }
        i++
        out.push(element === undefined ? s : element(s))
      } else {
        let j = i
        while (j < text.length && text[j] !== delimiter && text[j] !== "}") j++
        const raw = text.slice(i, j)
        i = j
        out.push(raw === "NULL" ? null : element === undefined ? raw : element(raw))
      }
    }
    return out
  }
  return level()
}

/** Installs a parser for every array type on a driver instance. */
export const installArrayParsers = (sql: postgres.Sql, pairs: unknown): void => {
  if (!Array.isArray(pairs)) return
  // The parser table is part of the driver's options at run time but not of its typings.
  const parsers = (sql.options as unknown as { parsers: Record<number, Parser | undefined> }).parsers
  for (const pair of pairs) {
    if (!Array.isArray(pair)) continue
    const [oid, typarray] = pair.map(Number) as [number, number] // json_build_array of two oids
    const element = parsers[oid]
    const delimiter = oid === 603 ? ";" : "," // box is the one built-in type whose arrays use ';'
    parsers[typarray] = Object.assign((text: string) => parseArray(text, element, delimiter), { array: true })
  }
}
