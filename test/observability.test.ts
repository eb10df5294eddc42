/**
 * examples/observability.ts as an operator runs it: a child process on the
 * test server (DATABASE_URL), exporting its spans to a local OTLP/HTTP
 * receiver (the JSON a collector gets) and printing its own /metrics. The
 * spans must form one trace under the example's request span, carry the
 * OpenTelemetry database attributes and never a bound value; the metrics
 * must come out in Prometheus' text format.
 */
import { spawn } from "node:child_process"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import postgres from "postgres"
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest"

const root = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "..")

/** The example needs type stripping: the Node running the tests when it is the workspace's 24, else the pinned one. */
const node = Number(process.versions.node.split(".")[0]) >= 24 ? process.execPath : Path.join(root, "node_modules", ".bin", "node")

/** Values the example binds as parameters: no span attribute may contain them. */
const boundValues = ["customer-271828", "271828", "order 3 changed"]

// -- a minimal OTLP/HTTP receiver -----------------------------------------------------

interface OtlpValue {
  readonly stringValue?: string
  readonly intValue?: number | string
  readonly boolValue?: boolean
  readonly doubleValue?: number
}

interface OtlpSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string | undefined
  readonly name: string
  readonly kind: number
  readonly attributes: ReadonlyArray<{ readonly key: string; readonly value: OtlpValue }>
  readonly status: { readonly code: number; readonly message?: string }
}

interface Export {
  readonly path: string | undefined
  readonly contentType: string | undefined
  readonly body: { readonly resourceSpans: ReadonlyArray<{ readonly scopeSpans: ReadonlyArray<{ readonly spans: ReadonlyArray<OtlpSpan> }> }> }
}

const received: Array<Export> = []
const receiver = Http.createServer((req, res) => {
  const chunks: Array<Buffer> = []
  req.on("data", (chunk: Buffer) => chunks.push(chunk))
  req.on("end", () => {
    if (req.method !== "POST" || req.url !== "/v1/traces") {
      res.writeHead(404).end()
      return
    }
    try {
      received.push({ path: req.url, contentType: req.headers["content-type"], body: JSON.parse(Buffer.concat(chunks).toString("utf8")) })
      res.writeHead(200, { "content-type": "application/json" }).end("{}")
    } catch {
      res.writeHead(400).end()
    }
  })
})

// -- running the example ---------------------------------------------------------------

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
  readonly millis: number
}

const runExample = (env: NodeJS.ProcessEnv): Promise<Run> =>
  new Promise((resolve, reject) => {
    const started = Date.now()
    const child = spawn(
      node,
      ["--experimental-strip-types", "--no-warnings", "--conditions=@effect-dbpool/source", "examples/observability.ts"],
      { cwd: root, env, stdio: ["ignore", "pipe", "pipe"] }
    )
    let stdout = ""
    let stderr = ""
    child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s))
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s))
    const timer = setTimeout(() => child.kill("SIGKILL"), 45_000)
    child.on("error", (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr, millis: Date.now() - started })
    })
  })

const databaseUrl = inject("databaseUrl")
const observer = postgres(databaseUrl, { max: 1, onnotice: () => {} })
/** test_values' identity: loading sql/test_schema.sql (DROP, CREATE) into the shared server would change it. */
const testValuesOid = async (): Promise<unknown> => (await observer`SELECT 'test_values'::regclass::oid AS oid`)[0]?.["oid"]

let run: Run
let spans: ReadonlyArray<OtlpSpan> = []
let oidBefore: unknown

beforeAll(async () => {
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve))
  const { port } = receiver.address() as AddressInfo
  oidBefore = await testValuesOid()
  const env: NodeJS.ProcessEnv = { ...process.env }
  delete env["NODE_OPTIONS"]
  run = await runExample({
    ...env,
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
    PORT: "0",
    DATABASE_URL: databaseUrl
  })
  spans = received.flatMap((e) => e.body.resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans)))
})

afterAll(async () => {
  await new Promise<void>((resolve) => receiver.close(() => resolve()))
  await observer.end({ timeout: 1 })
})

const attr = (span: OtlpSpan | undefined, key: string): string | number | boolean | undefined => {
  const v = span?.attributes.find((a) => a.key === key)?.value
  if (v === undefined) return undefined
  return v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.boolValue ?? v.doubleValue
}
const named = (name: string) => spans.filter((s) => s.name === name)
const byId = () => new Map(spans.map((s) => [s.spanId, s]))
/** Names of a span's ancestors, nearest first, as far as the received spans reach. */
const ancestors = (span: OtlpSpan): ReadonlyArray<string> => {
  const ids = byId()
  const chain: Array<string> = []
  let parent = span.parentSpanId ? ids.get(span.parentSpanId) : undefined
  while (parent !== undefined && chain.length < 20) {
    chain.push(parent.name)
    parent = parent.parentSpanId ? ids.get(parent.parentSpanId) : undefined
  }
  return chain
}
const describeSpans = () => spans.map((s) => `${s.name} <- ${ancestors(s).join(" <- ") || "(root)"}`).join("\n")

const CLIENT = 3 // OTLP SpanKind CLIENT
const ERROR = 2 // OTLP StatusCode ERROR

describe("examples/observability.ts", () => {
  it("runs on the test server and exits 0, leaving its tables alone", async () => {
    expect(run.code, `stdout:\n${run.stdout}\nstderr:\n${run.stderr}`).toBe(0)
    expect(run.stdout).toContain("Postgres at DATABASE_URL")
    expect(run.stdout).toMatch(/Prometheus metrics at http:\/\/127\.0\.0\.1:(\d+)\/metrics/)
    expect(run.stdout).not.toContain("127.0.0.1:9464") // PORT=0: a free port, printed
    expect(await testValuesOid()).toBe(oidBefore)
  })

  it("exports its spans as OTLP JSON to /v1/traces: statements, a transaction, connects, a notify", () => {
    expect(received.length, run.stdout + run.stderr).toBeGreaterThan(0)
    for (const e of received) expect(e.contentType).toContain("application/json")
    expect(named("example-request")).toHaveLength(1)
    for (const name of ["SELECT", "transaction", "connect", "notify"]) {
      expect(named(name).length, `${name} in:\n${describeSpans()}`).toBeGreaterThan(0)
    }
  })

  it("puts the workload's spans under the request span, in its trace", () => {
    const request = named("example-request")[0]!
    const underRequest = (s: OtlpSpan) => ancestors(s).includes("example-request") && s.traceId === request.traceId
    const queryTexts = (ss: ReadonlyArray<OtlpSpan>) => ss.map((s) => attr(s, "db.query.text"))
    const workload = spans.filter(underRequest)
    expect(queryTexts(workload), describeSpans()).toEqual(expect.arrayContaining([
      "SELECT $1::text AS customer, now() AS at",
      "SELECT count(*)::int AS n FROM generate_series(1, $1) g",
      "SELECT current_setting('transaction_read_only') AS read_only"
    ]))
    const tx = named("transaction").find(underRequest)
    expect(tx, describeSpans()).toBeDefined()
    // The transaction's statements are its children.
    expect(spans.filter((s) => s.parentSpanId === tx?.spanId).map((s) => s.name)).toEqual(
      expect.arrayContaining(["CREATE", "INSERT", "UPDATE", "SELECT"])
    )
    const notify = named("notify").find(underRequest)
    expect(notify, describeSpans()).toBeDefined()
    expect(attr(notify, "effect_dbpool.channel")).toBe("observability_example")
    expect(spans.filter((s) => s.parentSpanId === notify?.spanId).map((s) => attr(s, "db.query.text"))).toEqual(["SELECT pg_notify($1, $2)"])
  })

  it("gives every database span the OpenTelemetry attributes, and statements their text without values", () => {
    const server = new URL(databaseUrl)
    const db = spans.filter((s) => s.name !== "example-request")
    expect(db.length).toBeGreaterThan(10)
    for (const s of db) {
      expect(s.kind, s.name).toBe(CLIENT)
      expect(attr(s, "db.system.name"), s.name).toBe("postgresql")
      expect(attr(s, "db.namespace"), s.name).toBe(server.pathname.slice(1))
      expect(attr(s, "server.address"), s.name).toBe(server.hostname)
      expect(attr(s, "server.port"), s.name).toBe(Number(server.port))
      expect(attr(s, "db.client.connection.pool.name"), s.name).toMatch(/^default\/(write|read)$/)
    }
    const statements = db.filter((s) => !["transaction", "interaction", "connect", "acquire", "notify", "COMMIT", "ROLLBACK"].includes(s.name))
    expect(statements.length).toBeGreaterThan(5)
    for (const s of statements) {
      const text = attr(s, "db.query.text")
      expect(typeof text === "string" && text.length > 0, `${s.name} has db.query.text`).toBe(true)
      expect(attr(s, "db.operation.name")).toBe(s.name)
      expect(String(text).trimStart().toUpperCase().startsWith(s.name), String(text)).toBe(true)
    }
    const everything = JSON.stringify(spans.map((s) => s.attributes))
    for (const value of boundValues) expect(everything).not.toContain(value)
  })

  it("marks the failing statement's span with its SQLSTATE", () => {
    const failed = spans.find((s) => String(attr(s, "db.query.text")).includes("observability_no_such_table"))
    expect(failed, describeSpans()).toBeDefined()
    expect(ancestors(failed!)).toContain("example-request")
    expect(attr(failed, "db.response.status_code")).toBe("42P01") // undefined_table
    expect(attr(failed, "error.type")).toBe("DatabaseError")
    expect(failed?.status.code).toBe(ERROR)
    // The statements that succeeded carry no status code.
    const ok = spans.filter((s) => s !== failed && attr(s, "db.query.text") !== undefined)
    expect(ok.filter((s) => attr(s, "db.response.status_code") !== undefined).map((s) => s.name)).toEqual([])
  })

  it("prints its /metrics in Prometheus' text format", () => {
    const line = (metric: string) => new RegExp(`^${metric}\\{[^}]*db_client_connection_pool_name="default/write"[^}]*\\} [0-9.e+-]+$`, "m")
    expect(run.stdout).toMatch(line("db_client_connection_count"))
    expect(run.stdout).toMatch(/^db_client_connection_count\{[^}]*db_client_connection_state="idle"[^}]*\} [1-9]/m)
    expect(run.stdout).toMatch(/^# TYPE db_client_connection_count gauge$/m)
    expect(run.stdout).toMatch(line("db_client_operation_duration_count"))
    expect(run.stdout).toMatch(/^db_client_operation_duration_count\{[^}]*db_operation_name="transaction"[^}]*\} 1$/m)
    expect(run.stdout).toMatch(/^# TYPE db_client_operation_duration histogram$/m)
  })
})
