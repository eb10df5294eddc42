/**
 * The `dbpool` command line (packages/cli), run as child processes with the
 * pinned Node and the same flags as the root `dbpool` script, against the
 * test server. `listen` runs inside tmux, as a person would run it, and is
 * stopped with Ctrl-C.
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

const dbpool = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}): Promise<Run> =>
  new Promise((resolve, reject) => {
    const child = spawn(node, [...nodeFlags, main, ...args], {
      cwd: root,
      env: { ...process.env, DATABASE_URL: "", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    child.on("error", reject)
    child.on("close", (code) => {
      outputs.push(stdout, stderr)
      resolve({ code, stdout, stderr })
    })
  })

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

  it("leaves no session behind", async () => {
    expect(await until(() => cliSessions(), (s) => s.length === 0)).toEqual([])
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

describe("--help", () => {
  it.each(["query", "dry-run", "notify", "listen"])("of %s has a description and examples", async (command) => {
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

describe("secrets", () => {
  it("the password appears in no output", () => {
    expect(outputs.length).toBeGreaterThan(10)
    for (const output of outputs) expect(output).not.toContain(password)
  })
})
