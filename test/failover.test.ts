/**
 * Failover of the write side: a URL naming the primary and its standby with
 * `target_session_attrs=read-write`. The primary stops, the standby is
 * promoted: the statement in flight fails typed, new connections find the new
 * primary, and the listener LISTENs there again.
 */
import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
import { assert, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer, Queue, Redacted, References, Schedule, Stream } from "effect"
import { DbPool, type Notifications as N, Notifications, ReadPool, sql, WritePool } from "effect-dbpool"

/** `postgres://user:password@host:port/db` of each node, as one URL naming them all, primary first. */
const allHosts = (primary: string, ...standbys: ReadonlyArray<string>): string => {
  const p = new URL(primary)
  const hosts = [p.host, ...standbys.map((s) => new URL(s).host)].join(",")
  return `postgres://${p.username}:${p.password}@${hosts}${p.pathname}?target_session_attrs=read-write`
}
const bothHosts = allHosts

// excludeTestServices: real clock (the pool's timeouts, the cluster's polling).
layer(Cluster.layer({ replicas: 1 }), { timeout: 90_000, excludeTestServices: true })("failover", (it) => {
  it.effect("the primary stops and its standby is promoted: typed failure in flight, then the new primary serves and is listened on", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const primary = cluster.primary
      const standby = cluster.replicas[0]!
      const url = Redacted.make(bothHosts(Redacted.value(primary.url), Redacted.value(standby.url)))
      const pools: Layer.Layer<WritePool | N.Notifications, unknown> = DbPool.layer({
        url,
        maxSize: 2,
        connectTimeout: "2 seconds",
        acquireTimeout: "5 seconds",
        applicationName: "dbpool-test-failover",
        listenReconnect: Schedule.spaced("100 millis")
      }).pipe(Layer.provide(Layer.succeed(References.MinimumLogLevel, "Error"))) // quiet: reconnect warnings are expected
      yield* Effect.gen(function*() {
        const pool = yield* WritePool
        const notifications = yield* Notifications.Notifications
        const port = (rows: ReadonlyArray<Record<string, unknown>>) => Number(rows[0]?.["port"])
        assert.strictEqual(port(yield* pool.run(sql`SELECT inet_server_port() AS port`)), primary.port)
        yield* pool.run(sql`CREATE TABLE failover_test (id int PRIMARY KEY)`)
        yield* cluster.awaitReplay(standby)

        // A subscriber, confirmed.
        const events = yield* Queue.unbounded<N.ListenEvent<string>>()
        const subscribed = yield* Deferred.make<void>()
        yield* notifications.listen("failover_channel").pipe(
          Stream.runForEach((e) =>
            Effect.andThen(Queue.offer(events, e), e._tag === "Subscribed" ? Deferred.succeed(subscribed, undefined) : Effect.void)
          ),
          Effect.forkChild
        )
        yield* Deferred.await(subscribed)
        const listenerBefore = yield* notifications.listenerPid

        // A statement in flight when the primary goes away fails typed.
        const inFlight = yield* Effect.forkChild(Effect.flip(pool.run(sql`SELECT pg_sleep(30)`)))
        yield* Effect.sleep("200 millis")
        yield* cluster.stop(primary)
        const lost = yield* Fiber.join(inFlight)
        assert.include(["ConnectionLost", "ConnectFailed"], lost._tag)

        yield* cluster.promote(standby)
        // New connections find the new primary (a few attempts may still fail while it finishes promoting).
        const rows = yield* pool.run(sql`SELECT inet_server_port() AS port, pg_is_in_recovery() AS recovery`).pipe(
          Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 50 })
        )
        assert.strictEqual(port(rows), standby.port)
        assert.strictEqual(rows[0]?.["recovery"], false)
        yield* pool.run(sql`INSERT INTO failover_test VALUES (${1})`)

        // The listener resubscribed on the new primary, and a notification sent there arrives.
        const resubscribed = yield* Queue.take(events).pipe(
          Effect.repeat({ until: (e) => e._tag === "Subscribed" && e.resubscribed, times: 100 })
        )
        assert.isTrue(resubscribed._tag === "Subscribed" && resubscribed.resubscribed)
        assert.notStrictEqual(yield* notifications.listenerPid, listenerBefore)
        yield* notifications.notify("failover_channel", "after failover")
        const next = yield* Queue.take(events).pipe(Effect.repeat({ until: (e) => e._tag === "Notification", times: 100 }))
        assert.strictEqual(next._tag === "Notification" ? next.payload : undefined, "after failover")
      }).pipe(Effect.provide(pools))
    }))
})

// Two standbys, the second promoted: postgres.js alone takes a hot standby for read-write (it reads only
// default_transaction_read_only, off on a standby), so the pool would stay on the first standby for good.
layer(Cluster.layer({ replicas: 2 }), { timeout: 120_000, excludeTestServices: true })("failover to the second standby", (it) => {
  it.effect("with the primary down no write lands on a standby; the promoted second standby takes the writes, and reads on the same URL run there read-only", () =>
    Effect.gen(function*() {
      const cluster = yield* Cluster
      const [first, second] = [cluster.replicas[0]!, cluster.replicas[1]!]
      const url = Redacted.make(allHosts(Redacted.value(cluster.primary.url), Redacted.value(first.url), Redacted.value(second.url)))
      const pools = DbPool.layer({
        url,
        maxSize: 2,
        connectTimeout: "2 seconds",
        acquireTimeout: "3 seconds",
        applicationName: "dbpool-test-failover-2",
        checkOnStart: false
      }).pipe(Layer.provide(Layer.succeed(References.MinimumLogLevel, "Error")))
      yield* Effect.gen(function*() {
        const write = yield* WritePool
        const read = yield* ReadPool
        yield* write.run(sql`CREATE TABLE failover_two (id int PRIMARY KEY)`)
        yield* cluster.awaitReplay(first)
        yield* cluster.awaitReplay(second)
        // Reads on a URL asking for read-write: the primary, in a read-only session (the driver alone never connects).
        const before = yield* read.run(sql`SELECT inet_server_port() AS port, current_setting('transaction_read_only') AS ro`)
        assert.deepStrictEqual([Number(before[0]?.["port"]), before[0]?.["ro"]], [cluster.primary.port, "on"])

        yield* cluster.stop(cluster.primary)
        // No primary: writes fail to connect (typed), never run on a standby.
        for (let i = 0; i < 3; i++) {
          const error = yield* Effect.flip(write.run(sql`INSERT INTO failover_two VALUES (${100 + i})`))
          assert.include(["ConnectFailed", "ConnectionLost", "PoolTimeout"], error._tag, `${error._tag}: ${error.message}`)
        }

        yield* cluster.promote(second)
        const rows = yield* write.run(sql`INSERT INTO failover_two VALUES (${1}) RETURNING inet_server_port() AS port`).pipe(
          Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 50 })
        )
        assert.strictEqual(Number(rows[0]?.["port"]), second.port)
        const after = yield* read.run(sql`SELECT inet_server_port() AS port, current_setting('transaction_read_only') AS ro`).pipe(
          Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 50 })
        )
        assert.deepStrictEqual([Number(after[0]?.["port"]), after[0]?.["ro"]], [second.port, "on"])
      }).pipe(Effect.provide(pools))
    }))
})
