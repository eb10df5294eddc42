#!/usr/bin/env node
/**
 * dbpool: a command line for effect-dbpool.
 *
 *   dbpool query "SELECT * FROM test_values WHERE id = $1" 459 [--json|--csv] [--read]
 *   dbpool dry-run "SQL" [params…]
 *   dbpool notify CHANNEL PAYLOAD
 *   dbpool listen CHANNEL… [--payload json]
 *   dbpool stats [--watch] [--interval 1s] [--listen CHANNEL]
 *   dbpool bench [--concurrency 8] [--duration 10s] [--pool-size N] [--json]
 *   dbpool --completions bash|zsh|fish
 *
 * Connection: --url, DATABASE_URL, or --embedded [--schema file.sql].
 */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Cause, Effect, Exit, Logger } from "effect"
import { CliError, Command } from "effect/cli"
import { bench } from "./commands/bench.ts"
import { dryRun } from "./commands/dryRun.ts"
import { listen } from "./commands/listen.ts"
import { notify } from "./commands/notify.ts"
import { query } from "./commands/query.ts"
import { stats } from "./commands/stats.ts"
import { errorLine } from "./output.ts"
import { interruptExit, stderr } from "./run.ts"

export const dbpool = Command.make("dbpool").pipe(
  Command.withDescription("Postgres from the command line through effect-dbpool: query, dry-run, notify, listen, stats, bench."),
  Command.withExamples([
    { command: "dbpool query \"SELECT * FROM test_values WHERE id = \\$1\" 459 --url postgres://app@localhost/app", description: "Run a query" },
    { command: "dbpool listen jobs", description: "Follow a channel (DATABASE_URL)" },
    { command: "dbpool query \"SELECT 1\" --embedded", description: "Against a throwaway embedded server" },
    { command: "dbpool stats --watch", description: "The pool's figures and the server's sessions, live" },
    { command: "dbpool bench --concurrency 16 --duration 10s", description: "A point-select load with a latency summary" },
    { command: "source <(dbpool --completions bash)", description: "Tab completion in this bash (zsh, fish: same flag)" }
  ]),
  Command.withSubcommands([query, dryRun, notify, listen, stats, bench])
)

const program = Command.run(dbpool, { version: "0.1.0" }).pipe(
  // Every failure is one line on stderr. Parse errors were already shown with the help by effect/cli.
  Effect.tapCause((cause) => {
    if (Cause.hasInterruptsOnly(cause)) return Effect.void
    const error = Cause.squash(cause)
    return CliError.isCliError(error) ? Effect.void : stderr(errorLine(error))
  }),
  // Diagnostics (a reconnect, a skipped payload) go to stderr: stdout carries the command's output alone.
  Effect.provide(Logger.layer([Logger.withConsoleError(Logger.formatSimple)])),
  Effect.provide(NodeServices.layer)
)

// Output piped into a reader that stopped (`dbpool query … | head -1`): done, not a crash.
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code !== "EPIPE") process.stderr.write(`error: stdout: ${error.message}\n`)
  process.exit(error.code === "EPIPE" ? 0 : 1)
})

// The runtime interrupts on SIGINT and SIGTERM alike; the exit code tells them apart (128 + the signal's number).
let terminated = false
process.once("SIGTERM", () => {
  terminated = true
})

NodeRuntime.runMain(program, {
  disableErrorReporting: true,
  teardown: (exit, onExit) => {
    if (Exit.isSuccess(exit)) return onExit(0)
    if (!Cause.hasInterruptsOnly(exit.cause)) return onExit(1)
    return onExit(interruptExit.code === 130 && terminated ? 143 : interruptExit.code)
  }
})
