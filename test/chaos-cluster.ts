/**
 * The cluster chaos run (`pnpm test:chaos-cluster`): a primary and two streaming replicas
 * (`@effect-dbpool/embedded-postgres/Cluster`), pools on a multi-host write URL
 * (`target_session_attrs=read-write`) with both replicas as `readUrls`. Writers increment per-key versioned
 * counters on the primary, one row per write in a ledger; after each commit they take a read-your-writes token
 * and read the counter back through the ReadPool under it. Readers read counters without a token. Meanwhile a
 * seeded chaos fiber stops and restarts replicas and pauses and resumes their replay, and later stops the
 * primary and promotes a replica: writes then fail typed and resume on the new primary. The other replica is
 * then pointed at the new primary (it follows the new timeline) and its replay paused once more.
 *
 * Invariants (each printed with its figures; the process exits non-zero when one fails):
 * - no read with a token saw a version older than the write it was taken after;
 * - no committed write lost or doubled: the ledger on the new primary holds exactly the writes acknowledged,
 *   plus those whose outcome was unknown (a COMMIT in flight when the primary stopped) and that a lookup on the
 *   primary afterwards found; each counter equals its number of writes and its writer's last known version;
 * - writes fail only with connection errors (ConnectionLost, ConnectFailed, PoolTimeout), reads with those or
 *   NoReplicaAvailable; no defects, no unhandled rejections or exceptions; writes resume on the new primary,
 *   and the write pool never runs on a standby (the lookups check pg_is_in_recovery());
 * - no call hung (every call is bounded by a 30 s guard; every fiber ends by itself);
 * - after the pools close, no session left on the surviving nodes, and none was idle in a transaction before.
 * Not asserted, printed: reads without a token that saw a value older than one already acknowledged (expected
 * above 0: replay is paused, and the other replica stops replaying at the promotion until it is re-pointed).
 *
 * Environment: CHAOS_SEED (the fault schedule's and the workload's choices; the timing of a run is not
 * reproducible), CHAOS_SECONDS (the workload's length, 45 by default), CHAOS_BYPASS_TOKEN=1 (negative control:
 * the writers' reads back run without their token, and the token invariant must then fail).
 *
 * Prints a summary and, as its very last line, one JSON object {"chaosCluster":{…}}.
 */
import { Cluster, type Node } from "@effect-dbpool/embedded-postgres/Cluster"
import { Cause, Context, Data, Effect, Exit, Fiber, Layer, Redacted, References, Scope } from "effect"
import { DbPool, ReadPool, ReadYourWrites, sql, WritePool } from "effect-dbpool"
import postgres from "postgres"

const runMillis = Number(process.env["CHAOS_SECONDS"] ?? "45") * 1000
const seed = process.env["CHAOS_SEED"] !== undefined ? Number(process.env["CHAOS_SEED"]) >>> 0 : (Math.random() * 2 ** 32) >>> 0
const bypassToken = process.env["CHAOS_BYPASS_TOKEN"] === "1"
const writers = 6
const keysPerWriter = 2
const keyCount = writers * keysPerWriter
const readers = 4
const appName = "dbpool-chaos-cluster"
/** Every call of the workload is bounded by this: one that takes longer is counted as hung. */
const guardMillis = 30_000

/** mulberry32: a small seeded generator, so that a seed gives the same fault schedule. */
const generator = (s: number) => () => {
  s = (s + 0x6d2b79f5) >>> 0
  let t = s
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const chaosRandom = generator(seed)
const workloadRandom = generator(seed ^ 0x9e3779b9)

const unhandled: Array<string> = []
process.on("unhandledRejection", (e) => unhandled.push(`unhandledRejection: ${String(e)}`))
process.on("uncaughtException", (e) => unhandled.push(`uncaughtException: ${String(e)}`))

class Hung extends Data.TaggedError("Hung")<{}> {}

const guard = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Hung, R> =>
  Effect.timeoutOrElse(effect, { duration: `${guardMillis} millis`, orElse: () => Effect.fail(new Hung()) })

/** Errors by where they happened (`write`, `token`, `token read`, `read`, `lookup`) and tag; defects as `defect`. */
const errors = new Map<string, Map<string, number>>()
const defects: Array<string> = []
let hung = 0
const classify = (where: string, cause: Cause.Cause<unknown>): string => {
  const reason = cause.reasons.find((r) => r._tag === "Fail") ?? cause.reasons[0]
  let tag: string
  if (reason?._tag === "Fail") {
    const e = reason.error
    tag = typeof e === "object" && e !== null && "_tag" in e ? String(e._tag) : "untagged"
    if (tag === "untagged") defects.push(`${where}: untagged failure ${String(e)}`)
  } else if (reason?._tag === "Die") {
    tag = "defect"
    defects.push(`${where}: ${String(reason.defect)}`)
  } else {
    tag = "interrupted"
    defects.push(`${where}: interrupted`)
  }
  if (tag === "Hung") hung++
  const byTag = errors.get(where) ?? new Map<string, number>()
  byTag.set(tag, (byTag.get(tag) ?? 0) + 1)
  errors.set(where, byTag)
  return tag
}

/** The only ways a write may fail under these faults. */
const connectionTags = new Set(["ConnectionLost", "ConnectFailed", "PoolTimeout"])
/** The only ways a read may fail: those, or no replica and no fallback. */
const readTags = new Set([...connectionTags, "NoReplicaAvailable"])

/** `postgres://user:password@host:port/db` of each node, as one URL naming them all, primary first. */
const allHosts = (nodes: ReadonlyArray<Node>): Redacted.Redacted<string> => {
  const first = new URL(Redacted.value(nodes[0]!.url))
  const hosts = nodes.map((node) => new URL(Redacted.value(node.url)).host).join(",")
  return Redacted.make(`postgres://${first.username}:${first.password}@${hosts}${first.pathname}?target_session_attrs=read-write`)
}

/** Runs SQL on a node from outside the pools (a fresh one-connection client), retrying while it cannot answer. */
const observe = <T extends postgres.Row>(node: Node, text: string, tries = 50) =>
  Effect.promise(async (): Promise<ReadonlyArray<T>> => {
    for (let i = 0;; i++) {
      const client = postgres(Redacted.value(node.url), { max: 1, onnotice: () => {}, connect_timeout: 3 })
      try {
        return await client.unsafe<Array<T>>(text)
      } catch (error) {
        if (i >= tries) throw error
        await new Promise((r) => setTimeout(r, 100))
      } finally {
        await client.end({ timeout: 1 })
      }
    }
  })

const program = Effect.gen(function*() {
  const cluster = yield* Cluster
  const { primary, replicas } = cluster
  const nodes = [primary, ...replicas]
  const nameOfPort = new Map(nodes.map((node) => [node.port, node.name]))

  yield* observe(primary, `DROP TABLE IF EXISTS writes, counters;
    CREATE TABLE counters (k int PRIMARY KEY, v int NOT NULL);
    CREATE TABLE writes (id text PRIMARY KEY, k int NOT NULL, v int NOT NULL, UNIQUE (k, v));
    INSERT INTO counters SELECT g, 0 FROM generate_series(0, ${keyCount - 1}) g;`)
  for (const replica of replicas) yield* Effect.orDie(cluster.awaitReplay(replica))

  const poolScope = yield* Scope.make()
  const context = yield* Layer.buildWithScope(
    DbPool.layer({
      url: allHosts(nodes),
      readUrls: replicas.map((replica) => replica.url),
      applicationName: appName,
      maxSize: 8,
      readMaxSize: 4,
      connectTimeout: "2 seconds",
      acquireTimeout: "4 seconds",
      maxReplicaLag: "1500 millis",
      replicaCheckInterval: "250 millis",
      readYourWritesWait: "500 millis"
    }),
    poolScope
  )
  const write = Context.get(context, WritePool)
  const read = Context.get(context, ReadPool)

  /** What the chaos fiber has done to each replica right now. */
  const replicaState = new Map<string, "running" | "paused" | "stopped">(replicas.map((r) => [r.name, "running"]))
  const anyPaused = () => [...replicaState.values()].includes("paused")

  // -- the workload ---------------------------------------------------------------------------------------------

  const deadline = Date.now() + runMillis
  /** The last version of each key acknowledged (or found after an unknown outcome) to its writer. */
  const known = new Map<number, number>(Array.from({ length: keyCount }, (_, k) => [k, 0]))
  /** Every write known to have committed: id → key and version. */
  const committed = new Map<string, { readonly k: number; readonly v: number }>()
  /** Writes whose outcome no lookup could tell before the run's end (their keys are not written again). */
  const inDoubt = new Map<string, number>()
  const doubtfulKeys = new Set<number>()
  let writesAttempted = 0
  let acknowledged = 0
  let foundCommitted = 0
  let foundNotCommitted = 0
  const versionMismatches: Array<string> = []
  let tokenReads = 0
  let tokenReadsWhileReplayPaused = 0
  let tokenReadsOnPausedReplica = 0
  let tokenViolations = 0
  const tokenViolationSamples: Array<string> = []
  let plainReads = 0
  let staleReads = 0
  const servedBy = { token: new Map<string, number>(), plain: new Map<string, number>() }
  const served = (kind: "token" | "plain", port: number) => {
    const name = nameOfPort.get(port) ?? `port ${port}`
    servedBy[kind].set(name, (servedBy[kind].get(name) ?? 0) + 1)
    return name
  }
  let lookupsOnStandby = 0
  const unexpectedReadErrors: Array<string> = []
  /** Write failures before the primary stopped, between its stop and the promotion, and after. */
  const writeFailures = { before: new Map<string, number>(), outage: new Map<string, number>(), after: new Map<string, number>() }
  const phase = () => primaryStoppedAt === 0 ? "before" : promotedAt === 0 ? "outage" : "after"
  let tokenReadsAfterPromotion = 0
  let plainReadsAfterPromotion = 0
  let plainReadsFailedAfterPromotion = 0
  let tokenReadsFailedAfterPromotion = 0
  let primaryStoppedAt = 0
  let promotedAt = 0
  let firstWriteAfterPromotionMs: number | null = null
  let writesAfterPromotion = 0

  const counterOf = (k: number) => sql`SELECT v, inet_server_port() AS port FROM counters WHERE k = ${k}`
  const rowOf = (rows: ReadonlyArray<Record<string, unknown>>) => ({
    v: Number(rows[0]?.["v"]),
    port: Number(rows[0]?.["port"])
  })

  const increment = (id: string, k: number) =>
    write.transaction((conn) =>
      Effect.gen(function*() {
        const [row] = yield* conn.run(sql`UPDATE counters SET v = v + 1 WHERE k = ${k} RETURNING v`)
        const v = Number(row?.["v"])
        yield* conn.run(sql`INSERT INTO writes (id, k, v) VALUES (${id}, ${k}, ${v})`)
        return v
      })
    )

  /**
   * Did a write whose outcome we did not hear commit? Asked on the write pool (the current primary) until it
   * answers: the version it committed, `null` for not committed, `undefined` when nobody answered within 30 s.
   */
  const lookup = (id: string) =>
    Effect.gen(function*() {
      const until = Date.now() + 30_000
      while (Date.now() < until) {
        const rows = yield* Effect.exit(guard(write.run(
          sql`SELECT pg_is_in_recovery() AS recovery, (SELECT v FROM writes WHERE id = ${id}) AS v`
        )))
        if (Exit.isSuccess(rows)) {
          const row = rows.value[0]
          // Only a primary's answer counts (a standby's may lag): see lookupsOnStandby.
          if (row?.["recovery"] === false) return row["v"] === null ? null : Number(row["v"])
          lookupsOnStandby++
        } else {
          classify("lookup", rows.cause)
        }
        yield* Effect.sleep("200 millis")
      }
      return undefined
    })

  const writer = (w: number) =>
    Effect.gen(function*() {
      const keys = Array.from({ length: keysPerWriter }, (_, i) => w * keysPerWriter + i)
      for (let n = 0; Date.now() < deadline; n++) {
        const usable = keys.filter((k) => !doubtfulKeys.has(k))
        if (usable.length === 0) return
        const k = usable[Math.floor(workloadRandom() * usable.length)]!
        const id = `${w}-${n}`
        const expected = known.get(k)! + 1
        writesAttempted++
        const result = yield* Effect.exit(guard(increment(id, k)))
        let version: number
        if (Exit.isSuccess(result)) {
          version = result.value
          acknowledged++
        } else {
          const tag = classify("write", result.cause)
          const failures = writeFailures[phase()]
          failures.set(tag, (failures.get(tag) ?? 0) + 1)
          // The outcome of a COMMIT in flight is unknown: never retried blindly, looked up on the primary.
          const found = yield* lookup(id)
          if (found === undefined) {
            inDoubt.set(id, k)
            doubtfulKeys.add(k)
            continue
          }
          if (found === null) {
            foundNotCommitted++
            yield* Effect.sleep("50 millis")
            continue
          }
          foundCommitted++
          version = found
        }
        if (version !== expected) versionMismatches.push(`${id}: key ${k} version ${version}, expected ${expected}`)
        known.set(k, Math.max(known.get(k)!, version))
        committed.set(id, { k, v: version })
        if (promotedAt > 0) {
          writesAfterPromotion++
          firstWriteAfterPromotionMs ??= Date.now() - promotedAt
        }

        // Read it back with the commit's token: never older than what was just written.
        const token = yield* Effect.exit(guard(ReadYourWrites.tokenOf(write)))
        if (Exit.isFailure(token)) {
          classify("token", token.cause)
          continue
        }
        const pausedBefore = new Map(replicaState)
        const back = yield* Effect.exit(guard(
          bypassToken ? read.run(counterOf(k)) : read.run(counterOf(k)).pipe(ReadYourWrites.withToken(token.value))
        ))
        if (Exit.isFailure(back)) {
          const tag = classify("token read", back.cause)
          if (!readTags.has(tag) && tag !== "Hung") unexpectedReadErrors.push(`token read failed with ${tag}`)
          if (promotedAt > 0) tokenReadsFailedAfterPromotion++
          continue
        }
        tokenReads++
        if (promotedAt > 0) tokenReadsAfterPromotion++
        if ([...pausedBefore.values()].includes("paused") || anyPaused()) tokenReadsWhileReplayPaused++
        const seen = rowOf(back.value)
        const node = served("token", seen.port)
        // Served by a replica whose replay was paused all along: it had replayed the write before the pause.
        if (pausedBefore.get(node) === "paused" && replicaState.get(node) === "paused") tokenReadsOnPausedReplica++
        if (!(seen.v >= version)) {
          tokenViolations++
          if (tokenViolationSamples.length < 5) {
            tokenViolationSamples.push(`key ${k}: wrote version ${version}, read ${seen.v} on ${node} (token ${token.value.lsn})`)
          }
        }
      }
    })

  const reader = Effect.gen(function*() {
    while (Date.now() < deadline) {
      const k = Math.floor(workloadRandom() * keyCount)
      const before = known.get(k)!
      const result = yield* Effect.exit(guard(read.run(counterOf(k))))
      if (Exit.isSuccess(result)) {
        plainReads++
        if (promotedAt > 0) plainReadsAfterPromotion++
        const seen = rowOf(result.value)
        served("plain", seen.port)
        if (seen.v < before) staleReads++
      } else {
        const tag = classify("read", result.cause)
        if (!readTags.has(tag) && tag !== "Hung") unexpectedReadErrors.push(`read failed with ${tag}`)
        if (promotedAt > 0) plainReadsFailedAfterPromotion++
      }
      yield* Effect.sleep(`${5 + Math.floor(workloadRandom() * 10)} millis`)
    }
  })

  // -- the chaos ------------------------------------------------------------------------------------------------

  const started = Date.now()
  const at = () => ((Date.now() - started) / 1000).toFixed(1)
  const schedule: Array<string> = []
  const faults = new Map<string, number>()
  const injected = (what: string, detail: string) => {
    faults.set(what, (faults.get(what) ?? 0) + 1)
    schedule.push(`${at()}s ${detail}`)
  }
  // The promotion about 40% before the end (± 1.5 s), so that a good share of the run is on the new primary.
  const promoteAt = started + runMillis * 0.6 + (chaosRandom() - 0.5) * 3000
  const promoted = replicas[Math.floor(chaosRandom() * replicas.length)]!
  const orphan = replicas.find((r) => r !== promoted)!
  let orphanStreamingMs: number | null = null

  const chaos = Effect.gen(function*() {
    yield* Effect.sleep("1 second")
    while (Date.now() < promoteAt - 1500) {
      yield* Effect.sleep(`${Math.floor(500 + chaosRandom() * 1500)} millis`)
      const replica = replicas[Math.floor(chaosRandom() * replicas.length)]!
      const state = replicaState.get(replica.name)!
      const roll = chaosRandom()
      if (state === "stopped") {
        yield* Effect.orDie(cluster.start(replica))
        replicaState.set(replica.name, "running")
        injected("replica restarted", `start ${replica.name}`)
      } else if (state === "paused" && roll < 0.75) {
        yield* Effect.orDie(cluster.resumeReplay(replica))
        replicaState.set(replica.name, "running")
        injected("replay resumed", `resume replay on ${replica.name}`)
      } else if (state === "paused" || roll < 0.45) {
        yield* Effect.orDie(cluster.stop(replica))
        replicaState.set(replica.name, "stopped")
        injected("replica stopped", `stop ${replica.name}${state === "paused" ? " (replay paused)" : ""}`)
      } else {
        yield* Effect.orDie(cluster.pauseReplay(replica))
        replicaState.set(replica.name, "paused")
        injected("replay paused", `pause replay on ${replica.name}`)
      }
    }
    // Before the promotion: both replicas running and replaying (a clean stop of the primary sends its WAL to
    // the standbys that stream; the one promoted must be one of them).
    for (const replica of replicas) {
      const state = replicaState.get(replica.name)!
      if (state === "stopped") yield* Effect.orDie(cluster.start(replica))
      if (state === "paused") yield* Effect.orDie(cluster.resumeReplay(replica))
      if (state !== "running") injected(state === "stopped" ? "replica restarted" : "replay resumed", `${state === "stopped" ? "start" : "resume replay on"} ${replica.name}`)
      replicaState.set(replica.name, "running")
    }
    yield* Effect.orDie(cluster.awaitReplay(promoted))
    while (Date.now() < promoteAt) yield* Effect.sleep("100 millis")
    primaryStoppedAt = Date.now()
    yield* Effect.orDie(cluster.stop(primary))
    injected("primary stopped", "stop primary")
    yield* Effect.sleep(`${Math.floor(300 + chaosRandom() * 1200)} millis`)
    yield* Effect.orDie(cluster.promote(promoted))
    promotedAt = Date.now()
    injected("replica promoted", `promote ${promoted.name} (${promotedAt - primaryStoppedAt} ms after the stop)`)
    // The other replica still follows the stopped primary: it lags from now on (reads without a token that it
    // serves before it is set aside are stale). Then it is pointed at the new primary, as an operator would: it
    // follows the new timeline, catches up and serves reads with tokens of the new primary.
    yield* Effect.sleep(`${Math.floor(500 + chaosRandom() * 1500)} millis`)
    const password = new URL(Redacted.value(promoted.url)).password
    yield* observe(
      orphan,
      `ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=${promoted.port} user=postgres password=${password} application_name=${orphan.name}'`
    )
    yield* observe(orphan, "ALTER SYSTEM SET primary_slot_name = ''")
    yield* observe(orphan, "SELECT pg_reload_conf()")
    const repointedAt = Date.now()
    injected("replica re-pointed", `point ${orphan.name} at ${promoted.name}`)
    while (Date.now() < repointedAt + 20_000) {
      const [row] = yield* observe<{ n: number }>(
        promoted,
        `SELECT count(*)::int AS n FROM pg_stat_replication WHERE application_name = '${orphan.name}' AND state = 'streaming'`
      )
      if ((row?.n ?? 0) > 0) {
        orphanStreamingMs = Date.now() - repointedAt
        schedule.push(`${at()}s ${orphan.name} streams from ${promoted.name}`)
        break
      }
      yield* Effect.sleep("100 millis")
    }
    // Once more a pause of its replay, now on the new timeline.
    if (orphanStreamingMs !== null && Date.now() < deadline - 5000) {
      yield* Effect.sleep(`${Math.floor(300 + chaosRandom() * 1000)} millis`)
      yield* Effect.orDie(cluster.pauseReplay(orphan))
      replicaState.set(orphan.name, "paused")
      injected("replay paused", `pause replay on ${orphan.name}`)
      yield* Effect.sleep(`${Math.floor(1000 + chaosRandom() * 1500)} millis`)
      yield* Effect.orDie(cluster.resumeReplay(orphan))
      replicaState.set(orphan.name, "running")
      injected("replay resumed", `resume replay on ${orphan.name}`)
    }
  })

  const fibers = [
    ...(yield* Effect.forEach(Array.from({ length: writers }, (_, w) => w), (w) => Effect.forkChild(writer(w)))),
    ...(yield* Effect.forEach(Array.from({ length: readers }), () => Effect.forkChild(reader)))
  ]
  yield* chaos
  // Every fiber must end by itself: the pool's timeouts bound every wait, and the guard counts what they do not.
  const joined = yield* Effect.forEach(fibers, (f) => Fiber.join(f).pipe(Effect.timeout("60 seconds"), Effect.exit))
  const hungFibers = joined.filter(Exit.isFailure).length
  const workloadSeconds = (Date.now() - started) / 1000

  // -- after the run ----------------------------------------------------------------------------------------------

  const surviving = [promoted, orphan]
  const count = (filter: string) =>
    Effect.map(
      Effect.forEach(surviving, (node) =>
        observe<{ n: number }>(node, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = '${appName}'${filter}`)),
      (rows) => rows.reduce((n, r) => n + (r[0]?.n ?? 0), 0)
    )
  const idleInTransaction = yield* count(" AND state LIKE 'idle in transaction%'")
  const readStats = yield* read.stats
  yield* Scope.close(poolScope, Exit.void)
  yield* Effect.sleep("1 second")
  const leaked = yield* count("")

  // The ledger, on the new primary.
  const rows = yield* observe<{ id: string; k: number; v: number }>(promoted, "SELECT id, k, v FROM writes")
  const counters = yield* observe<{ k: number; v: number }>(promoted, "SELECT k, v FROM counters ORDER BY k")
  const onServer = new Map(rows.map((r) => [r.id, r]))
  let resolvedAtEnd = 0
  for (const id of inDoubt.keys()) {
    const row = onServer.get(id)
    if (row !== undefined) {
      committed.set(id, { k: row.k, v: row.v })
      resolvedAtEnd++
    }
  }
  const lost = [...committed].filter(([id, w]) => onServer.get(id)?.v !== w.v).map(([id]) => id)
  const unexpected = [...onServer.keys()].filter((id) => !committed.has(id))
  const counterProblems: Array<string> = []
  for (const { k, v } of counters) {
    const writes = rows.filter((r) => r.k === k).length
    if (v !== writes) counterProblems.push(`key ${k}: counter ${v}, ${writes} writes`)
    else if (!doubtfulKeys.has(k) && v !== known.get(k)) counterProblems.push(`key ${k}: counter ${v}, writer knows ${known.get(k)}`)
  }
  const duplicated = unexpected.length + counterProblems.length + versionMismatches.length
  const tally = (m: Map<string, number>) => [...m].map(([k, v]) => `${k} ×${v}`).join(", ") || "none"
  const unexpectedWrites = Object.entries(writeFailures).flatMap(([p, m]) =>
    [...m].filter(([tag]) => !connectionTags.has(tag)).map(([tag, n]) => `${tag} ×${n} ${p === "before" ? "before the primary stopped" : p === "outage" ? "while no primary ran" : "after the promotion"}`)
  )
  const unexpectedWriteErrors = Object.values(writeFailures).reduce(
    (n, m) => n + [...m].filter(([tag]) => !connectionTags.has(tag)).reduce((a, [, c]) => a + c, 0),
    0
  )

  const summary = {
    seed,
    bypassToken,
    workloadSeconds: Number(workloadSeconds.toFixed(1)),
    promoted: promoted.name,
    orphanStreamingMs,
    faults: Object.fromEntries(faults),
    writesAttempted,
    committed: committed.size,
    acknowledged,
    unknownOutcomesFoundCommitted: foundCommitted,
    unknownOutcomesFoundNotCommitted: foundNotCommitted,
    unresolvedByWriters: inDoubt.size,
    unresolvedFoundCommittedAtEnd: resolvedAtEnd,
    writeFailures: Object.fromEntries(Object.entries(writeFailures).map(([p, m]) => [p, Object.fromEntries(m)])),
    lookupsOnStandby,
    writesAfterPromotion,
    firstWriteAfterPromotionMs,
    tokenReadsAfterPromotion,
    tokenReadsFailedAfterPromotion,
    plainReadsAfterPromotion,
    plainReadsFailedAfterPromotion,
    tokenReads,
    tokenReadsWhileReplayPaused,
    tokenReadsOnPausedReplica,
    tokenViolations,
    plainReads,
    staleReadsWithoutToken: staleReads,
    servedBy: { token: Object.fromEntries(servedBy.token), plain: Object.fromEntries(servedBy.plain) },
    errors: Object.fromEntries([...errors].map(([where, m]) => [where, Object.fromEntries(m)])),
    lost: lost.length,
    duplicated,
    hung: hung + hungFibers,
    defects: defects.length,
    unexpectedWriteErrors,
    unexpectedReadErrors: unexpectedReadErrors.length,
    unhandled: unhandled.length,
    leakedSessions: leaked,
    idleInTransaction
  }

  console.log(
    `cluster chaos run: seed ${seed}${bypassToken ? " (NEGATIVE CONTROL: token reads bypass withToken)" : ""}, ` +
      `${workloadSeconds.toFixed(1)} s, ${writers} writers on ${keyCount} keys, ${readers} readers, primary + ${replicas.length} replicas`
  )
  console.log(`faults: ${tally(faults)}`)
  console.log(`schedule: ${schedule.join("; ")}`)
  console.log(
    `writes: ${writesAttempted} attempted, ${committed.size} committed (${acknowledged} acknowledged, ` +
      `${foundCommitted} found committed by a lookup after an unknown outcome), ${foundNotCommitted} found not committed, ` +
      `${inDoubt.size} unresolved by the writers (${resolvedAtEnd} of them in the ledger at the end); ` +
      `${writesAfterPromotion} after the promotion, the first ${firstWriteAfterPromotionMs} ms after it`
  )
  console.log(
    `write failures: before the primary stopped ${tally(writeFailures.before)}; while no primary ran ${tally(writeFailures.outage)}; ` +
      `after the promotion ${tally(writeFailures.after)}` + (lookupsOnStandby > 0 ? `; ${lookupsOnStandby} lookups answered by a standby (ignored)` : "")
  )
  for (const [where, m] of errors) if (where !== "write") console.log(`errors (${where}): ${tally(m)}`)
  console.log(
    `token reads: ${tokenReads} (${tokenReadsWhileReplayPaused} while a replica's replay was paused, ` +
      `${tokenReadsOnPausedReplica} served by a paused replica), served by ${tally(servedBy.token)}; ` +
      `${tokenViolations} saw a version older than their write; after the promotion ${tokenReadsAfterPromotion} token reads, ${tokenReadsFailedAfterPromotion} failed`
  )
  for (const s of tokenViolationSamples) console.log(`  ${s}`)
  console.log(
    `reads without a token: ${plainReads}, served by ${tally(servedBy.plain)}; ${staleReads} saw a version older than one ` +
      `already acknowledged (not an invariant: replicas lag)`
  )
  const replicaLine = "replicas" in readStats && Array.isArray(readStats.replicas)
    ? (readStats.replicas as ReadonlyArray<{ pool: string; state: string }>).map((r) => `${r.pool} ${r.state}`).join(", ")
    : "?"
  console.log(`read pool at the end: ${replicaLine}`)
  // Not asserted: availability, not correctness. Once a promotion leaves no replica that replayed the new primary's
  // writes, reads with a token (and, once the orphaned replica is set aside, all reads) go to the fallback pool,
  // read-only sessions on the write URL.
  console.log(
    `reads after the promotion (not asserted): with a token ${tokenReadsAfterPromotion} served, ${tokenReadsFailedAfterPromotion} failed; ` +
      `without ${plainReadsAfterPromotion} served, ${plainReadsFailedAfterPromotion} failed`
  )
  const checks: Array<[string, boolean, string]> = [
    ["no token read older than its write", tokenViolations === 0, `${tokenViolations} of ${tokenReads}`],
    ["no committed write lost", lost.length === 0, `${lost.length} of ${committed.size}${lost.length > 0 ? `: ${lost.slice(0, 5).join(", ")}` : ""}`],
    [
      "no write doubled",
      duplicated === 0,
      `${unexpected.length} unexpected rows, ${counterProblems.length} counter mismatches, ${versionMismatches.length} version mismatches` +
        [...unexpected.slice(0, 3), ...counterProblems.slice(0, 3), ...versionMismatches.slice(0, 3)].map((s) => `; ${s}`).join("")
    ],
    [
      "every unknown outcome resolved by its writer (a lookup on a primary within 30 s)",
      inDoubt.size === 0,
      `${foundCommitted + foundNotCommitted} resolved, ${inDoubt.size} not`
    ],
    ["no call hung", hung + hungFibers === 0, `${hung} calls over ${guardMillis / 1000} s, ${hungFibers} fibers`],
    ["no defect (untyped failure, die, interruption)", defects.length === 0, defects.slice(0, 5).join("; ") || "0"],
    [
      "writes fail only with connection errors (ConnectionLost, ConnectFailed, PoolTimeout)",
      unexpectedWriteErrors === 0,
      unexpectedWrites.join(", ") || "0"
    ],
    [
      "reads fail only with connection errors or NoReplicaAvailable",
      unexpectedReadErrors.length === 0,
      unexpectedReadErrors.slice(0, 5).join("; ") || "0"
    ],
    ["no unhandled rejection or exception", unhandled.length === 0, unhandled.slice(0, 5).join("; ") || "0"],
    ["no session left on the surviving nodes", leaked === 0, `${leaked}`],
    ["none idle in transaction", idleInTransaction === 0, `${idleInTransaction}`],
    [
      "the write pool never ran on a standby (target_session_attrs=read-write)",
      lookupsOnStandby === 0 && !Object.values(writeFailures).some((m) => m.has("ReadOnlyTransaction")),
      `${lookupsOnStandby} lookups answered by a standby, ` +
        `${Object.values(writeFailures).reduce((n, m) => n + (m.get("ReadOnlyTransaction") ?? 0), 0)} writes refused as read-only`
    ],
    [
      "writes resumed on the new primary",
      writesAfterPromotion > 0,
      `${writesAfterPromotion} writes committed after the promotion, the first ${firstWriteAfterPromotionMs ?? "-"} ms after it`
    ],
    [
      "the run did what it says",
      promotedAt > 0 && tokenReads > 0 && (faults.get("replay paused") ?? 0) > 0 && (faults.get("replica stopped") ?? 0) > 0,
      `promoted: ${promotedAt > 0}, ${tokenReads} token reads, ` +
        `${faults.get("replay paused") ?? 0} pauses, ${faults.get("replica stopped") ?? 0} replica stops`
    ]
  ]
  for (const [what, ok, figures] of checks) console.log(`${ok ? "ok  " : "FAIL"} ${what}: ${figures}`)
  const ok = checks.every(([, holds]) => holds)
  console.log(ok ? "all invariants hold" : "INVARIANT FAILED")
  console.log(JSON.stringify({ chaosCluster: summary }))
  return ok
})

const main = program.pipe(
  Effect.scoped,
  // Replica state changes are logged as warnings by the callers' fibers too: expected here.
  Effect.provideService(References.MinimumLogLevel, "Error"),
  Effect.provide(Cluster.layer({ replicas: 2 }))
)

Effect.runPromise(main).then(
  (ok) => process.exit(ok ? 0 : 1),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
