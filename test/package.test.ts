/**
 * The published packages, as a user gets them: both packages packed with `pnpm pack` (whose prepack builds
 * dist/), installed with npm into a fresh project outside the workspace (no workspace links, no source
 * condition), and a plain-JavaScript program run with the machine's Node 20 (no type stripping) against an
 * embedded Postgres started from the installed package.
 */
import { execFile, execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import ts from "typescript"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const root = Path.resolve(Path.dirname(fileURLToPath(import.meta.url)), "..")
const packages = ["effect-dbpool", "embedded-postgres"].map((name) => Path.join(root, "packages", name))

/** PATH without the workspace's bin directories: those put Node 24 (a devDependency) first. */
const userPath = (process.env["PATH"] ?? "").split(Path.delimiter).filter((dir) => !dir.includes("node_modules"))

/**
 * The environment of a user's shell: pnpm's and npm's script variables (npm_config_*, …) would configure the
 * user's npm, NODE_OPTIONS could enable type stripping or the workspace's source condition, and DATABASE_URL
 * would make the program use that server instead of starting its own.
 */
const userEnv = (): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (/^(npm|pnpm)_/i.test(key) || key === "NODE_OPTIONS" || key === "DATABASE_URL") continue
    env[key] = value
  }
  env["PATH"] = userPath.join(Path.delimiter)
  return env
}

const versionOf = (node: string): string | undefined => {
  try {
    return execFileSync(node, ["--version"], { encoding: "utf8" }).trim()
  } catch {
    return undefined
  }
}

/** The oldest Node the packages support (engines: >=20), as installed on the machine; else the current one. */
const node20 = userPath
  .map((dir) => Path.join(dir, "node"))
  .map((node) => ({ node, version: versionOf(node) }))
  .find(({ version }) => version?.startsWith("v20.") === true)
const runtime = node20 ?? { node: process.execPath, version: process.version }
const runtimeLabel = node20 === undefined
  ? `Node ${runtime.version} (no Node 20 found on PATH: falling back to the current node)`
  : `Node ${runtime.version}`
if (node20 === undefined) console.warn(`package.test.ts: no Node 20 on PATH, the installed program runs on ${runtime.version}`)

/** embedded-postgres's binaries for this machine (its optional dependency of the same name). */
const binariesPackage = `@embedded-postgres/${process.platform === "win32" ? "windows" : process.platform}-${process.arch}`

interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

const run = (file: string, args: ReadonlyArray<string>, options: { cwd: string; env?: NodeJS.ProcessEnv }) =>
  new Promise<Run>((resolve) => {
    execFile(file, args, { ...options, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      // A non-zero exit is a result to assert on, not an exception; a spawn failure (no such file) has no number.
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : 127
      resolve({ code, stdout, stderr: error !== null && code === 127 ? `${stderr}${error.message}` : stderr })
    })
  })

const succeed = async (file: string, args: ReadonlyArray<string>, options: { cwd: string; env?: NodeJS.ProcessEnv }) => {
  const result = await run(file, args, options)
  if (result.code !== 0) {
    throw new Error(`${file} ${args.join(" ")} exited with ${result.code}:\n${result.stdout}\n${result.stderr}`)
  }
  return result
}

// The README's program ("Use it in your project"), in plain JavaScript so that Node 20 runs it as it is.
const mainProgram = `import { EmbeddedPostgres, layer as embeddedPostgres } from "@effect-dbpool/embedded-postgres"
import { Deferred, Effect, Fiber, Layer, Schema, Stream } from "effect"
import { DbPool, Notifications, sql, WritePool } from "effect-dbpool"

const Message = Schema.Struct({ text: Schema.String })

const program = Effect.gen(function*() {
  const pool = yield* WritePool

  // A query: interpolated values are bound parameters.
  const [row] = yield* pool.run(sql\`SELECT \${41}::int + 1 AS answer\`)
  console.log(\`query: \${row.answer}\`)

  // A transaction commits on success and rolls back on failure.
  yield* pool.run(sql\`CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)\`)
  yield* pool.transaction((conn) =>
    Effect.gen(function*() {
      yield* conn.run(sql\`INSERT INTO items VALUES (\${1}, \${"one"})\`)
      yield* conn.run(sql\`INSERT INTO items VALUES (\${2}, \${"two"})\`)
    })
  )
  const failure = yield* pool.transaction((conn) =>
    conn.run(sql\`INSERT INTO items VALUES (\${3}, \${"three"})\`).pipe(Effect.andThen(Effect.fail("changed my mind")))
  ).pipe(Effect.flip)
  const [count] = yield* pool.run(sql\`SELECT count(*)::int AS n FROM items\`)
  console.log(\`transaction: \${count.n} rows committed, the third rolled back (\${failure})\`)

  // LISTEN/NOTIFY as a Stream of typed payloads; its first event confirms the LISTEN.
  const notifications = yield* Notifications.Notifications
  const listening = yield* Deferred.make()
  const first = yield* notifications.listen("greetings", Message).pipe(
    Stream.tap((event) => event._tag === "Subscribed" ? Deferred.succeed(listening, undefined) : Effect.void),
    Notifications.payloads,
    Stream.take(1),
    Stream.runCollect,
    Effect.forkChild
  )
  yield* Deferred.await(listening)
  yield* notifications.notify("greetings", { text: "hello" }, Message)
  const [message] = yield* Fiber.join(first)
  console.log(\`notify: \${message.text}\`)
})

// Pools on a throwaway embedded Postgres (or on the server at DATABASE_URL when that is set).
const PoolsLive = Layer.unwrap(Effect.gen(function*() {
  const server = yield* EmbeddedPostgres
  return DbPool.layer({ url: server.url, maxSize: 4 })
})).pipe(Layer.provide(embeddedPostgres()))

program.pipe(Effect.provide(PoolsLive), Effect.runPromise).then(
  () => console.log("done"),
  (error) => {
    console.error(error)
    process.exitCode = 1
  }
)
`

// What the exports maps promise: public subpaths open, internals closed.
const exportsProgram = `const DbPool = await import("effect-dbpool/DbPool")
console.log(\`subpath: \${typeof DbPool.layer}\`)
try {
  await import("effect-dbpool/internal/pool")
  console.log("internal: importable")
} catch (error) {
  console.log(\`internal: \${error.code}\`)
}
`

// The declarations, as a TypeScript user compiles against them.
const typesProgram = `import { type EmbeddedPostgres, type EmbeddedPostgresError, layer } from "@effect-dbpool/embedded-postgres"
import { Effect, type Layer, Schema } from "effect"
import { sql, WritePool } from "effect-dbpool"

export const server: Layer.Layer<EmbeddedPostgres, EmbeddedPostgresError> = layer()
export const first: Effect.Effect<number | undefined, unknown, WritePool> = Effect.gen(function*() {
  const pool = yield* WritePool
  const rows = yield* pool.run(sql\`SELECT 1 AS n\`, Schema.Struct({ n: Schema.Number }))
  return rows[0]?.n
})
export const wrong = Effect.gen(function*() {
  const pool = yield* WritePool
  // @ts-expect-error no such method: proves the declarations resolved (an unresolved module would be \`any\`)
  return pool.noSuchMethod
})
`

describe(`installed from the packed tarballs, run with ${runtimeLabel}`, () => {
  let work = ""
  let project = ""

  beforeAll(async () => {
    work = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-dbpool-package-"))
    const tarballs = Path.join(work, "tarballs")
    project = Path.join(work, "project")
    Fs.mkdirSync(tarballs)
    Fs.mkdirSync(project)
    // As root, embedded-postgres runs initdb and postgres as a `postgres` user, and their binaries are in this
    // project's node_modules: that user must be able to enter these directories (mkdtemp makes them 0700).
    Fs.chmodSync(work, 0o755)
    Fs.chmodSync(project, 0o755)

    // pnpm pack runs each package's prepack, which builds its dist/ (tsc -b: nothing to do when up to date).
    await Promise.all(packages.map((cwd) => succeed("pnpm", ["pack", "--pack-destination", tarballs], { cwd })))
    const files = Fs.readdirSync(tarballs).map((file) => Path.join(tarballs, file))
    expect(files).toHaveLength(2)

    Fs.writeFileSync(
      Path.join(project, "package.json"),
      JSON.stringify({
        name: "effect-dbpool-consumer",
        private: true,
        type: "module",
        // npm 11 asks for approval of install scripts; this one restores the Postgres libraries' symlinks.
        allowScripts: { [binariesPackage]: true }
      }, null, 2)
    )
    Fs.writeFileSync(Path.join(project, "main.mjs"), mainProgram)
    Fs.writeFileSync(Path.join(project, "exports.mjs"), exportsProgram)
    Fs.writeFileSync(Path.join(project, "types.mts"), typesProgram)
    // effect comes in as the packages' peer dependency; --prefer-offline reuses npm's cache without revalidating.
    await succeed("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline", ...files], {
      cwd: project,
      env: userEnv()
    })
  }, 600_000)

  afterAll(() => {
    if (work !== "") Fs.rmSync(work, { recursive: true, force: true })
  })

  it("ships dist (JavaScript, declarations, both maps) and the sources the maps point at", () => {
    const installed = Path.join(project, "node_modules", "effect-dbpool")
    for (const file of ["dist/index.js", "dist/index.d.ts", "dist/index.js.map", "dist/index.d.ts.map", "src/index.ts"]) {
      expect(Fs.existsSync(Path.join(installed, file)), file).toBe(true)
    }
    const map = JSON.parse(Fs.readFileSync(Path.join(installed, "dist", "DbPool.js.map"), "utf8")) as { sources: Array<string> } // a source map
    for (const source of map.sources) {
      expect(Fs.existsSync(Path.resolve(installed, "dist", source)), source).toBe(true)
    }
    expect(Fs.existsSync(Path.join(installed, "tsconfig.build.json"))).toBe(false)
    expect(Fs.existsSync(Path.join(project, "node_modules", "@effect-dbpool", "embedded-postgres", "dist", "index.js"))).toBe(true)
  })

  // The three programs are independent: they run side by side (a concurrent test asserts with its own `expect`).
  it.concurrent("runs a query, a transaction and a LISTEN/NOTIFY round trip on an embedded Postgres", async ({ expect }) => {
    const result = await run(runtime.node, ["main.mjs"], { cwd: project, env: userEnv() })
    expect(result.stderr).toBe("")
    expect(result.code).toBe(0)
    const lines = result.stdout.split("\n").filter((line) => /^(query|transaction|notify|done)\b/.test(line))
    expect(lines).toEqual([
      "query: 42",
      "transaction: 2 rows committed, the third rolled back (changed my mind)",
      "notify: hello",
      "done"
    ])
  }, 120_000)

  it.concurrent("opens public subpaths and closes effect-dbpool/internal/*", async ({ expect }) => {
    const result = await run(runtime.node, ["exports.mjs"], { cwd: project, env: userEnv() })
    expect(result.code).toBe(0)
    expect(result.stdout).toBe("subpath: function\ninternal: ERR_PACKAGE_PATH_NOT_EXPORTED\n")
  }, 60_000)

  it.concurrent("type-checks a TypeScript user's program against the declarations", async ({ expect }) => {
    const tsc = Path.join(root, "node_modules", "typescript", "bin", "tsc")
    // skipLibCheck, as most projects compile (and checking effect's own declarations would triple the time): the
    // test below checks what skipLibCheck would hide, declarations importing modules that have no types.
    const result = await run(process.execPath, [
      tsc,
      "--noEmit",
      "--strict",
      "--skipLibCheck",
      "--module",
      "nodenext",
      "--target",
      "es2023",
      "types.mts"
    ], { cwd: project })
    expect(`${result.stdout}${result.stderr}`).toBe("")
    expect(result.code).toBe(0)
  }, 120_000)

  it("declarations a user's compiler reads import only modules that have types", () => {
    const options: ts.CompilerOptions = { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext }
    const host = ts.createCompilerHost(options)
    // From the public entry points (the exports maps open dist/*.d.ts, not dist/internal/), every declaration file
    // they reach: an import of an untyped module there (a driver typed only by a devDependency) would be `any`.
    const pending = ["effect-dbpool", "@effect-dbpool/embedded-postgres"].flatMap((name) => {
      const dist = Path.join(project, "node_modules", name, "dist")
      return Fs.readdirSync(dist).filter((file) => file.endsWith(".d.ts")).map((file) => Path.join(dist, file))
    })
    const seen = new Set<string>()
    const untyped: Array<string> = []
    for (let file = pending.pop(); file !== undefined; file = pending.pop()) {
      if (seen.has(file)) continue
      seen.add(file)
      for (const { fileName } of ts.preProcessFile(Fs.readFileSync(file, "utf8"), true, true).importedFiles) {
        const resolved = ts.resolveModuleName(fileName, file, options, host, undefined, undefined, ts.ModuleKind.ESNext)
          .resolvedModule
        if (resolved === undefined || !/^\.d\.[cm]?ts$/.test(resolved.extension)) {
          untyped.push(`${Path.relative(project, file)}: ${fileName}`)
        } else if (fileName.startsWith(".")) {
          pending.push(resolved.resolvedFileName)
        }
      }
    }
    expect(untyped).toEqual([])
    expect(seen.size).toBeGreaterThan(10)
  })
})
