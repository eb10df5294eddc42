import { Effect } from "effect"
import { SqlClient } from "effect/sql"

export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`INSERT INTO ${sql("effsql_migrator.items")} ${sql.insert([{ name: "first" }, { name: "second" }])}`
})
