/**
 * The read pool over several replicas (`readUrls`) and read-your-writes, against a throwaway primary with two
 * streaming replicas: routing, write refusal, replicas going down and coming back, lag, the fallback to the
 * primary (or `NoReplicaAvailable`), and tokens that keep reads from seeing anything older than the caller's write.
 */
import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
import { assert, layer } from "@effect/vitest"
import { ConfigProvider, Deferred, Effect, Fiber, Layer, Option, Redacted, References, Schedule, Stream } from "effect"
import { DbPool, Notifications, ReadPool, ReadYourWrites, sql, WritePool } from "effect-dbpool"
import type { InteractionPool as IP } from "effect-dbpool"
type InteractionPool = IP.InteractionPool
import { isReplicaSetStats, type ReplicaSetStats } from "effect-dbpool/ReadPool"

const quiet = Layer.succeed(References.MinimumLogLevel, "Error")

const pools = (cluster: Cluster["Service"], extra: Partial<DbPool.Config> = {}) =>
  DbPool.layer({
    url: cluster.primary.url,
    readUrls: cluster.replicas.map((replica) => replica.url),
    applicationName: "replicas-test",
    maxSize: 4,
    connectTimeout: "2 seconds",
    replicaCheckInterval: "100 millis",
    ...extra
  }).pipe(Layer.provideMerge(quiet))

const port = (pool: InteractionPool) =>
  Effect.map(pool.run(sql`SELECT inet_server_port() AS port`), (rows) => Number(rows[0]?.["port"]))

const replicaStats = (pool: InteractionPool) =>
  Effect.flatMap(pool.stats, (stats) =>
    isReplicaSetStats(stats) ? Effect.succeed<ReplicaSetStats>(stats) : Effect.die(new Error("not a replica set")))

/** Polls `check` every 50 ms until it holds, for up to 15 seconds. */
const eventually = <E, R>(check: Effect.Effect<boolean, E, R>, what: string) =>
  check.pipe(
    Effect.flatMap((ok) => ok ? Effect.void : Effect.fail(new Error(`not yet: ${what}`))),
    Effect.retry(Schedule.spaced("50 millis")),
    Effect.timeoutOrElse({ duration: "15 seconds", orElse: () => Effect.die(new Error(`timed out: ${what}`)) })
  )

const passwordOf = (cluster: Cluster["Service"]) => new URL(Redacted.value(cluster.primary.url)).password

const value = (pool: InteractionPool) =>
  Effect.map(pool.run(sql`SELECT v FROM replicas_test WHERE id = 1`), (rows) => Number(rows[0]?.["v"]))

// excludeTestServices: the pools and the cluster wait on the real clock.
layer(Cluster.layer({ replicas: 2, sqlFile: "sql/replicas_test.sql" }), { timeout: 120_000, excludeTestServices: true })("ReadPool over replicas", (it) => {
  it.effect("spreads reads over both replicas, never the primary, and refuses writes", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [r1, r2] = cluster.replicas
      yield* Effect.gen(function*() {
        const write = yield* WritePool
        yield* write.run(sql`UPDATE replicas_test SET v = v`)
        yield* cluster.awaitReplay(r1!)
        yield* cluster.awaitReplay(r2!)
        const read = yield* ReadPool
        const ports = new Set<number>()
        for (let i = 0; i < 20; i++) ports.add(yield* port(read))
        assert.deepStrictEqual([...ports].sort(), [r1!.port, r2!.port].sort())
        // Concurrent reads too.
        const concurrent = yield* Effect.forEach(Array.from({ length: 20 }, () => port(read)), (p) => p, { concurrency: 8 })
        assert.notInclude(concurrent, cluster.primary.port)
        assert.strictEqual(yield* value(read), 0)
        const transaction = yield* read.transaction((conn) => conn.run(sql`SELECT inet_server_port() AS port`))
        assert.notStrictEqual(Number(transaction[0]?.["port"]), cluster.primary.port)

        const refused = yield* Effect.flip(read.run(sql`INSERT INTO replicas_test VALUES (2, 0)`))
        assert.strictEqual(refused._tag, "ReadOnlyTransaction")
        const refusedTx = yield* Effect.flip(read.transaction((conn) => conn.run(sql`UPDATE replicas_test SET v = 1`), { readOnly: false }))
        assert.strictEqual(refusedTx._tag, "ReadOnlyTransaction")

        const stats = yield* replicaStats(read)
        assert.strictEqual(stats.pool, "default/read")
        assert.deepStrictEqual(stats.replicas.map((r) => [r.pool, r.state]), [
          ["default/read/replica1", "up"],
          ["default/read/replica2", "up"]
        ])
        assert.deepStrictEqual(stats.replicas.map((r) => r.server), [`127.0.0.1:${r1!.port}/postgres`, `127.0.0.1:${r2!.port}/postgres`])
        assert.notInclude(JSON.stringify(stats), passwordOf(cluster), "no password in stats")
      }).pipe(Effect.provide(pools(cluster)))
    }))

  it.effect("keeps reading on the other replica while one is stopped, and takes it back once started", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [r1, r2] = cluster.replicas
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        for (let i = 0; i < 4; i++) yield* port(read) // connections open on both
        yield* cluster.stop(r2!)
        for (let i = 0; i < 20; i++) assert.strictEqual(yield* port(read), r1!.port)
        const stats = yield* replicaStats(read)
        assert.strictEqual(stats.replicas[1]!.state, "down")
        yield* cluster.start(r2!)
        yield* eventually(Effect.map(replicaStats(read), (s) => s.replicas[1]!.state === "up"), "replica2 up again")
        const ports = new Set<number>()
        for (let i = 0; i < 20; i++) ports.add(yield* port(read))
        assert.deepStrictEqual([...ports].sort(), [r1!.port, r2!.port].sort())
      }).pipe(Effect.provide(pools(cluster)))
    }))

  it.effect("sets a lagging replica aside until it catches up (an idle primary is no lag)", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [r1, r2] = cluster.replicas
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        const write = yield* WritePool
        // Idle for several times maxReplicaLag: nobody lags.
        yield* Effect.sleep("1500 millis")
        assert.deepStrictEqual((yield* replicaStats(read)).replicas.map((r) => r.state), ["up", "up"])
        yield* cluster.pauseReplay(r1!)
        yield* write.run(sql`UPDATE replicas_test SET v = v`)
        yield* eventually(Effect.map(replicaStats(read), (s) => s.replicas[0]!.state === "lagging"), "replica1 lagging")
        for (let i = 0; i < 10; i++) assert.strictEqual(yield* port(read), r2!.port)
        yield* cluster.resumeReplay(r1!)
        yield* cluster.awaitReplay(r1!)
        yield* eventually(Effect.map(replicaStats(read), (s) => s.replicas[0]!.state === "up"), "replica1 up again")
      }).pipe(Effect.provide(pools(cluster, { maxReplicaLag: "300 millis" })))
    }))

  it.effect("a replica whose connections are all held by long reads stays up (busy is not down)", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        // Its one connection held for longer than a probe may wait (1 s): each probe of it times out waiting.
        const release = yield* Deferred.make<void>()
        const started = yield* Deferred.make<number>()
        const holder = yield* Effect.forkChild(read.interaction((conn) =>
          Effect.andThen(Effect.flatMap(conn.run(sql`SELECT inet_server_port() AS port`), (rows) => Deferred.succeed(started, Number(rows[0]?.["port"]))), Deferred.await(release))
        ))
        const heldPort = yield* Deferred.await(started)
        const held = cluster.replicas.findIndex((r) => r.port === heldPort)
        const states = new Set<string>()
        for (let i = 0; i < 30; i++) {
          states.add((yield* replicaStats(read)).replicas[held]!.state)
          yield* Effect.sleep("100 millis")
        }
        assert.deepStrictEqual([...states], ["up"], "the held replica's states over 3 s (probes every 100 ms, each waits up to 1 s)")
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holder)
      }).pipe(Effect.provide(pools(cluster, { readMaxSize: 1, maxReplicaLag: "10 minutes" })))
    }))

  it.effect("a replica whose connections are all held with nothing completing is set aside after 5 s (a hang is not busy)", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        // Its one connection runs a statement that does not complete: from here, a hung replica looks the same.
        const stuck = yield* Effect.forkChild(read.run(sql`SELECT inet_server_port() AS port, pg_sleep(20)`))
        yield* eventually(Effect.map(replicaStats(read), (s) => s.replicas.some((r) => r.used === 1)), "one replica held")
        const held = (yield* replicaStats(read)).replicas.findIndex((r) => r.used === 1)
        const since = Date.now()
        yield* eventually(Effect.map(replicaStats(read), (s) => s.replicas[held]!.state === "down"), "the held replica down")
        // Not before: probes within 5 s of its last completion count it busy.
        assert.isAtLeast(Date.now() - since, 3000)
        yield* Fiber.interrupt(stuck)
      }).pipe(Effect.provide(pools(cluster, { readMaxSize: 1, maxReplicaLag: "10 minutes" })))
    }))

  it.effect("read-your-writes: a read with the write's token never sees an older value; without it, it does", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [r1, r2] = cluster.replicas
      yield* cluster.pauseReplay(r1!)
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        const write = yield* WritePool
        const start = yield* value(write)
        let stale = 0
        for (let i = 1; i <= 20; i++) {
          yield* write.run(sql`UPDATE replicas_test SET v = ${start + i} WHERE id = 1`)
          // writeToken reads the default write pool; tokenOf(pool), any write pool given.
          const token = i % 2 === 0 ? yield* ReadYourWrites.writeToken : yield* ReadYourWrites.tokenOf(write)
          const seen = yield* value(read).pipe(ReadYourWrites.withToken(token))
          assert.strictEqual(seen, start + i, `read ${i} with the token`)
          // Nested, the later token counts: an older one inside (the very first WAL position) does not loosen it.
          const nested = yield* value(read).pipe(
            ReadYourWrites.withToken({ _tag: "ReadToken", lsn: "0/0" }),
            ReadYourWrites.withToken(token)
          )
          assert.strictEqual(nested, start + i, `read ${i} with an older token nested inside the write's`)
          // Functions and transactions are routed by the token as well.
          const inTx = yield* read.transaction((conn) =>
            Effect.map(conn.run(sql`SELECT v FROM replicas_test WHERE id = 1`), (rows) => Number(rows[0]?.["v"]))
          ).pipe(ReadYourWrites.withToken(token))
          assert.strictEqual(inTx, start + i, `transaction ${i} with the token`)
        }
        for (let i = 21; i <= 40; i++) {
          yield* write.run(sql`UPDATE replicas_test SET v = ${start + i} WHERE id = 1`)
          if ((yield* value(read)) !== start + i) stale++
        }
        assert.isAtLeast(stale, 1, "reads without a token saw a stale value")
        // The paused replica was never set aside (maxReplicaLag is long here): the token alone kept reads fresh.
        assert.strictEqual((yield* replicaStats(read)).replicas[0]!.state, "up")
      }).pipe(
        Effect.provide(pools(cluster, { maxReplicaLag: "10 minutes" })),
        Effect.ensuring(Effect.ignore(cluster.resumeReplay(r1!)))
      )
      yield* cluster.awaitReplay(r1!)
      yield* cluster.awaitReplay(r2!)
    }))

  it.effect("read-your-writes under synchronous_commit = off: the token covers the commit, not only what was flushed", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        const write = yield* WritePool
        const start = yield* value(write)
        // An asynchronous commit returns before its WAL is written: the primary's write position is still before it.
        for (let i = 1; i <= 10; i++) {
          yield* write.run(sql`UPDATE replicas_test SET v = ${start + i} WHERE id = 1`)
          const token = yield* ReadYourWrites.writeToken
          assert.strictEqual(yield* value(read).pipe(ReadYourWrites.withToken(token)), start + i, `read ${i} with the token`)
        }
      }).pipe(Effect.provide(pools(cluster, { serverSettings: { synchronous_commit: "off" }, readYourWritesWait: "5 seconds" })))
    }))

  it.effect("read-your-writes: on an idle primary just past a WAL page header, the replicas that replayed everything serve", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [r1, r2] = cluster.replicas
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        const write = yield* WritePool
        // After a segment switch the next record starts past the new segment's header; nothing is written after it.
        yield* write.run(sql`SELECT pg_switch_wal()`)
        yield* cluster.awaitReplay(r1!)
        yield* cluster.awaitReplay(r2!)
        const token = yield* ReadYourWrites.writeToken
        const ports = cluster.replicas.map((r) => r.port)
        assert.include(ports, yield* port(read).pipe(ReadYourWrites.withToken(token)), `token ${token.lsn}: read on a replica`)
      }).pipe(Effect.provide(pools(cluster, { maxReplicaLag: "10 minutes", readYourWritesWait: "3 seconds" })))
    }))

  it.effect("read-your-writes: replicas whose connections are all held do not stretch the wait past readYourWritesWait", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        const write = yield* WritePool
        // The one connection of each replica's pool is held: nothing can ask a replica how far it has replayed.
        const release = yield* Deferred.make<void>()
        const holders = yield* Effect.forkChild(
          Effect.forEach([1, 2], () => read.interaction(() => Deferred.await(release)), { concurrency: "unbounded", discard: true })
        )
        yield* eventually(Effect.map(replicaStats(read), (s) => s.replicas.every((r) => r.used === 1)), "both replicas held")
        yield* write.run(sql`UPDATE replicas_test SET v = v + 1 WHERE id = 1`)
        const token = yield* ReadYourWrites.writeToken
        const startedAt = Date.now()
        // readYourWritesWait 300 ms, a replica pool's acquire timeout 5 s: the read goes to the primary after the former.
        assert.strictEqual(yield* port(read).pipe(ReadYourWrites.withToken(token)), cluster.primary.port)
        assert.isBelow(Date.now() - startedAt, 2500, "the token read waited for a replica's connection, not readYourWritesWait")
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holders)
      }).pipe(Effect.provide(pools(cluster, { readMaxSize: 1, readYourWritesWait: "300 millis", acquireTimeout: "5 seconds" })))
    }))

  it.effect("read-your-writes: with no replica replaying the token in time, reads go to the primary", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [r1, r2] = cluster.replicas
      yield* cluster.pauseReplay(r1!)
      yield* cluster.pauseReplay(r2!)
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        const write = yield* WritePool
        yield* write.run(sql`UPDATE replicas_test SET v = v + 1 WHERE id = 1`)
        const token = yield* ReadYourWrites.writeToken
        const startedAt = Date.now()
        assert.strictEqual(yield* port(read).pipe(ReadYourWrites.withToken(token)), cluster.primary.port)
        assert.isAtLeast(Date.now() - startedAt, 150)
        assert.strictEqual(yield* value(read).pipe(ReadYourWrites.withToken(token)), yield* value(write))
        // Without the token, the replicas still serve.
        assert.notStrictEqual(yield* port(read), cluster.primary.port)
      }).pipe(
        Effect.provide(pools(cluster, { maxReplicaLag: "10 minutes", readYourWritesWait: "200 millis" })),
        Effect.ensuring(Effect.ignore(Effect.andThen(cluster.resumeReplay(r1!), cluster.resumeReplay(r2!))))
      )
      yield* cluster.awaitReplay(r1!)
      yield* cluster.awaitReplay(r2!)
    }))

  it.effect("with every replica stopped, reads go to the primary, or fail with NoReplicaAvailable", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [r1, r2] = cluster.replicas
      const both = pools(cluster)
      const failing = pools(cluster, { replicaFallback: "fail" })
      yield* Effect.gen(function*() {
        yield* cluster.stop(r1!)
        yield* cluster.stop(r2!)
        yield* Effect.gen(function*() {
          const read = yield* ReadPool
          for (let i = 0; i < 5; i++) assert.strictEqual(yield* port(read), cluster.primary.port)
          const refused = yield* Effect.flip(read.run(sql`INSERT INTO replicas_test VALUES (3, 0)`))
          assert.strictEqual(refused._tag, "ReadOnlyTransaction")
          assert.deepStrictEqual((yield* replicaStats(read)).replicas.map((r) => r.state), ["down", "down"])
        }).pipe(Effect.provide(both))
        yield* Effect.gen(function*() {
          const read = yield* ReadPool
          const error = yield* Effect.flip(port(read))
          assert.strictEqual(error._tag, "NoReplicaAvailable")
          if (error._tag === "NoReplicaAvailable") {
            assert.strictEqual(error.pool, "default/read")
            assert.notInclude(error.message, passwordOf(cluster))
          }
        }).pipe(Effect.provide(failing))
      }).pipe(Effect.ensuring(Effect.ignore(Effect.andThen(cluster.start(r1!), cluster.start(r2!)))))
      // Back: reads return to the replicas.
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        const ports = new Set<number>()
        for (let i = 0; i < 10; i++) ports.add(yield* port(read))
        assert.deepStrictEqual([...ports].sort(), [r1!.port, r2!.port].sort())
      }).pipe(Effect.provide(pools(cluster)))
    }))

  it.effect("a listener pointed at a standby (LISTEN refused during recovery) keeps retrying; its streams do not fail", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      yield* Effect.gen(function*() {
        const notifications = yield* Notifications.Notifications
        const outcome = yield* notifications.listen("standby_channel").pipe(
          Stream.runHead,
          Effect.timeoutOption("1500 millis")
        )
        // Still waiting for a primary: a failover's DNS or VIP may not have moved yet.
        assert.isTrue(Option.isNone(outcome))
        assert.isFalse((yield* notifications.stats).connected)
      }).pipe(Effect.provide(DbPool.layer({ url: cluster.replicas[0]!.url, checkOnStart: false }).pipe(Layer.provideMerge(quiet))))
    }))

  it.effect("reads DATABASE_READ_URLS, comma-separated", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const env = {
        DATABASE_URL: Redacted.value(cluster.primary.url),
        DATABASE_READ_URLS: cluster.replicas.map((r) => Redacted.value(r.url)).join(" , "),
        DATABASE_MAX_REPLICA_LAG: "5 seconds",
        DATABASE_REPLICA_FALLBACK: "fail"
      }
      yield* Effect.gen(function*() {
        const read = yield* ReadPool
        const stats = yield* replicaStats(read)
        assert.strictEqual(stats.replicas.length, 2)
        assert.notStrictEqual(yield* port(read), cluster.primary.port)
      }).pipe(
        Effect.provide(DbPool.layerConfig().pipe(
          Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env }))),
          Layer.provideMerge(quiet)
        ))
      )
    }))
})
