/**
 * Scaling out reads: a primary and two streaming replicas behind one
 * `DbPool.layer({ url, readUrls })`.
 *
 * The program starts its own throwaway cluster (`Cluster.layer` from
 * `@effect-dbpool/embedded-postgres/Cluster`: a primary and two physical
 * streaming replicas on 127.0.0.1) — also when `DATABASE_URL` is set, which
 * it ignores, since it needs replicas it can pause, stop and start. It shows:
 *
 *   1. reads spread over both replicas (which server answered, per replica stats);
 *   2. replay paused on one replica: a read without a token sees the old value,
 *      one under `ReadYourWrites.withToken` sees the write; then `maxReplicaLag`
 *      sets the replica aside;
 *   3. no replica replays the token in time: the read waits `readYourWritesWait`,
 *      then runs on the primary;
 *   4. a replica stopped: reads go on, on the other; started again, it is back;
 *   5. both stopped: reads fall back to the primary in read-only sessions, or
 *      fail with `NoReplicaAvailable` under `replicaFallback: "fail"`.
 *
 * `pnpm example:replicas` runs it (CI does too); it exits non-zero when any of
 * this does not hold. See the README's "Scaling out".
 */
import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
import { NodeRuntime } from "@effect/platform-node"
import { Console, Effect, Layer, References, Schedule } from "effect"
import { DbPool, ReadPool, ReadYourWrites, sql, WritePool } from "effect-dbpool"
import type { InteractionPool } from "effect-dbpool"
import { isReplicaSetStats, type ReplicaSetStats } from "effect-dbpool/ReadPool"

const step = (title: string) => Console.log(`\n── ${title} ${"─".repeat(Math.max(0, 70 - title.length))}`)

/** The program's own checks: a failed one ends the run with exit code 1. */
const check = (ok: boolean, what: string) => ok ? Effect.void : Effect.die(new Error(`does not hold: ${what}`))

/** Polls `condition` every 50 ms for up to 15 s. */
const eventually = <E, R>(condition: Effect.Effect<boolean, E, R>, what: string) =>
  condition.pipe(
    Effect.flatMap((ok) => ok ? Effect.void : Effect.fail(`not yet: ${what}`)),
    Effect.retry(Schedule.spaced("50 millis")),
    Effect.timeoutOrElse({ duration: "15 seconds", orElse: () => Effect.die(new Error(`timed out: ${what}`)) })
  )

const settings = {
  maxSize: 4,
  readMaxSize: 4,
  connectTimeout: "2 seconds",
  // A replica that has not replayed what the primary wrote 2 s ago is set aside ("lagging").
  maxReplicaLag: "2 seconds",
  // A read with a token waits up to this for a replica that has replayed it, then goes to the primary.
  readYourWritesWait: "500 millis",
  // Health and lag of every replica: one query per replica and one on the primary, this often.
  replicaCheckInterval: "250 millis"
} satisfies Partial<DbPool.Config>

const program = Effect.gen(function*() {
  const cluster = yield* Cluster
  const [r1, r2] = cluster.replicas
  if (r1 === undefined || r2 === undefined) return yield* Effect.die(new Error("expected two replicas"))
  const name = new Map([[cluster.primary.port, "primary"], [r1.port, "replica1"], [r2.port, "replica2"]])
  const write = yield* WritePool
  const read = yield* ReadPool

  /** Which server answered, and the row's value there. */
  const where = (pool: InteractionPool.InteractionPool) =>
    Effect.map(
      pool.run(sql`SELECT inet_server_port() AS port, (SELECT val1 FROM test_values WHERE id = 1) AS val1`),
      (rows) => ({ server: name.get(Number(rows[0]?.["port"])) ?? "?", val1: Number(rows[0]?.["val1"]) })
    )
  const replicaStats = Effect.flatMap(read.stats, (stats) =>
    isReplicaSetStats(stats) ? Effect.succeed<ReplicaSetStats>(stats) : Effect.die(new Error("not a read pool over replicas")))
  const showStats = Effect.gen(function*() {
    const stats = yield* replicaStats
    for (const r of stats.replicas) {
      yield* Console.log(
        `  ${r.pool.padEnd(22)} ${r.server.padEnd(26)} ${r.state.padEnd(7)} idle ${r.idle} used ${r.used}` +
          `${r.replayLsn === undefined ? "" : `  replayed ${r.replayLsn}`}${r.reason === undefined ? "" : `\n    reason: ${r.reason}`}`
      )
    }
    yield* Console.log(`  fallback ${stats.fallback.pool} (read-only sessions on the primary): idle ${stats.fallback.idle} used ${stats.fallback.used}`)
    return stats
  })
  const stateOf = (i: number) => Effect.map(replicaStats, (s) => s.replicas[i]!.state)

  yield* step("The topology")
  yield* Console.log(`  app ── WritePool ──────────────▶ primary  127.0.0.1:${cluster.primary.port}`)
  yield* Console.log(`   │                                   │ WAL, streamed`)
  yield* Console.log(`   └── ReadPool ┬─ default/read/replica1 ▶ replica1 127.0.0.1:${r1.port} (hot standby)`)
  yield* Console.log(`                ├─ default/read/replica2 ▶ replica2 127.0.0.1:${r2.port} (hot standby)`)
  yield* Console.log(`                └─ fallback: read-only sessions on the primary`)

  yield* step("1. Reads spread over the replicas (least busy first)")
  const answers = yield* Effect.forEach(Array.from({ length: 200 }), () => where(read), { concurrency: 8 })
  const counts: Record<string, number> = {}
  for (const a of answers) counts[a.server] = (counts[a.server] ?? 0) + 1
  yield* Console.log("  200 reads, 8 at a time, answered by:", counts)
  yield* showStats
  yield* check((counts["replica1"] ?? 0) > 0 && (counts["replica2"] ?? 0) > 0, "both replicas served reads")
  yield* check(counts["primary"] === undefined, "no read went to the primary")

  yield* step("2. Replay paused on replica1: stale without a token, fresh with one")
  yield* cluster.pauseReplay(r1)
  const [updated] = yield* write.run(sql`UPDATE test_values SET val1 = val1 + 1000 WHERE id = 1 RETURNING val1`)
  const fresh = Number(updated?.["val1"])
  yield* Console.log(`  wrote val1 = ${fresh} on the primary`)
  const plain = yield* Effect.forEach(Array.from({ length: 6 }), () => where(read))
  yield* Console.log("  without a token:", plain.map((a) => `${a.server}→${a.val1}${a.val1 === fresh ? "" : " (stale)"}`).join(", "))
  yield* check(plain.some((a) => a.val1 !== fresh), "a read without a token saw the old value")
  const tokenStart = performance.now()
  const token = yield* ReadYourWrites.writeToken
  const tokenMs = performance.now() - tokenStart
  const withToken = yield* Effect.forEach(Array.from({ length: 6 }), () => where(read)).pipe(ReadYourWrites.withToken(token))
  yield* Console.log(`  token ${token.lsn} (one round trip to the primary, ${tokenMs.toFixed(1)} ms)`)
  yield* Console.log("  with the token:   ", withToken.map((a) => `${a.server}→${a.val1}`).join(", "))
  yield* check(withToken.every((a) => a.val1 === fresh && a.server !== "replica1"), "every read with the token saw the write, none on replica1")
  // After maxReplicaLag the replica is set aside: then reads without a token stop seeing the old value too.
  yield* eventually(Effect.map(stateOf(0), (s) => s === "lagging"), "replica1 lagging")
  const later = yield* Effect.forEach(Array.from({ length: 6 }), () => where(read))
  yield* Console.log("  after maxReplicaLag (2 s), without a token:", later.map((a) => `${a.server}→${a.val1}`).join(", "))
  yield* showStats
  yield* check(later.every((a) => a.server !== "replica1" && a.val1 === fresh), "a lagging replica gets no reads")
  yield* cluster.resumeReplay(r1)
  yield* cluster.awaitReplay(r1)
  yield* eventually(Effect.map(stateOf(0), (s) => s === "up"), "replica1 up again")
  yield* Console.log("  replay resumed: replica1 caught up and is back:", yield* stateOf(0))

  yield* step("3. No replica replays the token in time: wait, then the primary")
  yield* cluster.pauseReplay(r1)
  yield* cluster.pauseReplay(r2)
  yield* write.run(sql`UPDATE test_values SET val1 = val1 + 1 WHERE id = 1`)
  const token2 = yield* ReadYourWrites.writeToken
  const waitStart = performance.now()
  const waited = yield* where(read).pipe(ReadYourWrites.withToken(token2))
  const waitedMs = performance.now() - waitStart
  yield* Console.log(`  both replicas paused; the read with the token ran on the ${waited.server} after ${waitedMs.toFixed(0)} ms (readYourWritesWait: 500 ms), val1 = ${waited.val1}`)
  yield* check(waited.server === "primary" && waitedMs >= 450, "the read waited readYourWritesWait, then ran on the primary")
  yield* cluster.resumeReplay(r1)
  yield* cluster.resumeReplay(r2)
  yield* cluster.awaitReplay(r1)
  yield* cluster.awaitReplay(r2)

  yield* step("4. A replica stops: reads go on, on the other one")
  yield* cluster.stop(r2)
  const during = yield* Effect.forEach(Array.from({ length: 40 }), () => where(read), { concurrency: 8 })
  const duringCounts: Record<string, number> = {}
  for (const a of during) duringCounts[a.server] = (duringCounts[a.server] ?? 0) + 1
  yield* Console.log("  replica2 stopped; 40 reads, none failed, answered by:", duringCounts)
  yield* showStats
  yield* check(during.every((a) => a.server !== "replica2"), "with replica2 stopped no read went to it, and none failed")
  yield* check((yield* stateOf(1)) === "down", "replica2 is down in stats")
  yield* cluster.start(r2)
  yield* eventually(Effect.map(stateOf(1), (s) => s === "up"), "replica2 up again")
  const after = yield* Effect.forEach(Array.from({ length: 40 }), () => where(read), { concurrency: 8 })
  const afterCounts: Record<string, number> = {}
  for (const a of after) afterCounts[a.server] = (afterCounts[a.server] ?? 0) + 1
  yield* Console.log("  replica2 started again and probed back in; 40 reads answered by:", afterCounts)
  yield* check((afterCounts["replica2"] ?? 0) > 0, "replica2 serves reads again")

  yield* step("5. No replica at all: fall back to the primary (read-only), or fail")
  yield* cluster.stop(r1)
  yield* cluster.stop(r2)
  const fallback = yield* Effect.forEach(Array.from({ length: 5 }), () => where(read))
  yield* Console.log("  both replicas stopped (replicaFallback: \"primary\"):", fallback.map((a) => a.server).join(", "))
  yield* check(fallback.every((a) => a.server === "primary"), "reads fell back to the primary")
  const refused = yield* Effect.flip(read.run(sql`UPDATE test_values SET val1 = 0 WHERE id = 1`))
  yield* Console.log(`  a write through the read pool there: ${refused._tag}`)
  yield* check(refused._tag === "ReadOnlyTransaction", "the fallback sessions are read-only")
  yield* showStats
  const failing = DbPool.layer({
    url: cluster.primary.url,
    readUrls: cluster.replicas.map((r) => r.url),
    ...settings,
    replicaFallback: "fail"
  })
  const noReplica = yield* ReadPool.use((pool) => Effect.flip(where(pool))).pipe(Effect.provide(failing))
  yield* Console.log(`  with replicaFallback: "fail": ${noReplica._tag}: ${noReplica.message}`)
  yield* check(noReplica._tag === "NoReplicaAvailable", "replicaFallback: \"fail\" fails with NoReplicaAvailable")
  yield* Console.log("\nall checks held.")
})

const PoolsLive = Layer.unwrap(Effect.gen(function*() {
  const cluster = yield* Cluster
  yield* Console.log(
    `embedded cluster: primary on port ${cluster.primary.port}, replicas on ${cluster.replicas.map((r) => r.port).join(" and ")}` +
      " (DATABASE_URL, if set, is not used: this program needs replicas of its own)"
  )
  return DbPool.layer({ url: cluster.primary.url, readUrls: cluster.replicas.map((r) => r.url), ...settings })
}))

// The pools log a warning when a replica is set aside and an info line when it is back: errors only here, the
// program prints what happens itself.
const Quiet = Layer.succeed(References.MinimumLogLevel, "Error")

const started = performance.now()
program.pipe(
  Effect.provide(PoolsLive.pipe(Layer.provideMerge(Cluster.layer({
    replicas: 2,
    sqlFile: "sql/test_schema.sql",
    settings: { "dbpool.seed_rows": "1000" }
  })))),
  Effect.provide(Quiet),
  Effect.ensuring(Effect.suspend(() => Console.log(`(${((performance.now() - started) / 1000).toFixed(1)} s, cluster start and stop included)`))),
  NodeRuntime.runMain
)
