import { Effect } from "effect"
import { Argument, Command } from "effect/cli"
import { Statement } from "effect-dbpool"
import { stdout } from "../run.ts"

export const dryRun = Command.make("dry-run", {
  sql: Argument.String("sql").pipe(Argument.withDescription("The SQL statement, with $1..$n placeholders")),
  params: Argument.String("params").pipe(Argument.withDescription("Values for $1..$n"), Argument.variadic())
}, (options) => stdout(Statement.dryRun(Statement.text(options.sql, options.params))).pipe(Effect.asVoid)).pipe(
  Command.withShortDescription("Print a statement's SQL with its parameters rendered"),
  Command.withDescription(
    "Print the SQL a statement would run, its parameters rendered as literals (Statement.dryRun). Connects to nothing."
  ),
  Command.withExamples([
    { command: "dbpool dry-run \"SELECT * FROM test_values WHERE id = \\$1\" 459", description: "Shows SELECT * FROM test_values WHERE id = '459'" },
    { command: "dbpool dry-run \"UPDATE t SET name = \\$1 WHERE id = \\$2\" \"O'Brien\" 7", description: "Quotes are escaped" }
  ])
)
