/**
 * Failover of the write side: a URL naming the primary and its standby with
 * `target_session_attrs=read-write`. The primary stops, the standby is
 * promoted: the statement in flight fails typed, new connections find the new
 * primary, and the listener LISTENs there again.
 */
import { Cluster } from "@effect-dbpool/embedded-postgres/Cluster"
import { assert, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer, Queue, Redacted, References, Schedule, Stream } from "effect"
import { DbPool, type Notifications as N, Notifications, sql, WritePool } from "effect-dbpool"

/** `postgres://user:password@host:port/db` of each node, as one URL naming both, primary first. */
const bothHosts = (primary: string, standby: string): string => {
  const p = new URL(primary)
  const s = new URL(standby)
  return `postgres://${p.username}:${p.password}@${p.host},${s.host}${p.pathname}?target_session_attrs=read-write`
}

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
