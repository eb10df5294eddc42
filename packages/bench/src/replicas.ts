/**
 * Reads over 0, 1 and 2 streaming replicas, on one machine. `pnpm bench:replicas`
 * (full) or `pnpm bench:replicas --quick`.
 *
 * An embedded cluster (`Cluster.layer`: a primary and two streaming replicas,
 * the 1,000,000-row schema; always embedded, `DATABASE_URL` is not used) serves
 * every case; each case runs in a child process of its own (this file with
 * `--worker`), the cases interleaved and their order rotated per round, with
 * the same method as `pnpm bench`: a warm-up before the measured run, the read
 * pools' `readMinSize` connections open before anything is measured, client
 * CPU per operation, the machine's CPU steal and busy share per run (/proc/stat).
 * Figures are medians over the rounds; ratios are taken within a round.
 *
 * Cases:
 * - `read` (point select by random id, c=32) through `ReadPool`: with no
 *   `readUrls` (read-only sessions on the primary, 16 connections); one
 *   replica as a plain `readUrl` (no router: the control) and through
 *   `readUrls` (the router), 16 connections; two replicas, 8 connections each
 *   (the same 16 in all), without and under a `ReadYourWrites` token every
 *   replica has long replayed (the routing cost of a token that needs no
 *   wait); and two replicas with 16 each (32 in all: what more backends than
 *   cores costs);
 * - `write→read` (c=8): an UPDATE … RETURNING on the primary, then a read of the
 *   same row — on the primary (`WritePool`), on the replicas under the write's
 *   token (`tokenOf` + `withToken`), or on the replicas without a token,
 *   counting the reads that did not see their own write.
 *
 * Besides the client's CPU per operation, the CPU of the cluster's Postgres
 * processes (all three servers: backends, WAL sender and receiver, replay) is
 * read from /proc over the measured run: on shared cores the two together
 * are what bounds throughput. BENCH_CASES=read-0,read-2 runs only those cases.
 *
 * Prints the rounds and a table; a full run of every case writes
 * results/replicas-full.json and .md.
 */
import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
import { Context, Effect, Exit, Layer, Redacted, References, Scope } from "effect"
import { DbPool, ReadPool, ReadYourWrites, sql, WritePool } from "effect-dbpool"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import postgres from "postgres"
import { percentile, randomId, runEffectLoad, type Sample } from "./load.ts"
import { cpuTimes, median } from "./machine.ts"

const here = Path.dirname(fileURLToPath(import.meta.url))
const rows = 1_000_000

// ---------------------------------------------------------------------------------------------------------------------
// cases

interface Case {
  readonly id: string
  readonly workload: "read" | "write→read"
  readonly label: string
  readonly replicas: 0 | 1 | 2
  readonly concurrency: number
  /** Connections per server: the read pool's (each replica's), and the write pool's for write→read. */
  readonly poolSize: number
  /** read: under an old token; write→read: where the read goes. */
  readonly variant: "plain" | "token" | "primary"
  /** The one replica as a plain `readUrl`: a read pool with no router in front (the routing cost's control). */
  readonly direct?: boolean
}

const allCases: ReadonlyArray<Case> = [
  { id: "read-0", workload: "read", label: "0 replicas: read-only sessions on the primary", replicas: 0, concurrency: 32, poolSize: 16, variant: "plain" },
  { id: "read-1-direct", workload: "read", label: "1 replica as a plain readUrl (no router)", replicas: 1, concurrency: 32, poolSize: 16, variant: "plain", direct: true },
  { id: "read-1", workload: "read", label: "1 replica (readUrls)", replicas: 1, concurrency: 32, poolSize: 16, variant: "plain" },
  { id: "read-2", workload: "read", label: "2 replicas (readUrls)", replicas: 2, concurrency: 32, poolSize: 8, variant: "plain" },
  { id: "read-2-token", workload: "read", label: "2 replicas, reads under a replayed token", replicas: 2, concurrency: 32, poolSize: 8, variant: "token" },
  { id: "read-2-16", workload: "read", label: "2 replicas, 16 connections each", replicas: 2, concurrency: 32, poolSize: 16, variant: "plain" },
  { id: "wr-primary", workload: "write→read", label: "read back on the primary (WritePool)", replicas: 0, concurrency: 8, poolSize: 8, variant: "primary" },
  { id: "wr-token", workload: "write→read", label: "read back on 2 replicas, writeToken + withToken", replicas: 2, concurrency: 8, poolSize: 8, variant: "token" },
  { id: "wr-plain", workload: "write→read", label: "read back on 2 replicas, no token", replicas: 2, concurrency: 8, poolSize: 8, variant: "plain" }
]

/** The connections a case reads (and writes) on, per server: "16", "8+8", "8 + 8+8". */
const connections = (c: Case): string => {
  const reads = c.variant === "primary" ? "" : Array.from({ length: Math.max(1, c.replicas) }, () => String(c.poolSize)).join("+")
  return c.workload === "read" ? reads : reads === "" ? `${c.poolSize}` : `${c.poolSize} + ${reads}`
}

/** BENCH_CASES=read-0,read-1 runs only those (comma-separated ids). */
const only = (process.env["BENCH_CASES"] ?? "").split(",").filter((id) => id !== "")
const cases = only.length === 0 ? allCases : allCases.filter((c) => only.includes(c.id))

// ---------------------------------------------------------------------------------------------------------------------
// worker: node replicas.ts --worker <case id> <durationMs> <warmupMs>, URLs in BENCH_PRIMARY_URL / BENCH_READ_URLS

interface WorkerResult {
  readonly opsPerSec: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly cpuUsPerOp: number | null
  /** CPU of the cluster's Postgres processes (all three servers: backends, WAL sender/receiver, replay) per operation, µs. */
  readonly serverCpuUsPerOp: number | null
  /** write→read: reads that did not see their own write. */
  readonly stale: number
  readonly ops: number
}

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ: 100 on Linux, whatever the kernel's HZ). */
const userHz = 100

/** The postmaster of each server: the parent of a backend of it. */
const postmasters = async (urls: ReadonlyArray<string>): Promise<Set<number>> => {
  const pids = new Set<number>()
  for (const url of urls) {
    const q = postgres(url, { max: 1, onnotice: () => {} })
    try {
      const [row] = await q<Array<{ pid: number }>>`SELECT pg_backend_pid() AS pid`
      const stat = Fs.readFileSync(`/proc/${row?.pid}/stat`, "utf8")
      pids.add(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]))
    } finally {
      await q.end({ timeout: 1 })
    }
  }
  return pids
}

/** User + system CPU so far of the postmasters and all their children, ms (undefined without /proc). */
const serverCpuMs = (parents: ReadonlySet<number>): number | undefined => {
  try {
    let ticks = 0
    for (const entry of Fs.readdirSync("/proc")) {
      if (!/^[0-9]+$/.test(entry)) continue
      let stat: string
      try {
        stat = Fs.readFileSync(`/proc/${entry}/stat`, "utf8")
      } catch {
        continue // exited meanwhile
      }
      // After "pid (comm) ": state ppid … utime is field 14 and stime 15 of the whole line.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      if (parents.has(Number(entry)) || parents.has(Number(fields[1]))) ticks += Number(fields[11]) + Number(fields[12])
    }
    return (ticks * 1000) / userHz
  } catch {
    return undefined
  }
}

const worker = async (caseId: string, durationMs: number, warmupMs: number) => {
  const c = allCases.find((x) => x.id === caseId)
  if (c === undefined) throw new Error(`unknown case ${caseId}`)
  const primary = Redacted.make(process.env["BENCH_PRIMARY_URL"] ?? "")
  const readUrls = (process.env["BENCH_READ_URLS"] ?? "").split(",").filter((u) => u !== "").slice(0, c.replicas).map((u) => Redacted.make(u))
  const layer = DbPool.layer({
    url: primary,
    ...(c.direct === true ? { readUrl: readUrls[0] } : readUrls.length > 0 ? { readUrls } : {}),
    minSize: c.workload === "write→read" ? c.poolSize : 0,
    maxSize: c.poolSize,
    readMinSize: c.variant === "primary" ? 0 : c.poolSize,
    readMaxSize: c.poolSize
  }).pipe(Layer.provideMerge(Layer.succeed(References.MinimumLogLevel, "Error")))
  const servers = await postmasters([process.env["BENCH_PRIMARY_URL"] ?? "", ...(process.env["BENCH_READ_URLS"] ?? "").split(",").filter((u) => u !== "")]).catch(() => new Set<number>())
  let stale = 0
  let counting = false
  const program = Effect.gen(function*() {
    const read = yield* ReadPool
    const write = yield* WritePool
    // Steady state: every connection the case uses is open before anything is measured (bounded: 10 s).
    const readTarget = c.variant === "primary" ? 0 : c.poolSize * Math.max(1, c.replicas)
    const writeTarget = c.workload === "write→read" ? c.poolSize : 0
    for (let i = 0; i < 1000; i++) {
      if ((yield* read.stats).idle >= readTarget && (yield* write.stats).idle >= writeTarget) break
      yield* Effect.sleep("10 millis")
    }
    let op: () => Effect.Effect<unknown, unknown>
    if (c.workload === "read") {
      const point = () => read.run(sql`SELECT * FROM test_values WHERE id = ${randomId(rows)}`)
      // A token every replica has replayed (the schema's load): the router checks it, nothing waits.
      const old = yield* ReadYourWrites.writeToken
      op = c.variant === "token" ? () => point().pipe(ReadYourWrites.withToken(old)) : point
    } else {
      const readBack = c.variant === "primary" ? write : read
      op = () =>
        Effect.gen(function*() {
          const id = randomId(rows)
          const [written] = yield* write.run(sql`UPDATE test_values SET val2 = val2 + 1 WHERE id = ${id} RETURNING val2`)
          const token = c.variant === "token" ? yield* ReadYourWrites.tokenOf(write) : undefined
          const [seen] = yield* readBack.run(sql`SELECT val2 FROM test_values WHERE id = ${id}`).pipe(ReadYourWrites.withToken(token))
          // Other callers only ever increase val2: a smaller value is one from before this caller's write.
          if (counting && Number(seen?.["val2"]) < Number(written?.["val2"])) stale++
        })
    }
    if (warmupMs > 0) yield* runEffectLoad(op, c.concurrency, warmupMs)
    counting = true
    const serverBefore = serverCpuMs(servers)
    const cpuBefore = process.cpuUsage()
    const sample: Sample = yield* runEffectLoad(op, c.concurrency, durationMs)
    const cpu = process.cpuUsage(cpuBefore)
    const serverAfter = serverCpuMs(servers)
    counting = false
    const serverMs = serverBefore === undefined || serverAfter === undefined || servers.size === 0 ? undefined : serverAfter - serverBefore
    return { sample, cpu, serverMs }
  })
  const { sample, cpu, serverMs } = await Effect.runPromise(Effect.orDie(program).pipe(Effect.provide(layer), Effect.orDie))
  const sorted = sample.latenciesMs.slice().sort()
  const result: WorkerResult = {
    opsPerSec: sample.ops / sample.seconds,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    cpuUsPerOp: sample.ops === 0 ? null : (cpu.user + cpu.system) / sample.ops,
    serverCpuUsPerOp: sample.ops === 0 || serverMs === undefined ? null : (serverMs * 1000) / sample.ops,
    stale,
    ops: sample.ops
  }
  process.stdout.write(JSON.stringify(result) + "\n")
  process.exit(0)
}

// ---------------------------------------------------------------------------------------------------------------------
// main: the cluster, the rounds, the table

interface Run extends WorkerResult {
  readonly caseId: string
  readonly round: number
  readonly stealPct: number | null
  /** Share of the machine's CPU in use during the run (both cores), %. */
  readonly busyPct: number | null
  /** Transactions counted by each server during the run (pg_stat_database), primary first. */
  readonly perServer: ReadonlyArray<number>
}

const runWorker = (c: Case, round: number, urls: { primary: string; replicas: ReadonlyArray<string> }, durationMs: number, warmupMs: number) =>
  new Promise<Omit<Run, "perServer">>((resolve, reject) => {
    const before = cpuTimes()
    const child = spawn(process.execPath, [
      "--experimental-strip-types",
      "--conditions=@effect-dbpool/source",
      "--no-warnings",
      fileURLToPath(import.meta.url),
      "--worker",
      c.id,
      String(durationMs),
      String(warmupMs)
    ], {
      env: { ...process.env, BENCH_PRIMARY_URL: urls.primary, BENCH_READ_URLS: urls.replicas.join(",") },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    let err = ""
    child.stdout.on("data", (d: Buffer) => (out += d.toString()))
    child.stderr.on("data", (d: Buffer) => (err += d.toString()))
    child.on("close", (code) => {
      const line = out.trim().split("\n").pop() ?? ""
      if (code !== 0 || !line.startsWith("{")) return reject(new Error(`${c.id} failed (${code}): ${err.slice(-2000)}`))
      const after = cpuTimes()
      const span = before === undefined || after === undefined ? 0 : after.total - before.total
      resolve({
        ...(JSON.parse(line) as WorkerResult),
        caseId: c.id,
        round,
        stealPct: span === 0 ? null : (100 * (after!.steal - before!.steal)) / span,
        busyPct: span === 0 ? null : 100 - (100 * (after!.idle - before!.idle)) / span
      })
    })
  })

const main = async () => {
  const quick = process.argv.includes("--quick")
  const mode = quick ? "quick" : "full"
  const durationMs = quick ? 1500 : 4000
  const warmupMs = quick ? 1500 : 2000
  const rounds = quick ? 3 : 5
  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(Layer.buildWithScope(
    Cluster.layer({
      replicas: 2,
      sqlFile: Path.join(here, "..", "..", "..", "sql", "test_schema.sql"),
      settings: { "dbpool.seed_rows": String(rows) },
      timeoutMillis: 120_000
    }),
    scope
  ))
  try {
    const cluster = Context.get(context, Cluster)
    const urls = { primary: Redacted.value(cluster.primary.url), replicas: cluster.replicas.map((r) => Redacted.value(r.url)) }
    const nodes = [cluster.primary, ...cluster.replicas]
    const clients = nodes.map((n) => postgres(Redacted.value(n.url), { max: 1, onnotice: () => {} }))
    const xacts = () =>
      Promise.all(clients.map(async (q) => {
        const [row] = await q<Array<{ n: string }>>`SELECT (xact_commit + xact_rollback)::text AS n FROM pg_stat_database WHERE datname = current_database()`
        return Number(row?.n ?? 0)
      }))
    console.log(
      `embedded cluster: primary + 2 streaming replicas, ${rows.toLocaleString("en")} rows; ${mode} run: ${rounds} rounds, ` +
        `${warmupMs} ms warm-up and ${durationMs} ms measured per case; ${Os.cpus().length} CPUs (${Os.cpus()[0]?.model ?? "?"}), Node ${process.version}`
    )
    const all: Array<Run> = []
    for (let round = 0; round < rounds; round++) {
      // Rotate the order between rounds so that no case always runs first.
      const order = cases.map((_, i) => cases[(i + round) % cases.length]!)
      for (const c of order) {
        // A write→read case leaves WAL behind: let every replica replay it before the next case starts.
        await Effect.runPromise(Effect.forEach(cluster.replicas, cluster.awaitReplay, { discard: true }))
        const before = await xacts()
        // A case whose worker fails runs once more (said so in the output), then the run fails.
        const r = await runWorker(c, round, urls, durationMs, warmupMs).catch((error: unknown) => {
          console.log(`  round ${round + 1}  ${c.id} failed, running it again: ${String(error).split("\n")[0]}`)
          return runWorker(c, round, urls, durationMs, warmupMs)
        })
        const after = await xacts()
        const run: Run = { ...r, perServer: after.map((n, i) => n - before[i]!) }
        all.push(run)
        const share = run.perServer.map((n) => n.toLocaleString("en")).join(" / ")
        console.log(
          `  round ${round + 1}  ${c.workload.padEnd(10)} ${`${c.label} [${connections(c)}]`.padEnd(58)} ${Math.round(run.opsPerSec).toString().padStart(6)} ops/s` +
            `  client ${run.cpuUsPerOp === null ? "—" : run.cpuUsPerOp.toFixed(1).padStart(6)}  server ${run.serverCpuUsPerOp === null ? "—" : run.serverCpuUsPerOp.toFixed(0).padStart(5)} µs CPU/op  p50 ${run.p50Ms.toFixed(2)} ms` +
            `  busy ${run.busyPct?.toFixed(0) ?? "—"}%  steal ${run.stealPct?.toFixed(1) ?? "—"}%  xacts primary/r1/r2 ${share}` +
            (c.workload === "write→read" ? `  stale ${run.stale}` : "")
        )
      }
    }
    await Promise.all(clients.map((q) => q.end({ timeout: 1 })))

    const lines = [
      "| workload | c | case | connections | ops/s (median) | min–max | vs first row (median, min–max) | client CPU µs/op | server CPU µs/op | p50 ms | p99 ms | stale reads | machine busy % | steal % |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    ]
    const summaries = cases.map((c) => {
      const runs = all.filter((r) => r.caseId === c.id)
      const base = cases.find((x) => x.workload === c.workload)!
      const ratios = runs.flatMap((r) => {
        const b = all.find((x) => x.caseId === base.id && x.round === r.round)
        return b === undefined || b.opsPerSec === 0 ? [] : [r.opsPerSec / b.opsPerSec]
      })
      const ops = runs.map((r) => r.opsPerSec)
      const summary = {
        ...c,
        opsPerSec: median(ops) ?? 0,
        minOpsPerSec: Math.min(...ops),
        maxOpsPerSec: Math.max(...ops),
        vsBase: { median: median(ratios) ?? 1, min: Math.min(...ratios), max: Math.max(...ratios) },
        cpuUsPerOp: median(runs.map((r) => r.cpuUsPerOp)),
        serverCpuUsPerOp: median(runs.map((r) => r.serverCpuUsPerOp)),
        p50Ms: median(runs.map((r) => r.p50Ms)),
        p99Ms: median(runs.map((r) => r.p99Ms)),
        stale: runs.reduce((n, r) => n + r.stale, 0),
        ops: runs.reduce((n, r) => n + r.ops, 0),
        busyPct: median(runs.map((r) => r.busyPct)),
        stealPct: median(runs.map((r) => r.stealPct))
      }
      const f = (n: number | null, d = 1) => (n === null ? "—" : n.toFixed(d))
      lines.push(
        `| ${c.workload} | ${c.concurrency} | ${c.label} | ${connections(c)} | ${Math.round(summary.opsPerSec)} | ${Math.round(summary.minOpsPerSec)}–${Math.round(summary.maxOpsPerSec)} | ` +
          `${c.id === base.id ? "1" : `${summary.vsBase.median.toFixed(2)}× (${summary.vsBase.min.toFixed(2)}–${summary.vsBase.max.toFixed(2)})`} | ` +
          `${f(summary.cpuUsPerOp)} | ${f(summary.serverCpuUsPerOp, 0)} | ${f(summary.p50Ms, 2)} | ${f(summary.p99Ms, 2)} | ` +
          `${c.workload === "write→read" ? `${summary.stale} of ${summary.ops.toLocaleString("en")}` : "—"} | ${f(summary.busyPct, 0)} | ${f(summary.stealPct)} |`
      )
      return summary
    })
    const table = lines.join("\n")
    console.log(`\n${table}\n`)
    if (!quick && only.length === 0) {
      const dir = Path.join(here, "..", "results")
      Fs.mkdirSync(dir, { recursive: true })
      const meta = { mode, durationMs, warmupMs, rounds, rows, node: process.version, cpus: Os.cpus().length, cpu: Os.cpus()[0]?.model, date: new Date().toISOString() }
      Fs.writeFileSync(Path.join(dir, "replicas-full.json"), JSON.stringify({ meta, summaries, rounds: all }, null, 2) + "\n")
      Fs.writeFileSync(Path.join(dir, "replicas-full.md"), table + "\n")
      console.log(`wrote ${Path.relative(process.cwd(), Path.join(dir, "replicas-full.json"))} and .md`)
    }
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

const workerAt = process.argv.indexOf("--worker")
const entry = workerAt >= 0
  ? worker(process.argv[workerAt + 1] ?? "", Number(process.argv[workerAt + 2]), Number(process.argv[workerAt + 3]))
  : main()
entry.catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.stack : String(error)}\n`)
  process.exit(1)
})
