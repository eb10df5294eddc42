/**
 * The `dbpool` command line (packages/cli), run as child processes with the
 * pinned Node and the same flags as the root `dbpool` script, against the
 * test server. `listen`, `stats --watch` and `bench` run inside tmux, as a
 * person would run them, their screen read; the first two are stopped with
 * Ctrl-C.
 */
import { spawn, spawnSync } from "node:child_process"
import * as Path from "node:path"
import postgres from "postgres"
import { afterAll, describe, expect, inject, it } from "vitest"

const root = Path.resolve(import.meta.dirname, "..")
// The pinned Node's binary itself: node_modules/.bin/node is a sh wrapper, and a sh that gets Ctrl-C while waiting
// for its child exits 130 whatever the child's exit code.
const node = Path.join(root, "node_modules/node/bin/node")
const nodeFlags = ["--experimental-strip-types", "--no-warnings", "--conditions=@effect-dbpool/source"]
const main = Path.join(root, "packages/cli/src/main.ts")
const url = inject("databaseUrl")
const password = decodeURIComponent(new URL(url).password)
const appName = "dbpool-test-cli"

const observer = postgres(url, { max: 1, onnotice: () => {} })
afterAll(async () => {
  await observer.end({ timeout: 1 })
})

/** Every output of every run, checked for the password at the end. */
const outputs: Array<string> = []

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Starts the CLI: its output so far (`out`), and its exit code and whole output once it has ended (`closed`). */
const start = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}) => {
  const child = spawn(node, [...nodeFlags, main, ...args], {
    cwd: root,
    env: { ...process.env, DATABASE_URL: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
    // A run that hangs is killed (and its test fails on the exit code) rather than outliving the test run.
    timeout: 90_000,
    killSignal: "SIGKILL"
  })
  const out = { stdout: "", stderr: "" }
  child.stdout.on("data", (chunk: Buffer) => (out.stdout += chunk.toString()))
  child.stderr.on("data", (chunk: Buffer) => (out.stderr += chunk.toString()))
  const closed = new Promise<Run>((resolve, reject) => {
    child.on("error", reject)
    child.on("close", (code) => {
      outputs.push(out.stdout, out.stderr)
      resolve({ code, ...out })
    })
  })
  return { child, out, closed }
}

const dbpool = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}): Promise<Run> => start(args, env).closed

const withUrl = (...args: ReadonlyArray<string>) => dbpool([...args, "--url", url, "--application-name", appName])

const sleep = (millis: number) => new Promise((r) => setTimeout(r, millis))

const until = async <A>(check: () => A | Promise<A>, ok: (a: A) => boolean, millis = 15_000): Promise<A> => {
  const deadline = Date.now() + millis
  let a = await check()
  while (!ok(a) && Date.now() < deadline) {
    await sleep(100)
    a = await check()
  }
  return a
}

const cliSessions = (name = appName) =>
  observer.unsafe<Array<{ pid: number; query: string }>>(
    "SELECT pid, query FROM pg_stat_activity WHERE application_name = $1",
    [name]
  )

describe("dbpool query", () => {
  it("prints a row as an aligned table", async () => {
    const [row] = await observer`SELECT * FROM test_values WHERE id = 459`
    const run = await withUrl("query", "SELECT * FROM test_values WHERE id = $1", "459")
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
    const lines = run.stdout.trimEnd().split("\n")
    expect(lines[0]).toMatch(/^id\s+\|\s+val1\s+\|\s+val2$/)
    expect(lines[1]).toMatch(/^-+\+-+\+-+$/)
    expect(lines[2]?.split("|").map((c) => c.trim())).toEqual([String(row?.["id"]), String(row?.["val1"]), String(row?.["val2"])])
    expect(lines[3]).toBe("(1 row)")
    // Columns line up.
    expect(lines[0]?.indexOf("|")).toBe(lines[2]?.indexOf("|"))
  })

  it("--json prints what a direct query returns", async () => {
    const direct = await observer`SELECT * FROM test_values WHERE id BETWEEN 10 AND 14 ORDER BY id`
    const run = await withUrl("query", "SELECT * FROM test_values WHERE id BETWEEN $1 AND $2 ORDER BY id", "10", "14", "--json")
    expect(run.code).toBe(0)
    expect(JSON.parse(run.stdout)).toEqual(JSON.parse(JSON.stringify([...direct])))
  })

  it("--csv prints a header and one line per row, quoting where needed", async () => {
    const [row] = await observer`SELECT * FROM test_values WHERE id = 7`
    const run = await withUrl("query", "SELECT id, val1, $2::text AS note FROM test_values WHERE id = $1", "7", "a \"b\", c", "--csv")
    expect(run.code).toBe(0)
    expect(run.stdout).toBe(`id,val1,note\n7,${row?.["val1"]},"a ""b"", c"\n`)
  })

  it("--read runs in a read-only session", async () => {
    const run = await withUrl("query", "SELECT current_setting('transaction_read_only') AS ro", "--read", "--json")
    expect(run.code).toBe(0)
    expect(JSON.parse(run.stdout)).toEqual([{ ro: "on" }])
  })

  it("a syntax error is one line on stderr naming SQLSTATE 42601, exit code 1", async () => {
    const run = await withUrl("query", "SELEC * FROM test_values")
    expect(run.code).toBe(1)
    expect(run.stdout).toBe("")
    const lines = run.stderr.trimEnd().split("\n")
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain("SyntaxError")
    expect(lines[0]).toContain("42601")
    expect(run.stderr).not.toContain(password)
  })

  it("a failed connection is one line naming host:port/db, never the password", async () => {
    const bad = new URL(url)
    bad.password = `${password}-wrong`
    const run = await dbpool(["query", "SELECT 1", "--url", bad.toString()])
    expect(run.code).toBe(1)
    const lines = run.stderr.trimEnd().split("\n")
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain("ConnectFailed")
    expect(lines[0]).toContain(`${bad.hostname}:${bad.port}${bad.pathname}`)
    expect(run.stderr).not.toContain(password)
  })

  it("takes DATABASE_URL when there is no --url", async () => {
    const run = await dbpool(["query", "SELECT $1::int + 1 AS n", "41", "--json"], { DATABASE_URL: url })
    expect(run.code).toBe(0)
    expect(JSON.parse(run.stdout)).toEqual([{ n: 42 }])
  })

  it("output formats keep values apart: NULL from '', a line break from a backslash and n; bytea and NaN in JSON", async () => {
    const csvRun = await withUrl("query", "SELECT NULL::text AS a, ''::text AS b, 'x'::text AS c", "--csv")
    expect(csvRun.code).toBe(0)
    expect(csvRun.stdout).toBe('a,b,c\n,"",x\n')
    const jsonRun = await withUrl("query", "SELECT '\\xdeadbeef'::bytea AS b, 'NaN'::float8 AS n, '-Infinity'::float8 AS i", "--json")
    expect(jsonRun.code).toBe(0)
    expect(JSON.parse(jsonRun.stdout)).toEqual([{ b: "\\xdeadbeef", n: "NaN", i: "-Infinity" }])
    const tableRun = await withUrl("query", "SELECT E'l1\\nl2' AS a, 'l1\\nl2' AS b, E'x\\ty' AS c")
    expect(tableRun.code).toBe(0)
    expect(tableRun.stdout.split("\n")[2]?.split("|").map((c) => c.trim())).toEqual(["l1\\nl2", "l1\\\\nl2", "x\\ty"])
  })

  it("prints a table of 150,000 rows", async () => {
    const run = await withUrl("query", "SELECT g FROM generate_series(1, 150000) AS g")
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
    expect(run.stdout.trimEnd().split("\n").at(-1)).toBe("(150000 rows)")
  })

  it("stops quietly, exit code 0, when its reader stops reading (| head)", async () => {
    const { child, closed } = start(["query", "SELECT g FROM generate_series(1, 100000) AS g", "--url", url])
    child.stdout.once("data", () => child.stdout.destroy())
    const run = await closed
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
  })

  it("SIGTERM ends a running query: the statement is gone from the server, exit code 143", async () => {
    const name = `${appName}-term`
    const { child, closed } = start(["query", "SELECT pg_sleep(60)", "--url", url, "--application-name", name])
    expect(await until(() => cliSessions(name), (s) => s.some((x) => x.query.includes("pg_sleep(60)")))).not.toEqual([])
    child.kill("SIGTERM")
    expect((await closed).code).toBe(143)
    expect(await until(() => cliSessions(name), (s) => s.length === 0)).toEqual([])
  })

  it("a password with an unencoded '/' and '@' shows no part of itself", async () => {
    const u = new URL(url)
    const run = await dbpool(["query", "SELECT 1", "--url", `postgres://app:Tr0ub4dor@3/horse@${u.host}/postgres`])
    for (const text of [run.stdout, run.stderr]) {
      expect(text).not.toContain("horse")
      expect(text).not.toContain("Tr0ub4dor")
    }
  })

  it("an empty --url or DATABASE_URL is no database, not localhost", async () => {
    for (const run of [await dbpool(["query", "SELECT 1", "--url", ""]), await dbpool(["query", "SELECT 1"], { DATABASE_URL: " " })]) {
      expect(run.code).toBe(1)
      expect(run.stderr).toMatch(/--url is empty|no database/)
      expect(run.stderr).not.toContain("ConnectFailed")
    }
  })

  it("leaves no session behind", async () => {
    expect(await until(() => cliSessions(), (s) => s.length === 0)).toEqual([])
  })
})

describe("dbpool listen (piped)", () => {
  it("a channel named twice is listened to once: each notification printed once", async () => {
    const channel = `cli_listen_twice_${process.pid}`
    const { child, out, closed } = start(["listen", channel, channel, "--url", url])
    await until(() => out.stdout, (o) => o.includes("listening"))
    await observer`SELECT pg_notify(${channel}, 'once')`
    await until(() => out.stdout, (o) => o.includes(" once"))
    // A second copy would arrive with the first.
    await sleep(300)
    child.kill("SIGINT")
    const { code, stdout } = await closed
    expect(code).toBe(0)
    expect(stdout.split("\n").filter((line) => line.endsWith(" once"))).toHaveLength(1)
  })

  it("--payload json prints JSON payloads and skips others with a warning on stderr; Ctrl-C exits 0", async () => {
    const channel = `cli_listen_json_${process.pid}`
    const { child, out, closed } = start(["listen", channel, "--payload", "json", "--url", url])
    await until(() => out.stdout, (o) => o.includes("listening"))
    for (const payload of ['{"a":1}', "not json", '"str"']) await observer`SELECT pg_notify(${channel}, ${payload})`
    await until(() => out.stdout, (o) => o.includes('"str"'))
    child.kill("SIGINT")
    const { code, stdout, stderr } = await closed
    expect(code).toBe(0)
    const printed = stdout.split("\n").filter((line) => line.includes(" pid=")).map((line) => line.split(" ").slice(3).join(" "))
    expect(printed).toEqual(['{"a":1}', '"str"'])
    expect(stderr).toContain("undecodable payload skipped")
  })
})

describe("dbpool dry-run", () => {
  it("prints the rendered SQL", async () => {
    const run = await dbpool(["dry-run", "SELECT * FROM test_values WHERE id = $1 AND note = $2", "459", "O'Brien"])
    expect(run.code).toBe(0)
    expect(run.stdout).toBe("SELECT * FROM test_values WHERE id = '459' AND note = 'O''Brien'\n")
  })
})

describe("dbpool notify", () => {
  it("is received by a LISTEN elsewhere", async () => {
    const channel = `cli_notify_${process.pid}`
    const received: Array<string> = []
    const { unlisten } = await observer.listen(channel, (payload) => void received.push(payload))
    try {
      const run = await withUrl("notify", channel, "hello from the cli")
      expect(run.code).toBe(0)
      expect(await until(() => received, (r) => r.length > 0, 5_000)).toEqual(["hello from the cli"])
    } finally {
      await unlisten()
    }
  })
})

/** The cells, trimmed, of the first row of an aligned table whose first cells are `leading`. */
const rowOf = (text: string, ...leading: ReadonlyArray<string>): Array<string> | undefined =>
  text.split("\n")
    .map((line) => line.split("|").map((cell) => cell.trim()))
    .find((cells) => cells.length > leading.length && leading.every((cell, i) => cells[i] === cell))

describe("dbpool stats", () => {
  it("--listen with a name that cannot be a channel fails, exit code 1", async () => {
    const run = await withUrl("stats", "--listen", "c".repeat(64))
    expect(run.code).toBe(1)
    expect(run.stderr).toContain("InvalidInput")
  })

  it("prints its pools' and listener's figures and the server's sessions, its own among them", async () => {
    const channel = `cli_stats_${process.pid}`
    const [settings] = await observer`SELECT current_setting('max_connections') AS max_connections`
    const run = await withUrl("stats", "--listen", channel)
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
    // pool | idle | used | pending | min | max | server max: the CLI's pools hold 0 to 2 connections each, and both
    // pools and the listener share the one server (2 + 2 + 1).
    const write = rowOf(run.stdout, "default/write")
    const read = rowOf(run.stdout, "default/read")
    expect(write).toEqual(["default/write", expect.stringMatching(/^[0-2]$/), "0", "0", "0", "2", "5"])
    expect(read).toEqual(["default/read", expect.stringMatching(/^[0-2]$/), "0", "0", "0", "2", "5"])
    // connected | channels | listening on | subscribers | delivered | dropped | reconnects
    expect(rowOf(run.stdout, "yes")).toEqual(["yes", "1", channel, "1", "0", "0", "0"])
    // The server's view agrees with the pools': the read connection was running the sessions query (active); the
    // write pool's idle connections and the listener were idle.
    expect(rowOf(run.stdout, appName, "active")).toEqual([appName, "active", "1", expect.stringMatching(/^\d+ms$/), expect.stringMatching(/^\d+ms$/), "0"])
    expect(rowOf(run.stdout, appName, "idle")).toEqual([appName, "idle", String(Number(write?.[1]) + 1), "-", "-", "0"])
    expect(run.stdout).toMatch(new RegExp(`^\\d+ client sessions of max_connections ${settings?.["max_connections"]} · notification queue \\d+\\.\\d% used · listening channels: 1 of this CLI`, "m"))
    expect(run.stdout).toContain(`server ${new URL(url).hostname}:${new URL(url).port}${new URL(url).pathname} · `)
  })
})

describe("dbpool bench", () => {
  it("--json: a summary with ops, ordered percentiles and no errors, on --pool-size connections", async () => {
    const benchApp = `${appName}-bench-${process.pid}`
    const running = dbpool(["bench", "--duration", "2s", "--concurrency", "4", "--pool-size", "3", "--json", "--url", url, "--application-name", benchApp])
    // The sessions the server sees while it runs: the write pool's (the read pool and the listener are never used).
    let done = false
    void running.then(() => (done = true))
    let mostSessions = 0
    while (!done) {
      mostSessions = Math.max(mostSessions, (await cliSessions(benchApp)).length)
      await sleep(100)
    }
    const run = await running
    // Not a terminal: no progress line, stdout is the summary alone.
    expect(run.stderr).toBe("")
    expect(run.code).toBe(0)
    const summary = JSON.parse(run.stdout)
    expect(summary).toMatchObject({ statement: "SELECT $1::int AS n", concurrency: 4, poolSize: 3, errors: 0, interrupted: false })
    expect(summary.ops).toBeGreaterThan(0)
    expect(summary.durationMs).toBeGreaterThanOrEqual(2000)
    expect(summary.durationMs).toBeLessThan(6000)
    expect(Math.abs(summary.opsPerSecond - summary.ops / (summary.durationMs / 1000)) / summary.opsPerSecond).toBeLessThan(0.01)
    const { p50, p90, p99, max } = summary.latencyMs
    expect(p50).toBeGreaterThan(0)
    expect(p50).toBeLessThanOrEqual(p90)
    expect(p90).toBeLessThanOrEqual(p99)
    expect(p99).toBeLessThanOrEqual(max)
    expect(mostSessions).toBe(3)
    expect(await until(() => cliSessions(benchApp), (s) => s.length === 0)).toEqual([])
  })

  it("rejects a duration it cannot read, saying what it expects", async () => {
    const run = await dbpool(["bench", "--duration", "soon", "--url", url])
    expect(run.code).toBe(1)
    expect(run.stderr).toContain(`Invalid value for flag --duration: "soon". Expected: a duration such as 500ms, 2s or 1m`)
  })
})

describe("shell completions", () => {
  const commands = ["query", "dry-run", "notify", "listen", "stats", "bench"]
  const hasBash = spawnSync("bash", ["--version"]).status === 0

  it.skipIf(!hasBash)("bash: the script completes command names and a command's flags", async () => {
    const run = await dbpool(["--completions", "bash"])
    expect(run.code).toBe(0)
    expect(run.stdout).toContain("complete -F _dbpool dbpool")
    // The script itself, run by bash as the shell would on Tab: `dbpool ` offers every command, `dbpool st` stats,
    // `dbpool bench --c` --concurrency.
    const complete = (line: string) => {
      const script = `${run.stdout}
COMP_LINE=${JSON.stringify(line)}; COMP_POINT=\${#COMP_LINE}; read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( \${#COMP_WORDS[@]} - 1 )); _dbpool; printf '%s\\n' "\${COMPREPLY[@]}"`
      const result = spawnSync("bash", ["-c", script], { encoding: "utf8" })
      expect(result.stderr).toBe("")
      return result.stdout.trim().split("\n")
    }
    expect(complete("dbpool ")).toEqual(commands)
    expect(complete("dbpool st")).toEqual(["stats"])
    expect(complete("dbpool bench --c")).toEqual(["--concurrency"])
    expect(complete("dbpool stats --w")).toEqual(["--watch"])
  })

  it.each(["zsh", "fish"])("%s: the script names every command", async (shell) => {
    const run = await dbpool(["--completions", shell])
    expect(run.code).toBe(0)
    for (const command of commands) {
      expect(run.stdout).toMatch(shell === "fish" ? new RegExp(`-a '${command}'`) : new RegExp(`'${command}:`))
    }
  })
})

describe("--help", () => {
  it.each(["query", "dry-run", "notify", "listen", "stats", "bench"])("of %s has a description and examples", async (command) => {
    const run = await dbpool([command, "--help"])
    expect(run.code).toBe(0)
    expect(run.stdout).toContain("DESCRIPTION")
    expect(run.stdout).toContain("EXAMPLES")
    expect(run.stdout).toContain(`dbpool ${command} `)
  })
})

const tmux = (socket: string, ...args: ReadonlyArray<string>) => {
  const result = spawnSync("tmux", ["-L", socket, ...args], { encoding: "utf8" })
  return { code: result.status, stdout: result.stdout ?? "", stderr: result.stderr ?? "" }
}

const hasTmux = spawnSync("tmux", ["-V"]).status === 0
if (!hasTmux) console.warn("tmux is not installed (apt-get install -y tmux): the terminal test of `dbpool listen` is skipped on this machine")

describe.skipIf(!hasTmux)("dbpool listen (in tmux)", () => {
  it("prints notifications as they arrive and stops cleanly on Ctrl-C", async () => {
    const unique = `dbpool-cli-${process.pid}-${Date.now()}`
    const channel = `cli_listen_${process.pid}`
    const listenApp = `${appName}-listen-${process.pid}`
    // The URL goes in through the environment: it never shows on the screen.
    const command = [node, ...nodeFlags, main, "listen", channel, "--application-name", listenApp]
      .map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ")
    const screen = () => tmux(unique, "capture-pane", "-p", "-t", unique).stdout
    try {
      const started = tmux(
        unique, "new-session", "-d", "-s", unique, "-x", "200", "-y", "50", "-e", `DATABASE_URL=${url}`,
        // The shell catches SIGINT (its children still get the default): Ctrl-C reaches dbpool, the shell lives on
        // to show the exit code.
        `trap : INT; ${command}; echo "dbpool exited with $?"; sleep 600`
      )
      expect(started.stderr).toBe("")
      expect(started.code).toBe(0)
      expect(await until(screen, (s) => s.includes(`${channel} listening`))).toContain(`${channel} listening`)
      expect(screen()).toMatch(/server [^ ]+:\d+\/\w+; Ctrl-C to stop/)
      const sessions = await cliSessions(listenApp)
      expect(sessions.some((s) => /LISTEN/i.test(s.query))).toBe(true)

      await observer.notify(channel, "payload from the test")
      const shown = await until(screen, (s) => s.includes("payload from the test"))
      const line = shown.split("\n").find((l) => l.includes("payload from the test"))
      const [observerPid] = await observer`SELECT pg_backend_pid() AS pid`
      expect(line).toMatch(new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z ${channel} pid=${observerPid?.["pid"]} payload from the test$`))

      tmux(unique, "send-keys", "-t", unique, "C-c")
      const after = await until(screen, (s) => s.includes("dbpool exited with"))
      expect(after).toContain("dbpool exited with 0")
      // The listening session is gone: its LISTENs (pg_listening_channels) went with it.
      expect(await until(() => cliSessions(listenApp), (s) => s.length === 0)).toEqual([])
      const final = screen()
      outputs.push(final)
      expect(final).not.toContain(password)
    } finally {
      tmux(unique, "kill-server")
    }
  })
})

/** A command run in a fresh tmux server of its own, its exit code shown on the screen after it ends. */
const inTmux = (args: ReadonlyArray<string>, height = 50) => {
  const socket = `dbpool-cli-${process.pid}-${Date.now()}`
  const command = [node, ...nodeFlags, main, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ")
  const started = tmux(
    socket, "new-session", "-d", "-s", socket, "-x", "200", "-y", String(height), "-e", `DATABASE_URL=${url}`,
    `trap : INT; ${command}; echo "dbpool exited with $?"; sleep 600`
  )
  return {
    started,
    screen: () => tmux(socket, "capture-pane", "-p", "-t", socket).stdout,
    ctrlC: () => void tmux(socket, "send-keys", "-t", socket, "C-c"),
    kill: () => void tmux(socket, "kill-server")
  }
}

describe.skipIf(!hasTmux)("dbpool stats --watch (in tmux)", () => {
  it("redraws its figures in place as they change, and stops cleanly on Ctrl-C", async () => {
    const channel = `cli_watch_${process.pid}`
    const watchApp = `${appName}-watch-${process.pid}`
    const otherApp = `${appName}-other-${process.pid}`
    const term = inTmux(["stats", "--watch", "--interval", "300ms", "--listen", channel, "--application-name", watchApp], 80)
    const other = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: otherApp } })
    const refreshOf = (s: string) => Number(/ · refresh (\d+) every 300ms · Ctrl-C to stop/.exec(s)?.[1] ?? 0)
    try {
      expect(term.started.stderr).toBe("")
      expect(term.started.code).toBe(0)
      // Node compiling the TypeScript sources takes seconds on a busy machine: a generous first wait.
      // The listener connects on its own: a frame drawn before its LISTEN has landed does not show it yet.
      const first = await until(
        term.screen,
        (s) => refreshOf(s) > 0 && rowOf(s, watchApp, "idle") !== undefined && rowOf(s, "yes") !== undefined,
        30_000
      )
      expect(first).toMatch(/^dbpool stats · server [^ ]+:\d+\/\w+ · \d{4}-\d\d-\d\dT[\d:.]+Z · refresh \d+ every 300ms · Ctrl-C to stop$/m)
      // Its listener is connected and LISTENs on the channel; nothing delivered yet.
      expect(rowOf(first, "yes")).toEqual(["yes", "1", channel, "1", "0", "0", "0"])
      // Redrawn, not scrolled: a later frame replaced the first at the top of the screen.
      const later = await until(term.screen, (s) => refreshOf(s) > refreshOf(first))
      expect(refreshOf(later)).toBeGreaterThan(refreshOf(first))
      expect(later.split("\n")[0]).toMatch(/^dbpool stats · /)
      expect(later.match(/dbpool stats · /g)).toHaveLength(1)

      // Two notifications: the listener's delivered count goes to 2.
      await observer.notify(channel, "one")
      await observer.notify(channel, "two")
      const delivered = await until(term.screen, (s) => rowOf(s, "yes")?.[4] === "2")
      expect(rowOf(delivered, "yes")).toEqual(["yes", "1", channel, "1", "2", "0", "0"])

      // Another application's session, in an open transaction: its row appears with the transaction's age...
      const reserved = await other.reserve()
      await reserved`BEGIN`
      await reserved`SELECT 1`
      const inTransaction = await until(term.screen, (s) => rowOf(s, otherApp, "idle in transaction") !== undefined)
      expect(rowOf(inTransaction, otherApp, "idle in transaction")).toEqual([otherApp, "idle in transaction", "1", expect.stringMatching(/^\d+(ms|\.\ds)$/), "-", "0"])
      // ...and goes once the session ends.
      await reserved`ROLLBACK`
      reserved.release()
      await other.end({ timeout: 1 })
      expect(rowOf(await until(term.screen, (s) => !s.includes(otherApp)), otherApp)).toBeUndefined()

      term.ctrlC()
      const after = await until(term.screen, (s) => s.includes("dbpool exited with"))
      expect(after).toContain("dbpool exited with 0")
      // The last frame stays on the screen, above the exit line.
      expect(after).toMatch(/listening channels: 1 of this CLI[^\n]*\n+(\^C)?dbpool exited with 0/)
      expect(await until(() => cliSessions(watchApp), (s) => s.length === 0)).toEqual([])
      outputs.push(after)
      expect(after).not.toContain(password)
    } finally {
      term.kill()
      await other.end({ timeout: 1 })
    }
  })
})

describe.skipIf(!hasTmux)("dbpool bench (in tmux)", () => {
  it("shows a live progress line, redrawn in place, then the summary", async () => {
    const benchApp = `${appName}-bench-tty-${process.pid}`
    const term = inTmux(["bench", "--duration", "4s", "--concurrency", "2", "--application-name", benchApp])
    const progress = /^bench (\d+\.\d)s\/4\.0s · (\d+) ops\/s · p50 (\d+\.\d\d) ms · p99 (\d+\.\d\d) ms · errors 0 · ops (\d+)$/m
    try {
      expect(term.started.code).toBe(0)
      const first = await until(term.screen, (s) => progress.test(s), 30_000)
      const [, elapsed, rate, p50, p99, ops] = progress.exec(first) ?? []
      expect(Number(rate)).toBeGreaterThan(0)
      expect(Number(p50)).toBeLessThanOrEqual(Number(p99))
      expect(Number(ops)).toBeGreaterThan(0)
      // Live: a later reading shows more time and more ops, on the same single line.
      const later = await until(term.screen, (s) => Number(progress.exec(s)?.[1] ?? 0) > Number(elapsed))
      expect(Number(progress.exec(later)?.[5])).toBeGreaterThan(Number(ops))
      expect(later.split("\n").filter((line) => /^bench \d/.test(line))).toHaveLength(1)

      const done = await until(term.screen, (s) => s.includes("dbpool exited with"), 30_000)
      expect(done).toContain("dbpool exited with 0")
      expect(done).toMatch(/^ops +\d+ \(\d+ ops\/s\)$/m)
      expect(done).toMatch(/^errors +0$/m)
      expect(done).toMatch(/^latency ms +p50 [\d.]+ · p90 [\d.]+ · p99 [\d.]+ · max [\d.]+$/m)
      // The progress line was wiped before the summary.
      expect(done).not.toMatch(progress)
      expect(await until(() => cliSessions(benchApp), (s) => s.length === 0)).toEqual([])
      outputs.push(done)
      expect(done).not.toContain(password)
    } finally {
      term.kill()
    }
  })
})

describe("secrets", () => {
  it("the password appears in no output", () => {
    expect(outputs.length).toBeGreaterThan(10)
    for (const output of outputs) expect(output).not.toContain(password)
  })
})
