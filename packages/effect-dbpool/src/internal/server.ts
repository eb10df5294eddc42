/**
 * What a connection URL may say about its server in logs, errors, stats and
 * spans: hosts, ports and database — never the user or the password. Handles
 * the multi-host form (`postgres://u:p@db1:5432,db2:5432/app`), which the
 * WHATWG URL parser rejects.
 */

/** One host of a URL, with its port (5432 when the URL names none). */
export interface Host {
  readonly host: string
  readonly port: number
}

/** The server part of a URL. */
export interface Server {
  readonly hosts: ReadonlyArray<Host>
  /** The database, `postgres` when the URL names none (the server's default for user `postgres`). */
  readonly database: string
}

// The userinfo runs to the last "@" before the path, as the URL parser (and the driver) read it: a password with an
// unencoded "@" must not show up as part of the host.
const shape = /^postgres(?:ql)?:\/\/(?:[^/?#]*@)?([^/?#]*)(?:\/([^?#]*))?/i

const hostOf = (part: string): Host | undefined => {
  // [v6]:port, host:port, or a bare host.
  const m = /^(\[[^\]]+\]|[^:]*)(?::(\d+))?$/.exec(part)
  if (m === null || m[1] === "") return undefined
  return { host: m[1]!.replace(/^\[(.*)\]$/, "$1"), port: m[2] === undefined ? 5432 : Number(m[2]) }
}

/** The hosts and database of a URL, or undefined when it is not a postgres URL. */
export const parse = (url: string): Server | undefined => {
  const m = shape.exec(url)
  if (m === null) return undefined
  // No host at all: the drivers connect to localhost.
  const hosts: Array<Host> = m[1] === "" ? [{ host: "localhost", port: 5432 }] : []
  for (const part of m[1] === "" ? [] : m[1]!.split(",")) {
    const host = hostOf(part)
    if (host === undefined) return undefined
    hosts.push(host)
  }
  // An "@" in the path is a password with an unencoded "/" before its own "@": what follows may be part of it.
  if (m[2]?.includes("@") === true) return undefined
  let database = "postgres"
  try {
    database = decodeURIComponent(m[2] ?? "") || "postgres"
  } catch {
    return undefined
  }
  return { hosts, database }
}

/** `host:port/database` (hosts joined by commas): what logs and errors may say about a server. */
export const describe = (url: string): string => {
  const server = parse(url)
  if (server === undefined) return "(unparseable URL)"
  const hosts = server.hosts.map((h) => `${h.host.includes(":") ? `[${h.host}]` : h.host}:${h.port}`).join(",")
  return `${hosts}/${server.database}`
}

/**
 * One URL per host of a URL naming several, in order, each without
 * `target_session_attrs`: the caller tries them in turn and checks the role
 * itself (see {@link wantedRole}). A URL naming one host without the
 * parameter comes back as it is.
 */
export const hostUrls = (url: string): ReadonlyArray<string> => {
  const m = /^([a-z]+:\/\/)([^/?#]*@)?([^/?#]*)(.*)$/i.exec(url) // userinfo to the last "@", as `shape`
  if (m === null) return [url]
  const rest = m[4]!.replace(/([?&])target_session_attrs=[^&#]*&?/i, "$1").replace(/[?&](?=#|$)/, "")
  if (!m[3]!.includes(",") && rest === m[4]) return [url]
  return m[3]!.split(",").map((host) => `${m[1]}${m[2] ?? ""}${host}${rest}`)
}

/**
 * The server role a URL's `target_session_attrs` asks for, read from
 * `pg_is_in_recovery()` after connecting: `primary` (read-write, primary),
 * `standby` (read-only, standby), `prefer-standby`, or `any` (absent, any).
 * postgres.js decides read-write from `default_transaction_read_only` alone,
 * which is off on a hot standby too — and on in the read pool's own sessions,
 * where it would reject every host.
 */
export type Role = "primary" | "standby" | "prefer-standby" | "any"

/** A query-string parameter of a URL, read without the WHATWG parser (which rejects a URL naming several hosts). */
export const param = (url: string, name: string): string | null => {
  const query = url.indexOf("?")
  return query < 0 ? null : new URLSearchParams(url.slice(query + 1).split("#")[0]).get(name)
}

export const wantedRole = (url: string): Role => {
  const attrs = param(url, "target_session_attrs")?.toLowerCase()
  if (attrs === "read-write" || attrs === "primary") return "primary"
  if (attrs === "read-only" || attrs === "standby") return "standby"
  return attrs === "prefer-standby" ? "prefer-standby" : "any"
}
