/**
 * effect-dbpool side by side with its peers: the same server, the same run,
 * each client in a child process of its own, clients interleaved per
 * workload. `pnpm bench` (full) or `pnpm bench:quick`.
 *
 * Steady state is what is measured: every client warms up (at least 2 s)
 * before its measured run, and effect-dbpool waits for its minSize
 * connections. Each case runs in three or more rounds, interleaved, with the
 * machine's CPU steal recorded per round (/proc/stat); figures are medians
 * over the rounds, ratios are taken within a round and reported as the
 * median with their spread, and every client's CPU time per operation is
 * reported — on shared cores a far steadier figure than operations per
 * second. One more case runs 16 s at c=64 in four slices, so that a
 * slow-down over time shows.
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
import { cpuTimes, median } from "./machine.ts"

const quick = process.argv.includes("--quick")
const mode = quick ? "quick" : "full"
const durationMs = quick ? 1500 : 5000
const warmupMs = quick ? 2000 : 3000
const rounds = 3
const longMs = 16_000
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
  /** Client CPU (user + system) per operation, µs. */
  readonly cpuUsPerOp: number | null
  /** CPU steal on the machine during the round, %. */
  readonly stealPct: number | null
  readonly round: number
  /** ops/s per slice of the measured run (the long case). */
  readonly sliceOpsPerSec?: ReadonlyArray<number> | undefined
}

interface Case {
  readonly workload: "point-select" | "write-transaction" | "partial-transaction" | "notify"
  readonly concurrency: number
  readonly poolSize: number
  readonly clients: ReadonlyArray<string>
  /** pgbench script, when pgbench can run this workload. */
  readonly pgbench?: string
  /** Runs once, for 16 s in four slices. */
  readonly long?: boolean
}

const queryClients = ["effect-dbpool", "effect-dbpool (SqlClient)", "postgres.js", "effect-sql-pg", "effect-sql-pg-multiplex", "pg-pool"]
/** Raw postgres.js called from fibers through Effect.promise, no pool logic (see worker.ts). */
const floorClient = "Effect over postgres.js"
/** Not peers of effect-dbpool: itself through effect/sql, and the floor. */
const notPeers = new Set(["effect-dbpool", "effect-dbpool (SqlClient)", floorClient, "pgbench"])
const pointScript = "\\set id random(1, 1000000)\nSELECT * FROM test_values WHERE id = :id;\n"
const txnScript =
  "\\set id random(1, 1000000)\nBEGIN;\nSELECT * FROM test_values WHERE id = :id FOR UPDATE;\nUPDATE test_values SET val2 = val2 + 1 WHERE id = :id;\nEND;\n"

const cases: ReadonlyArray<Case> = [
  ...[1, 64, 256].flatMap((concurrency) =>
    [4, 16].map((poolSize): Case => ({
      workload: "point-select",
      concurrency,
      poolSize,
      // Also the floor of any Effect wrapper over postgres.js: a reference, not a peer.
      clients: [...queryClients, floorClient],
      pgbench: pointScript
    }))
  ),
  { workload: "write-transaction", concurrency: 16, poolSize: 16, clients: [...queryClients, floorClient], pgbench: txnScript },
  { workload: "partial-transaction", concurrency: 16, poolSize: 16, clients: [...queryClients, floorClient] },
  { workload: "notify", concurrency: 16, poolSize: 1, clients: ["effect-dbpool", "postgres.js", "effect-sql-pg", "pg-listen"] }
]

/** Slow-down over time: 16 s at c=64 on 16 connections. */
const longCase: Case = {
  workload: "point-select",
  concurrency: 64,
  poolSize: 16,
  clients: quick ? ["effect-dbpool", "postgres.js", "effect-sql-pg-multiplex"] : queryClients,
  long: true
}

const runWorker = (url: string, client: string, c: Case, round: number): Promise<Result> =>
  new Promise((resolve, reject) => {
    const before = cpuTimes()
    const child = spawn(process.execPath, [
      "--experimental-strip-types",
      "--conditions=@effect-dbpool/source",
      "--no-warnings",
      Path.join(here, "worker.ts"),
      client,
      c.workload,
      String(c.concurrency),
      String(c.poolSize),
      String(c.long === true ? longMs : durationMs),
      String(warmupMs),
      String(c.long === true ? 4 : 1)
    ], { env: { ...process.env, BENCH_DATABASE_URL: url }, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout.on("data", (d: Buffer) => (out += d.toString()))
    child.stderr.on("data", (d: Buffer) => (err += d.toString()))
    child.on("close", (code) => {
      const line = out.trim().split("\n").pop() ?? ""
      if (code !== 0 || !line.startsWith("{")) return reject(new Error(`${client} ${c.workload} failed (${code}): ${err.slice(-2000)}`))
      // Our worker's own output.
      const r = JSON.parse(line) as {
        opsPerSec: number
        p50Ms: number
        p99Ms: number
        peakRssMb: number
        cpuUsPerOp: number | null
        sliceOpsPerSec: Array<number>
      }
      const after = cpuTimes()
      const stealPct = before === undefined || after === undefined || after.total === before.total
        ? null
        : (100 * (after.steal - before.steal)) / (after.total - before.total)
      resolve({
        workload: c.long === true ? "point-select-16s" : c.workload,
        concurrency: c.concurrency,
        poolSize: c.poolSize,
        client,
        opsPerSec: r.opsPerSec,
        p50Ms: r.p50Ms,
        p99Ms: r.p99Ms,
        peakRssMb: r.peakRssMb,
        cpuUsPerOp: r.cpuUsPerOp,
        stealPct,
        round,
        sliceOpsPerSec: c.long === true ? r.sliceOpsPerSec : undefined
      })
    })
  })

const pgbenchAvailable = spawnSync("pgbench", ["--version"]).status === 0

const runPgbench = (url: string, c: Case, round: number): Result | undefined => {
  if (c.pgbench === undefined || !pgbenchAvailable) return undefined
  const before = cpuTimes()
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
      peakRssMb: null,
      // pgbench's CPU is a separate process's, not comparable with the in-process clients.
      cpuUsPerOp: null,
      stealPct: ((after) =>
        before === undefined || after === undefined || after.total === before.total
          ? null
          : (100 * (after.steal - before.steal)) / (after.total - before.total))(cpuTimes()),
      round
    }
  } finally {
    Fs.rmSync(dir, { recursive: true, force: true })
  }
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

/** A client's figures over the rounds: medians, and its ratio to the best peer and to pgbench within each round. */
interface Summary extends Result {
  readonly minOpsPerSec: number
  readonly maxOpsPerSec: number
  readonly vsBestPeer: { readonly median: number; readonly min: number; readonly max: number } | null
  readonly vsPgbench: number | null
}

const summarize = (all: ReadonlyArray<Result>): Array<Summary> => {
  const byCase = new Map<string, Array<Result>>()
  for (const r of all) {
    const k = r.client === "pgbench" ? `${r.workload} c=${r.concurrency}` : key(r)
    byCase.set(`${k}|${r.client}`, [...(byCase.get(`${k}|${r.client}`) ?? []), r])
  }
  const summaries: Array<Summary> = []
  for (const rs of byCase.values()) {
    const first = rs[0]!
    const ratios: Array<number> = []
    const benchRatios: Array<number> = []
    if (first.client !== "pgbench") {
      for (const r of rs) {
        const peers = all.filter((x) =>
          key(x) === key(r) && x.round === r.round && !notPeers.has(x.client) && x.client !== r.client
        )
        const best = Math.max(...peers.map((x) => x.opsPerSec))
        if (peers.length > 0 && best > 0) ratios.push(r.opsPerSec / best)
        const bench = all.find((x) => x.client === "pgbench" && x.workload === r.workload && x.concurrency === r.concurrency && x.round === r.round)
        if (bench !== undefined && bench.opsPerSec > 0) benchRatios.push(r.opsPerSec / bench.opsPerSec)
      }
    }
    const ops = rs.map((r) => r.opsPerSec)
    summaries.push({
      ...first,
      opsPerSec: median(ops) ?? 0,
      minOpsPerSec: Math.min(...ops),
      maxOpsPerSec: Math.max(...ops),
      p50Ms: median(rs.map((r) => r.p50Ms)),
      p99Ms: median(rs.map((r) => r.p99Ms)),
      peakRssMb: median(rs.map((r) => r.peakRssMb)),
      cpuUsPerOp: median(rs.map((r) => r.cpuUsPerOp)),
      stealPct: median(rs.map((r) => r.stealPct)),
      vsBestPeer: ratios.length === 0 ? null : { median: median(ratios)!, min: Math.min(...ratios), max: Math.max(...ratios) },
      vsPgbench: median(benchRatios)
    })
  }
  return summaries
}

const main = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const context = yield* Layer.buildWithScope(
    layer({ sqlFile: Path.join(here, "..", "..", "..", "sql", "test_schema.sql"), settings: { "dbpool.seed_rows": "1000000" } }),
    scope
  )
  const server = Context.get(context, EmbeddedPostgres)
  const url = Redacted.value(server.url)
  console.log(
    `server: ${server.embedded ? `embedded Postgres, port ${server.port}` : "DATABASE_URL"}; ${mode} run: ${rounds} rounds, ` +
      `${warmupMs} ms warm-up and ${durationMs} ms measured per client and case, plus ${longMs / 1000} s at c=64 once`
  )
  if (!pgbenchAvailable) console.log("pgbench is not on the PATH: its rows are skipped")
  const all: Array<Result> = []
  const show = (r: Result) =>
    console.log(
      `  round ${r.round + 1}  ${key(r).padEnd(36)} ${r.client.padEnd(24)} ${Math.round(r.opsPerSec).toString().padStart(7)} ops/s` +
        `${r.cpuUsPerOp === null ? "" : `  ${r.cpuUsPerOp.toFixed(1).padStart(6)} µs CPU/op`}${r.stealPct === null ? "" : `  steal ${r.stealPct.toFixed(1)}%`}`
    )
  for (let round = 0; round < rounds; round++) {
    for (const c of cases) {
      // Rotate the order between rounds so that no client always runs first.
      const clients = c.clients.map((_, i) => c.clients[(i + round) % c.clients.length]!)
      for (const client of clients) {
        const r = yield* Effect.promise(() => runWorker(url, client, c, round))
        all.push(r)
        show(r)
      }
      // pgbench opens one connection per client: it runs once per workload and concurrency, not per pool size.
      if (!all.some((r) => r.client === "pgbench" && r.round === round && r.workload === c.workload && r.concurrency === c.concurrency)) {
        const b = runPgbench(url, c, round)
        if (b !== undefined) {
          all.push(b)
          show(b)
        }
      }
    }
  }
  for (const client of longCase.clients) {
    const r = yield* Effect.promise(() => runWorker(url, client, longCase, 0))
    all.push(r)
    show(r)
    console.log(`      slices of 4 s: ${(r.sliceOpsPerSec ?? []).map((x) => Math.round(x)).join(" → ")} ops/s`)
  }
  yield* Scope.close(scope, Exit.void)

  const results = summarize(all)
  const lines = [
    "| workload | c | pool | client | ops/s (median) | min–max | CPU µs/op | p50 ms | p99 ms | peak RSS MB | vs best peer (median, min–max) | vs pgbench | steal % |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  ]
  for (const c of [...cases, { ...longCase, workload: "point-select-16s" as const }]) {
    const rows = results
      .filter((r) => r.workload === c.workload && r.concurrency === c.concurrency && (r.poolSize === c.poolSize || r.client === "pgbench"))
      .sort((a, b) => Number(a.client === "pgbench") - Number(b.client === "pgbench"))
    for (const r of rows) {
      const slicesNote = r.sliceOpsPerSec === undefined ? "" : ` (${r.sliceOpsPerSec.map((x) => Math.round(x)).join("→")})`
      lines.push(
        `| ${r.workload} | ${r.concurrency} | ${r.client === "pgbench" ? `${r.poolSize} conns` : r.poolSize} | ${r.client} | ${Math.round(r.opsPerSec)}${slicesNote} | ${
          Math.round(r.minOpsPerSec)
        }–${Math.round(r.maxOpsPerSec)} | ${fmt(r.cpuUsPerOp)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.peakRssMb)} | ${
          r.vsBestPeer === null ? "—" : `${r.vsBestPeer.median.toFixed(2)}× (${r.vsBestPeer.min.toFixed(2)}–${r.vsBestPeer.max.toFixed(2)})`
        } | ${r.vsPgbench === null ? "—" : `${r.vsPgbench.toFixed(2)}×`} | ${fmt(r.stealPct)} |`
      )
    }
  }
  const table = lines.join("\n")
  console.log(`\n${table}\n`)
  Fs.mkdirSync(resultsDir, { recursive: true })
  const meta = { mode, durationMs, warmupMs, rounds, longMs, node: process.version, cpus: Os.cpus().length, cpu: Os.cpus()[0]?.model, date: new Date().toISOString() }
  Fs.writeFileSync(Path.join(resultsDir, `bench-${mode}.json`), JSON.stringify({ meta, results, rounds: all }, null, 2) + "\n")
  Fs.writeFileSync(Path.join(resultsDir, `bench-${mode}.svg`), chart(results))
  Fs.writeFileSync(Path.join(resultsDir, `bench-${mode}.md`), table + "\n")
  console.log(`wrote ${Path.relative(process.cwd(), Path.join(resultsDir, `bench-${mode}.json`))} and .svg`)
  console.log(JSON.stringify({ results }))
})

Effect.runPromise(main).catch((error: unknown) => {
  console.error(error)
  process.exit(1)
})
