import { Effect } from "effect"
import { SqlClient } from "effect/sql"

// Writes, then fails: the whole run (3 and 4) must roll back.
export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`INSERT INTO ${sql("effsql_migrator.items")} ${sql.insert({ name: "from migration 4" })}`
  yield* sql`ALTER TABLE ${sql("effsql_migrator.items")} ADD COLUMN price numeric`
  yield* sql`INSERT INTO ${sql("effsql_migrator.items")} ${sql.insert({ name: "first" })}` // unique violation
})
