import { Effect } from "effect"
import { SqlClient } from "effect/sql"

export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE ${sql("effsql_migrator.items")} (id serial PRIMARY KEY, name text NOT NULL UNIQUE)`
})
