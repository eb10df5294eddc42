/**
 * effect-dbpool side by side with its peers: the same server, the same run,
 * each client in a child process of its own, clients interleaved per
 * workload. `pnpm bench` (full) or `pnpm bench:quick`.
 *
 * Prints a table, writes results/bench-<mode>.json and .svg, and prints as
 * its very last line one JSON object {"results":[…]}.
 */
import { EmbeddedPostgres, layer } from "@effect-dbpool/embedded-postgres"
import { Context, Effect, Exit, Layer, Redacted, Scope } from "effect"
import { spawn, spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { percentile } from "./load.ts"

const quick = process.argv.includes("--quick")
const mode = quick ? "quick" : "full"
const durationMs = quick ? 1200 : 5000
const warmupMs = quick ? 300 : 1000
const rounds = quick ? 1 : 2
const here = Path.dirname(fileURLToPath(import.meta.url))
const resultsDir = Path.join(here, "..", "results")

interface Result {
  readonly workload: string
  readonly concurrency: number
  readonly poolSize: number
  readonly client: string
  readonly opsPerSec: number
  readonly p50Ms: number | null
  readonly p99Ms: number | null
  readonly peakRssMb: number | null
}

interface Case {
  readonly workload: "point-select" | "write-transaction" | "partial-transaction" | "notify"
  readonly concurrency: number
  readonly poolSize: number
  readonly clients: ReadonlyArray<string>
  /** pgbench script, when pgbench can run this workload. */
  readonly pgbench?: string
}

const queryClients = ["effect-dbpool", "postgres.js", "effect-sql-pg", "effect-sql-pg-multiplex", "pg-pool"]
const pointScript = "\\set id random(1, 1000000)\nSELECT * FROM test_values WHERE id = :id;\n"
const txnScript =
  "\\set id random(1, 1000000)\nBEGIN;\nSELECT * FROM test_values WHERE id = :id FOR UPDATE;\nUPDATE test_values SET val2 = val2 + 1 WHERE id = :id;\nEND;\n"

const cases: ReadonlyArray<Case> = [
  ...[1, 64, 256].flatMap((concurrency) =>
    [4, 16].map((poolSize): Case => ({ workload: "point-select", concurrency, poolSize, clients: queryClients, pgbench: pointScript }))
  ),
  { workload: "write-transaction", concurrency: 16, poolSize: 16, clients: queryClients, pgbench: txnScript },
  { workload: "partial-transaction", concurrency: 16, poolSize: 16, clients: queryClients },
  { workload: "notify", concurrency: 16, poolSize: 1, clients: ["effect-dbpool", "postgres.js", "effect-sql-pg", "pg-listen"] }
]

const runWorker = (url: string, client: string, c: Case): Promise<Result> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [
      "--experimental-strip-types",
      "--no-warnings",
      Path.join(here, "worker.ts"),
      client,
      c.workload,
      String(c.concurrency),
      String(c.poolSize),
      String(durationMs),
      String(warmupMs)
    ], { env: { ...process.env, BENCH_DATABASE_URL: url }, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout.on("data", (d: Buffer) => (out += d.toString()))
    child.stderr.on("data", (d: Buffer) => (err += d.toString()))
    child.on("close", (code) => {
      const line = out.trim().split("\n").pop() ?? ""
      if (code !== 0 || !line.startsWith("{")) return reject(new Error(`${client} ${c.workload} failed (${code}): ${err.slice(-2000)}`))
      const r = JSON.parse(line) as { opsPerSec: number; p50Ms: number; p99Ms: number; peakRssMb: number } // our worker's own output
      resolve({ workload: c.workload, concurrency: c.concurrency, poolSize: c.poolSize, client, opsPerSec: r.opsPerSec, p50Ms: r.p50Ms, p99Ms: r.p99Ms, peakRssMb: r.peakRssMb })
    })
  })

const pgbenchAvailable = spawnSync("pgbench", ["--version"]).status === 0

const runPgbench = (url: string, c: Case): Result | undefined => {
  if (c.pgbench === undefined || !pgbenchAvailable) return undefined
  const u = new URL(url)
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "dbpool-pgbench-"))
  try {
    Fs.writeFileSync(Path.join(dir, "script.sql"), c.pgbench)
    // pgbench needs whole seconds, and at c=256 its connections alone take about a second.
    const seconds = Math.max(3, Math.round(durationMs / 1000))
    const out = spawnSync("pgbench", [
      "-n", "-M", "prepared", "-c", String(c.concurrency), "-j", String(Math.min(2, c.concurrency)),
      "-T", String(seconds), "-f", "script.sql", "-l", "--sampling-rate", "0.2"
    ], {
      cwd: dir,
      encoding: "utf8",
      env: {
        ...process.env,
        PGHOST: u.hostname,
        PGPORT: u.port,
        PGUSER: decodeURIComponent(u.username),
        PGPASSWORD: decodeURIComponent(u.password),
        PGDATABASE: u.pathname.slice(1) || "postgres"
      }
    })
    const tps = /tps = ([0-9.]+) \(without initial connection time\)/.exec(out.stdout)
    if (tps === null) throw new Error(`pgbench failed: ${out.stderr.slice(-1000)}`)
    const latencies: Array<number> = []
    for (const file of Fs.readdirSync(dir).filter((f) => f.startsWith("pgbench_log"))) {
      for (const line of Fs.readFileSync(Path.join(dir, file), "utf8").split("\n")) {
        const us = Number(line.split(" ")[2])
        if (Number.isFinite(us)) latencies.push(us / 1000)
      }
    }
    const sorted = Float64Array.from(latencies).sort()
    return {
      workload: c.workload,
      concurrency: c.concurrency,
      poolSize: c.concurrency,
      client: "pgbench",
      opsPerSec: Number(tps[1]),
      p50Ms: latencies.length > 0 ? percentile(sorted, 50) : null,
      p99Ms: latencies.length > 0 ? percentile(sorted, 99) : null,
      peakRssMb: null
    }
  } finally {
    Fs.rmSync(dir, { recursive: true, force: true })
  }
}

const mean = (xs: ReadonlyArray<number | null>): number | null => {
  const ns = xs.filter((x): x is number => x !== null && Number.isFinite(x))
  return ns.length === 0 ? null : ns.reduce((a, b) => a + b, 0) / ns.length
}

const key = (r: { workload: string; concurrency: number; poolSize: number }) => `${r.workload} c=${r.concurrency} pool=${r.poolSize}`

const fmt = (n: number | null, digits = 1) => (n === null ? "—" : n.toFixed(digits))

const chart = (results: ReadonlyArray<Result>): string => {
  const groups = [...new Set(results.filter((r) => r.client !== "pgbench" || true).map(key))]
  const clients = [...new Set(results.map((r) => r.client))]
  const colors = ["#2563eb", "#f59e0b", "#10b981", "#8b5cf6", "#ef4444", "#6b7280", "#14b8a6"]
  const barH = 9
  const groupH = clients.length * barH + 18
  const left = 230
  const width = 900
  const max = Math.max(...results.map((r) => r.opsPerSec))
  let y = 40
  let body = ""
  for (const g of groups) {
    body += `<text x="4" y="${y + 10}" font-size="11" font-family="sans-serif">${g}</text>`
    for (const [i, client] of clients.entries()) {
      const r = results.find((x) => key(x) === g && x.client === client)
      if (r === undefined) continue
      const w = Math.max(1, ((width - left - 90) * r.opsPerSec) / max)
      body += `<rect x="${left}" y="${y + i * barH}" width="${w.toFixed(1)}" height="${barH - 1}" fill="${colors[i % colors.length]}"/>`
      body += `<text x="${left + w + 4}" y="${y + i * barH + 8}" font-size="8" font-family="sans-serif">${Math.round(r.opsPerSec)}</text>`
    }
    y += groupH
  }
  const legend = clients.map((c, i) =>
    `<rect x="${4 + i * 125}" y="8" width="10" height="10" fill="${colors[i % colors.length]}"/><text x="${18 + i * 125}" y="17" font-size="11" font-family="sans-serif">${c}</text>`
  ).join("")
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y + 10}" viewBox="0 0 ${width} ${y + 10}"><rect width="100%" height="100%" fill="white"/>${legend}<text x="4" y="32" font-size="10" font-family="sans-serif">operations (or notifications) per second — ${mode} run</text>${body}</svg>\n`
}

const main = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const context = yield* Layer.buildWithScope(
    layer({ sqlFile: Path.join(here, "..", "..", "..", "sql", "test_schema.sql"), settings: { "dbpool.seed_rows": "1000000" } }),
    scope
  )
  const server = Context.get(context, EmbeddedPostgres)
  const url = Redacted.value(server.url)
  console.log(`server: ${server.embedded ? `embedded Postgres, port ${server.port}` : "DATABASE_URL"}; ${mode} run, ${durationMs} ms per client and case, ${rounds} round(s)`)
  if (!pgbenchAvailable) console.log("pgbench is not on the PATH: its rows are skipped")
  const all: Array<Result> = []
  const pgbenchRuns = new Set<string>()
  for (let round = 0; round < rounds; round++) {
    for (const c of cases) {
      // Alternate the order between rounds so that no client always runs first.
      const clients = round % 2 === 0 ? c.clients : [...c.clients].reverse()
      for (const client of clients) {
        const r = yield* Effect.promise(() => runWorker(url, client, c))
        all.push(r)
        console.log(`  ${key(c).padEnd(36)} ${client.padEnd(24)} ${Math.round(r.opsPerSec).toString().padStart(7)} ops/s`)
      }
      // pgbench opens one connection per client: it runs once per workload and concurrency, not per pool size.
      const pgbenchKey = `${round}|${c.workload}|${c.concurrency}`
      const b = pgbenchRuns.has(pgbenchKey) ? undefined : runPgbench(url, c)
      pgbenchRuns.add(pgbenchKey)
      if (b !== undefined) {
        all.push(b)
        console.log(`  ${key(c).padEnd(36)} ${"pgbench".padEnd(24)} ${Math.round(b.opsPerSec).toString().padStart(7)} ops/s`)
      }
    }
  }
  yield* Scope.close(scope, Exit.void)

  // Average the rounds.
  const merged = new Map<string, Array<Result>>()
  for (const r of all) {
    const k = `${key(r)}|${r.client}`
    merged.set(k, [...(merged.get(k) ?? []), r])
  }
  const results: Array<Result> = [...merged.values()].map((rs) => ({
    ...rs[0]!,
    opsPerSec: mean(rs.map((r) => r.opsPerSec)) ?? 0,
    p50Ms: mean(rs.map((r) => r.p50Ms)),
    p99Ms: mean(rs.map((r) => r.p99Ms)),
    peakRssMb: mean(rs.map((r) => r.peakRssMb))
  }))

  const lines = [
    "| workload | c | pool | client | ops/s | p50 ms | p99 ms | peak RSS MB | vs best peer | vs pgbench |",
    "|---|---|---|---|---|---|---|---|---|---|"
  ]
  for (const c of cases) {
    const rows = results
      .filter((r) => r.workload === c.workload && r.concurrency === c.concurrency && (r.poolSize === c.poolSize || r.client === "pgbench"))
      .sort((a, b) => Number(a.client === "pgbench") - Number(b.client === "pgbench"))
    const peers = rows.filter((r) => r.client !== "effect-dbpool" && r.client !== "pgbench")
    const best = Math.max(...peers.map((r) => r.opsPerSec))
    const bench = rows.find((r) => r.client === "pgbench")
    for (const r of rows) {
      lines.push(
        `| ${r.workload} | ${r.concurrency} | ${r.client === "pgbench" ? `${r.poolSize} conns` : r.poolSize} | ${r.client} | ${Math.round(r.opsPerSec)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.peakRssMb)} | ${
          r.client === "pgbench" ? "—" : `${(r.opsPerSec / best).toFixed(2)}×`
        } | ${bench === undefined || r.client === "pgbench" ? "—" : `${(r.opsPerSec / bench.opsPerSec).toFixed(2)}×`} |`
      )
    }
  }
  const table = lines.join("\n")
  console.log(`\n${table}\n`)
  Fs.mkdirSync(resultsDir, { recursive: true })
  const meta = { mode, durationMs, rounds, node: process.version, cpus: Os.cpus().length, cpu: Os.cpus()[0]?.model, date: new Date().toISOString() }
  Fs.writeFileSync(Path.join(resultsDir, `bench-${mode}.json`), JSON.stringify({ meta, results }, null, 2) + "\n")
  Fs.writeFileSync(Path.join(resultsDir, `bench-${mode}.svg`), chart(results))
  Fs.writeFileSync(Path.join(resultsDir, `bench-${mode}.md`), table + "\n")
  console.log(`wrote ${Path.relative(process.cwd(), Path.join(resultsDir, `bench-${mode}.json`))} and .svg`)
  console.log(JSON.stringify({ results }))
})

Effect.runPromise(main).catch((error: unknown) => {
  console.error(error)
  process.exit(1)
})
