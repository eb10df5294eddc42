/**
 * One Postgres server for the whole test run: the embedded one (seeded with
 * 10,000 rows), or the one at DATABASE_URL. Stopped and deleted at the end.
 */
import { EmbeddedPostgres, layer } from "@effect-dbpool/embedded-postgres"
import { Context, Effect, Exit, Layer, Redacted, Scope } from "effect"
import type { TestProject } from "vitest/node"

declare module "vitest" {
  export interface ProvidedContext {
    databaseUrl: string
  }
}

export default async function setup(project: TestProject) {
  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(
    Layer.buildWithScope(layer({ sqlFile: "sql/test_schema.sql", settings: { "dbpool.seed_rows": "10000" } }), scope)
  )
  project.provide("databaseUrl", Redacted.value(Context.get(context, EmbeddedPostgres).url))
  return async () => {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}
