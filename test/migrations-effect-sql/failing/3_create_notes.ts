import { Effect } from "effect"
import { SqlClient } from "effect/sql"

export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE ${sql("effsql_migrator.notes")} (id serial PRIMARY KEY, body text)`
  yield* sql`INSERT INTO ${sql("effsql_migrator.notes")} ${sql.insert({ body: "from migration 3" })}`
})
