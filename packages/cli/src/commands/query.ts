import { Effect, Layer } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { ReadPool, Statement, WritePool } from "effect-dbpool"
import { connectionFlags, pools } from "../connection.ts"
import * as Output from "../output.ts"
import { fail, stdout } from "../run.ts"

export const query = Command.make("query", {
  sql: Argument.String("sql").pipe(Argument.withDescription("The SQL statement, with $1..$n placeholders")),
  params: Argument.String("params").pipe(
    Argument.withDescription("Values for $1..$n, sent as text: Postgres casts them to the types it expects"),
    Argument.variadic()
  ),
  json: Flag.Boolean("json").pipe(Flag.withDescription("Print the rows as one JSON array"), Flag.withDefault(false)),
  csv: Flag.Boolean("csv").pipe(Flag.withDescription("Print the rows as CSV with a header line"), Flag.withDefault(false)),
  read: Flag.Boolean("read").pipe(
    Flag.withDescription("Run on the read pool (a read-only session) instead of the write pool"),
    Flag.withDefault(false)
  ),
  ...connectionFlags
}, (options) =>
  Effect.gen(function*() {
    if (options.json && options.csv) return yield* fail("choose one of --json and --csv")
    const statement = Statement.text(options.sql, options.params)
    const rows = yield* (options.read
      ? ReadPool.use((pool) => pool.run(statement))
      : WritePool.use((pool) => pool.run(statement)))
    yield* stdout(options.json ? Output.json(rows) : options.csv ? Output.csv(rows) : Output.table(rows))
  }).pipe(Effect.provide(Layer.fresh(pools(options))))).pipe(
    Command.withShortDescription("Run one SQL statement and print its rows (table, --json, --csv)"),
    Command.withDescription(
      "Run one SQL statement and print its rows: an aligned table (the default), --json or --csv. " +
        "Parameters are bound as $1..$n text values. A failure is one line on stderr (error tag, SQLSTATE, hint) and exit code 1."
    ),
    Command.withExamples([
      { command: "dbpool query \"SELECT * FROM test_values WHERE id = \\$1\" 459", description: "One row by id, as a table" },
      { command: "dbpool query \"SELECT * FROM test_values ORDER BY id LIMIT \\$1\" 3 --json", description: "Rows as a JSON array" },
      { command: "dbpool query \"SELECT now()\" --csv --read", description: "CSV, on the read pool" },
      {
        command: "dbpool query \"SELECT * FROM test_values WHERE id = \\$1\" 459 --embedded --schema sql/test_schema.sql",
        description: "Against a throwaway embedded server loaded with a schema"
      }
    ])
  )
