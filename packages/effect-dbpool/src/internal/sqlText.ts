/**
 * A small lexer for Postgres SQL text: it finds `$n` placeholders while
 * skipping string literals (standard, `E''`, dollar-quoted), quoted
 * identifiers and comments, so that placeholders can be renumbered or
 * replaced by literals without touching text that only looks like one.
 */

const isIdentChar = (c: string | undefined): boolean => c !== undefined && /[A-Za-z0-9_$\u0080-\uffff]/.test(c)

/** A dollar quote's delimiter: its tag follows the rules of an unquoted identifier (any non-ASCII letter, any length), without `$`. */
const dollarTag = /\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/y

/**
 * If a string literal (standard, `E''`), quoted identifier, comment or dollar quote starts at `i`, the index just
 * after it (the end of the text if it never closes); otherwise undefined — `i` is in code.
 */
const skipQuoted = (text: string, i: number): number | undefined => {
  const len = text.length
  const c = text[i]
  if (c === "'") {
    const prev = text[i - 1]
    const escapes = (prev === "E" || prev === "e") && !isIdentChar(text[i - 2])
    i++
    while (i < len) {
      if (escapes && text[i] === "\\") {
        i += 2
      } else if (text[i] === "'") {
        if (text[i + 1] === "'") i += 2
        else break
      } else {
        i++
      }
    }
    return Math.min(len, i + 1)
  }
  if (c === "\"") {
    i = text.indexOf("\"", i + 1)
    while (i !== -1 && text[i + 1] === "\"") i = text.indexOf("\"", i + 2)
    return i === -1 ? len : i + 1
  }
  if (c === "-" && text[i + 1] === "-") {
    // Postgres ends a line comment at \n or \r.
    while (i < len && text[i] !== "\n" && text[i] !== "\r") i++
    return i
  }
  if (c === "/" && text[i + 1] === "*") {
    let depth = 1
    i += 2
    while (i < len && depth > 0) {
      if (text[i] === "/" && text[i + 1] === "*") {
        depth++
        i += 2
      } else if (text[i] === "*" && text[i + 1] === "/") {
        depth--
        i += 2
      } else {
        i++
      }
    }
    return i
  }
  if (c === "$" && !isIdentChar(text[i - 1])) {
    dollarTag.lastIndex = i
    const tag = dollarTag.exec(text)
    if (tag === null) return undefined // a placeholder ($1) or a lone $: code
    const end = text.indexOf(tag[0], i + tag[0].length)
    return end === -1 ? len : end + tag[0].length
  }
  return undefined
}

/** Calls `f` for every `$n` placeholder and splices in what it returns. */
export const mapPlaceholders = (text: string, f: (n: number) => string): string => {
  let out = ""
  let i = 0
  let copied = 0
  const len = text.length
  while (i < len) {
    const skipped = skipQuoted(text, i)
    if (skipped !== undefined) {
      i = skipped
      continue
    }
    if (text[i] === "$" && !isIdentChar(text[i - 1])) {
      const digits = /^\$([0-9]+)/.exec(text.slice(i, i + 12))
      if (digits !== null) {
        out += text.slice(copied, i) + f(Number(digits[1]))
        i += digits[0].length
        copied = i
        continue
      }
    }
    i++
  }
  return copied === 0 ? text : out + text.slice(copied)
}

/** The text with literals, comments and dollar quotes blanked out (positions kept): its code, names included. */
const codeOnly = (text: string): string => {
  let out = ""
  let i = 0
  while (i < text.length) {
    const skipped = skipQuoted(text, i)
    if (skipped === undefined) {
      out += text[i]
      i++
    } else if (text[i] === "\"") {
      out += text.slice(i, skipped)
      i = skipped
    } else {
      out += " ".repeat(skipped - i)
      i = skipped
    }
  }
  return out
}

const transactionControl = /^(?:begin|start|commit|end|rollback|abort|savepoint|release|prepare\s+transaction)\b/i

/** Skips leading whitespace and comments. */
const firstWordAt = (text: string): string => {
  let i = 0
  for (;;) {
    while (i < text.length && /\s|;|\(/.test(text[i]!)) i++
    if (text.startsWith("--", i)) {
      // Postgres ends a line comment at \n or \r.
      while (i < text.length && text[i] !== "\n" && text[i] !== "\r") i++
    } else if (text.startsWith("/*", i)) {
      // Block comments nest in Postgres.
      let depth = 1
      i += 2
      while (i < text.length && depth > 0) {
        if (text.startsWith("/*", i)) {
          depth++
          i += 2
        } else if (text.startsWith("*/", i)) {
          depth--
          i += 2
        } else {
          i++
        }
      }
    } else {
      return text.slice(i, i + 64)
    }
  }
}

/**
 * Is this a statement that opens or closes a transaction? Those must go
 * through the transaction API, which keeps track of the connection's state;
 * a raw `BEGIN` would hand a connection back to the pool inside a transaction.
 */
export const isTransactionControl = (text: string): boolean => classify(text) === "transaction control"

const sessionSetting = /^(?:set(?!\s+local\b)|reset|discard|create\s+(?:(?:local|global)\s+)?temp(?:orary)?\b)\b/i

/**
 * Does this statement change session state that would outlive the
 * interaction (`SET` without `LOCAL` — `SET ROLE` included —, `RESET`,
 * `DISCARD`, `CREATE TEMP …`)? Such a connection is reset before it goes
 * back to the pool, and such a statement never shares its connection.
 */
export const changesSession = (text: string): boolean => classify(text) === "session change"

/** What a statement does to its connection, as far as the pool cares. */
export type Kind = "transaction control" | "session change" | "plain"

/** What the pool and the telemetry read off a statement's first word. */
export interface Described {
  readonly kind: Kind
  /** The first keyword, upper-cased (`SELECT`, `WITH`, …): the span name and `db.operation.name`. */
  readonly operation: string
  /** See {@link unlocksWrites}; the numbers of the parameters that name a `set_config` setting, if any. */
  readonly unlocksWrites: boolean | ReadonlyArray<number>
}

const readOnlySetting = /transaction_read_only/i
/** What a SET or RESET sets: `TRANSACTION …`, `SESSION CHARACTERISTICS …`, or a setting's name. */
const setTarget = /^(?:set|reset)\s+(?:(?:local|session)\s+(?!characteristics\b))?(session\s+characteristics|"(?:[^"]|"")*"|[a-z_][a-z0-9_.$]*)/i
const readWrite = /\bread\s+write\b/i
const alterSystem = /^alter\s+system\b/i
const setConfigCall = /set_config\s*\(/gi
/** The first argument of a `set_config(`: a literal (`E''` too) or a placeholder; anything else is an expression. */
const setConfigName = /\s*(?:[eE]?'((?:[^']|'')*)'|\$([0-9]+))/y

const unlocking = (text: string): boolean | ReadonlyArray<number> => {
  // Read from the code only: a value or a comment that mentions these is no statement that sets them.
  const code = codeOnly(text)
  const statement = code.replace(/^[\s;(]+/, "")
  const target = setTarget.exec(statement)?.[1]?.toLowerCase().replace(/\s+/g, " ")
  // SET TRANSACTION … READ WRITE, SET SESSION CHARACTERISTICS AS TRANSACTION … READ WRITE, SET [LOCAL] [default_]transaction_read_only.
  if (target === "transaction" || target === "session characteristics") return readWrite.test(statement)
  if (target !== undefined) return readOnlySetting.test(target)
  // Postgres runs ALTER SYSTEM in a read-only transaction, yet it writes the server's configuration.
  if (alterSystem.test(statement)) return true
  const byParameter: Array<number> = []
  for (const call of code.matchAll(setConfigCall)) {
    setConfigName.lastIndex = call.index + call[0].length
    const name = setConfigName.exec(text)
    if (name === null) return true // the setting is an expression: it could be any
    if (name[1] !== undefined) {
      if (readOnlySetting.test(name[1])) return true
    } else {
      byParameter.push(Number(name[2]))
    }
  }
  return byParameter.length === 0 ? false : byParameter
}

/** Statement texts repeat (they come from templates): each is read once. Bounded, and cleared when full. */
const described = new Map<string, Described>()

/** A statement text's kind, operation and read-only check, read once per text (cached). */
export const describe = (text: string): Described => {
  let d = described.get(text)
  if (d === undefined) {
    const word = firstWordAt(text)
    d = {
      kind: transactionControl.test(word) ? "transaction control" : sessionSetting.test(word) ? "session change" : "plain",
      operation: /^[a-z]+/i.exec(word)?.[0]?.toUpperCase() ?? "SQL",
      unlocksWrites: unlocking(text)
    }
    if (text.length <= 4096) {
      if (described.size >= 2048) described.clear()
      described.set(text, d)
    }
  }
  return d
}

/** Classifies a statement text (cached). */
export const classify = (text: string): Kind => describe(text).kind

/** The operation of a statement: its first keyword, upper-cased (`SELECT`, `WITH`, …); cached with its kind. */
export const operationOf = (text: string): string => describe(text).operation

/**
 * Could this statement let a read-only connection write? Postgres lets a
 * session turn its own read-only default off (`SET`, `set_config`) and a
 * transaction turn itself read-write before its first query, and it runs
 * `ALTER SYSTEM` in a read-only transaction; the read pool refuses these so
 * that its connections stay read-only. A guard against mistakes, not a
 * security boundary: a server function can still change the setting (a
 * read-only role or a standby is one).
 */
export const unlocksWrites = (described: Described, params: ReadonlyArray<unknown>): boolean => {
  const how = described.unlocksWrites
  if (typeof how === "boolean") return how
  return how.some((n) => {
    const setting = params[n - 1]
    return typeof setting !== "string" || readOnlySetting.test(setting)
  })
}
