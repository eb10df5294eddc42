import { Cluster, type Node } from "@effect-dbpool/embedded-postgres/Cluster"
import { assert, layer } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import postgres from "postgres"

/** A one-connection client to `node` for the test's scope. */
const client = (node: Node) =>
  Effect.acquireRelease(
    Effect.sync(() => postgres(Redacted.value(node.url), { max: 1, onnotice: () => {} })),
    (sql) => Effect.promise(() => sql.end({ timeout: 1 }))
  )

const query = <A>(f: () => Promise<A>) => Effect.promise(f)

const ids = (sql: postgres.Sql) =>
  query(() => sql<Array<{ id: number }>>`SELECT id FROM cluster_test ORDER BY id`).pipe(
    Effect.map((rows) => rows.map((row) => row.id))
  )

// excludeTestServices: the helpers wait on the real clock (polling, timeouts), not the TestClock.
layer(Cluster.layer({ replicas: 2 }), { timeout: 60_000, excludeTestServices: true })("Cluster", (it) => {
  it.effect("replicates a row written on the primary to every replica", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [replica1, replica2] = cluster.replicas
      assert.strictEqual(cluster.replicas.length, 2)
      const primary = yield* client(cluster.primary)
      yield* query(() => primary`CREATE TABLE cluster_test (id int PRIMARY KEY)`)
      yield* query(() => primary`INSERT INTO cluster_test VALUES (1)`)
      for (const replica of [replica1!, replica2!]) {
        yield* cluster.awaitReplay(replica)
        const sql = yield* client(replica)
        const [row] = yield* query(() => sql<Array<{ recovery: boolean }>>`SELECT pg_is_in_recovery() AS recovery`)
        assert.isTrue(row?.recovery)
        assert.deepStrictEqual(yield* ids(sql), [1])
      }
      const streaming = yield* query(() =>
        primary<Array<{ name: string }>>`
          SELECT application_name AS name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1`
      )
      assert.deepStrictEqual(streaming.map((row) => row.name), ["replica1", "replica2"])
    }))

  it.effect("a replica refuses writes with SQLSTATE 25006", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const sql = yield* client(cluster.replicas[0]!)
      const error = yield* Effect.flip(Effect.tryPromise(() => sql`INSERT INTO cluster_test VALUES (99)`))
      assert.strictEqual((error.cause as { code?: string }).code, "25006")
    }))

  it.effect("a replica with replay paused does not see new rows until resumed", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [paused, other] = cluster.replicas
      const primary = yield* client(cluster.primary)
      const pausedSql = yield* client(paused!)
      const otherSql = yield* client(other!)
      yield* cluster.pauseReplay(paused!)
      yield* query(() => primary`INSERT INTO cluster_test VALUES (2)`)
      yield* cluster.awaitReplay(other!)
      assert.deepStrictEqual(yield* ids(otherSql), [1, 2])
      assert.deepStrictEqual(yield* ids(pausedSql), [1])
      assert.isAbove(yield* cluster.lag(paused!), 0)
      yield* cluster.resumeReplay(paused!)
      yield* cluster.awaitReplay(paused!)
      assert.deepStrictEqual(yield* ids(pausedSql), [1, 2])
    }))

  it.effect("a stopped replica catches up when started again", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const replica = cluster.replicas[1]!
      yield* cluster.stop(replica)
      const primary = yield* client(cluster.primary)
      yield* query(() => primary`INSERT INTO cluster_test VALUES (3)`)
      yield* cluster.start(replica)
      yield* cluster.awaitReplay(replica)
      const sql = yield* client(replica)
      assert.deepStrictEqual(yield* ids(sql), [1, 2, 3])
    }))

  it.effect("a promoted replica accepts writes", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const replica = cluster.replicas[0]!
      yield* cluster.promote(replica)
      const sql = yield* client(replica)
      const [row] = yield* query(() => sql<Array<{ recovery: boolean }>>`SELECT pg_is_in_recovery() AS recovery`)
      assert.isFalse(row?.recovery)
      yield* query(() => sql`INSERT INTO cluster_test VALUES (100)`)
      assert.deepStrictEqual(yield* ids(sql), [1, 2, 3, 100])
    }))
})
