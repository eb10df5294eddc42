/**
 * Where a client's CPU goes: runs one workload of the bench worker under
 * `node --cpu-prof` against an embedded server, then prints the frames with
 * the most self time and the totals grouped as library / effect / driver /
 * GC / other. `pnpm bench:profile [client] [workload] [concurrency] [pool]`
 * (default: effect-dbpool point-select 64 16).
 */
import { EmbeddedPostgres, layer } from "@effect-dbpool/embedded-postgres"
import { Context, Effect, Exit, Layer, Redacted, Scope } from "effect"
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const [client = "effect-dbpool", workload = "point-select", concurrency = "64", pool = "16"] = process.argv.slice(2)
const here = Path.dirname(fileURLToPath(import.meta.url))
const rows = 100_000

interface ProfileNode {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly hitCount?: number
}
interface Profile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

type Group = "library" | "effect" | "driver" | "GC" | "idle" | "other"

const groupOf = (node: ProfileNode): Group => {
  const { functionName, url } = node.callFrame
  if (functionName === "(garbage collector)") return "GC"
  if (functionName === "(idle)" || functionName === "(program)") return "idle"
  if (url.includes("/packages/effect-dbpool/")) return "library"
  if (url.includes("/effect@") || url.includes("/node_modules/effect/")) return "effect"
  if (url.includes("/postgres@") || url.includes("/node_modules/postgres/")) return "driver"
  return "other"
}

const main = Effect.gen(function*() {
  const scope = yield* Scope.make()
  const context = yield* Layer.buildWithScope(
    layer({ sqlFile: Path.join(here, "..", "..", "..", "sql", "test_schema.sql"), settings: { "dbpool.seed_rows": String(rows) } }),
    scope
  )
  const url = Redacted.value(Context.get(context, EmbeddedPostgres).url)
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "dbpool-profile-"))
  try {
    const run = spawnSync(process.execPath, [
      "--experimental-strip-types",
      "--conditions=@effect-dbpool/source",
      "--no-warnings",
      "--cpu-prof",
      `--cpu-prof-dir=${dir}`,
      Path.join(here, "worker.ts"),
      client,
      workload,
      concurrency,
      pool,
      "5000",
      "2000"
    ], { env: { ...process.env, BENCH_DATABASE_URL: url, BENCH_ROWS: String(rows) }, encoding: "utf8" })
    if (run.status !== 0) throw new Error(`the worker failed: ${run.stderr.slice(-2000)}`)
    const result = JSON.parse(run.stdout.trim().split("\n").pop() ?? "{}") as { opsPerSec?: number; cpuUsPerOp?: number } // our worker's output
    const file = Fs.readdirSync(dir).find((f) => f.endsWith(".cpuprofile"))
    if (file === undefined) throw new Error("no profile was written")
    const profile = JSON.parse(Fs.readFileSync(Path.join(dir, file), "utf8")) as Profile // V8's .cpuprofile format
    const byId = new Map(profile.nodes.map((n) => [n.id, n]))
    // Self time per node from the samples and their time deltas (µs).
    const self = new Map<number, number>()
    profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)))
    const total = [...self.values()].reduce((a, b) => a + b, 0)
    const frames = new Map<string, { group: Group; us: number }>()
    const groups = new Map<Group, number>()
    for (const [id, us] of self) {
      const node = byId.get(id)
      if (node === undefined) continue
      const group = groupOf(node)
      groups.set(group, (groups.get(group) ?? 0) + us)
      const where = node.callFrame.url === "" ? "" : ` ${node.callFrame.url.replace(/^.*\/(node_modules|packages)\//, "$1/")}:${node.callFrame.lineNumber + 1}`
      const k = `${node.callFrame.functionName || "(anonymous)"}${where}`
      const f = frames.get(k) ?? { group, us: 0 }
      frames.set(k, { group, us: f.us + us })
    }
    const pct = (us: number) => `${((100 * us) / total).toFixed(1).padStart(5)}%`
    console.log(
      `${client} ${workload} c=${concurrency} pool=${pool}: ${Math.round(result.opsPerSec ?? 0)} ops/s, ${(result.cpuUsPerOp ?? 0).toFixed(1)} µs CPU/op (profiled: slower than unprofiled)`
    )
    console.log("\nself time by group:")
    for (const [group, us] of [...groups].sort((a, b) => b[1] - a[1])) console.log(`  ${pct(us)}  ${group}`)
    console.log("\ntop frames by self time:")
    for (const [k, f] of [...frames].sort((a, b) => b[1].us - a[1].us).slice(0, Number(process.env.TOP ?? 25))) {
      console.log(`  ${pct(f.us)}  ${f.group.padEnd(7)}  ${k}`)
    }
  } finally {
    Fs.rmSync(dir, { recursive: true, force: true })
    yield* Scope.close(scope, Exit.void)
  }
})

Effect.runPromise(main).catch((error: unknown) => {
  console.error(error)
  process.exit(1)
})
