/**
 * The chaos run (`pnpm test:chaos`): a ledger of accounts, many fibers moving
 * money between them in transactions and partial transactions and
 * announcing each transfer with a notification, while a chaos fiber
 * terminates backends, cuts and blackholes the network through a proxy, and
 * restarts the server once. Then it checks that nothing was lost or doubled,
 * nothing hung, nothing escaped as an unhandled error, and the server is
 * back to its baseline.
 *
 * Prints a summary and, as its very last line, one JSON object
 * {"chaos":{…}}; exits non-zero when an invariant fails.
 */
import { EmbeddedPostgres, layer as postgresLayer } from "@effect-dbpool/embedded-postgres"
import { Context, Deferred, Effect, Exit, Fiber, Layer, Option, Redacted, Scope, Stream } from "effect"
import { DbPool, Notifications, sql, WritePool } from "effect-dbpool"
import postgres from "postgres"
import * as Proxy from "./faults/proxy.ts"

const runMillis = Number(process.env["CHAOS_SECONDS"] ?? "40") * 1000
const workers = 12
const accountCount = 40
const initialBalance = 1000
const appName = "dbpool-chaos"

const unhandled: Array<string> = []
process.on("unhandledRejection", (e) => unhandled.push(`unhandledRejection: ${String(e)}`))
process.on("uncaughtException", (e) => unhandled.push(`uncaughtException: ${String(e)}`))

const errorsByTag = new Map<string, number>()
const countError = (tag: string) => errorsByTag.set(tag, (errorsByTag.get(tag) ?? 0) + 1)
const tagOf = (e: unknown) => (typeof e === "object" && e !== null && "_tag" in e ? String(e._tag) : "defect")

const program = Effect.gen(function*() {
  const server = yield* EmbeddedPostgres
  // The observer talks to the server directly, not through the proxy; postgres.js reconnects it after the restart.
  const admin = postgres(Redacted.value(server.url), { max: 1, onnotice: () => {} })
  const observe = <T extends postgres.Row>(text: string) =>
    Effect.promise(async (): Promise<ReadonlyArray<T>> => {
      for (let i = 0;; i++) {
        try {
          return await admin.unsafe<Array<T>>(text)
        } catch (error) {
          if (i > 100) throw error
          await new Promise((r) => setTimeout(r, 100))
        }
      }
    })
  yield* observe(`DROP TABLE IF EXISTS transfers, accounts;
    CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
    CREATE TABLE transfers (id text PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount int NOT NULL, kind text NOT NULL);
    INSERT INTO accounts SELECT g, ${initialBalance} FROM generate_series(1, ${accountCount}) g;`)

  const proxy = yield* Proxy.make(server.port)
  const url = Redacted.make(Redacted.value(server.url).replace(`:${server.port}/`, `:${proxy.port}/`))
  const poolScope = yield* Scope.make()
  const context = yield* Layer.buildWithScope(
    DbPool.layer({
      url,
      maxSize: 8,
      acquireTimeout: "5 seconds",
      connectTimeout: "2 seconds",
      applicationName: appName,
      listenHealthCheckInterval: "500 millis"
    }),
    poolScope
  )
  const pool = Context.get(context, WritePool)
  const notifications = Context.get(context, Notifications.Notifications)

  // The listener: every transfer id announced, and when it came back after each fault.
  const received = new Set<string>()
  let lastFaultAt = 0
  let listenerRecoveryMs = 0
  /** When the restarted server accepted connections again, and how long the listener took to resubscribe after that. */
  let serverBackAt = 0
  let listenerAfterRestartMs: number | null = null
  let resubscriptions = 0
  const listening = yield* Deferred.make<void>()
  const listener = yield* notifications.listen("transfers", { bufferSize: 1 << 16 }).pipe(
    Stream.runForEach((event) =>
      Effect.sync(() => {
        if (event._tag === "Notification") received.add(event.payload)
        else if (event.resubscribed) {
          resubscriptions++
          if (lastFaultAt > 0) listenerRecoveryMs = Math.max(listenerRecoveryMs, Date.now() - lastFaultAt)
          if (serverBackAt > 0 && listenerAfterRestartMs === null) listenerAfterRestartMs = Date.now() - serverBackAt
        }
      }).pipe(Effect.andThen(event._tag === "Subscribed" ? Deferred.succeed(listening, undefined) : Effect.void))
    ),
    Effect.forkChild
  )
  yield* Deferred.await(listening)

  const transfer = (id: string, src: number, dst: number, amount: number, kind: "transaction" | "partial") => {
    const [first, second] = src < dst ? [src, dst] : [dst, src]
    return kind === "transaction"
      ? pool.transaction((conn) =>
        Effect.gen(function*() {
          yield* conn.run(sql`SELECT id FROM accounts WHERE id IN (${first}, ${second}) ORDER BY id FOR UPDATE`)
          yield* conn.run(sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${src}`)
          yield* conn.run(sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${dst}`)
          yield* conn.run(sql`INSERT INTO transfers VALUES (${id}, ${src}, ${dst}, ${amount}, ${kind})`)
          yield* conn.notify("transfers", id)
        })
      )
      : Effect.scoped(Effect.gen(function*() {
        const tx = yield* pool.partialTransaction()
        yield* tx.run(sql`SELECT id FROM accounts WHERE id IN (${first}, ${second}) ORDER BY id FOR UPDATE`)
        yield* Effect.sleep(`${Math.floor(Math.random() * 20)} millis`)
        yield* tx.run(sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${src}`)
        yield* tx.run(sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${dst}`)
        yield* tx.run(sql`INSERT INTO transfers VALUES (${id}, ${src}, ${dst}, ${amount}, ${kind})`)
        yield* tx.notify("transfers", id)
        yield* tx.commit
      }))
  }

  // Did a transfer whose outcome we did not hear commit? Asked until the pool can answer.
  const committedOnServer = (id: string) =>
    Effect.gen(function*() {
      for (let i = 0; i < 300; i++) {
        const rows = yield* Effect.result(pool.run(sql`SELECT 1 FROM transfers WHERE id = ${id}`))
        if (rows._tag === "Success") return Option.some(rows.success.length > 0)
        countError(`lookup:${rows.failure._tag}`)
        yield* Effect.sleep("100 millis")
      }
      return Option.none<boolean>()
    })

  const committed = new Set<string>()
  const inDoubt = new Set<string>()
  let ops = 0
  let rejected = 0
  const deadline = Date.now() + runMillis

  const worker = (w: number) =>
    Effect.gen(function*() {
      for (let n = 0; Date.now() < deadline; n++) {
        const id = `${w}-${n}`
        const src = 1 + Math.floor(Math.random() * accountCount)
        const dst = 1 + ((src + Math.floor(Math.random() * (accountCount - 1))) % accountCount)
        const amount = 1 + Math.floor(Math.random() * 50)
        const kind = Math.random() < 0.5 ? "transaction" : "partial"
        for (let attempt = 0; attempt < 200; attempt++) {
          ops++
          const result = yield* Effect.exit(transfer(id, src, dst, amount, kind))
          if (Exit.isSuccess(result)) {
            committed.add(id)
            break
          }
          const error = result.cause.reasons[0]
          const tag = error?._tag === "Fail" ? tagOf(error.error) : "defect"
          countError(tag)
          if (tag === "CheckViolation") {
            rejected++ // not enough money: refused by the server, nothing applied
            break
          }
          // Never retry blindly: the commit may have happened with only its acknowledgement lost.
          const known = yield* committedOnServer(id)
          if (known._tag === "None") {
            inDoubt.add(id)
            break
          }
          if (known.value) {
            committed.add(id)
            break
          }
          yield* Effect.sleep("50 millis")
        }
      }
    })

  // The chaos: a fault every few hundred milliseconds, one server restart in the middle.
  let faultsInjected = 0
  const faults = new Map<string, number>()
  const injected = (what: string) => {
    faultsInjected++
    faults.set(what, (faults.get(what) ?? 0) + 1)
  }
  const chaos = Effect.gen(function*() {
    let restarted = false
    const quietFrom = deadline - 4000
    while (Date.now() < quietFrom) {
      yield* Effect.sleep(`${200 + Math.floor(Math.random() * 300)} millis`)
      const roll = Math.random()
      if (!restarted && Date.now() > deadline - runMillis / 2) {
        restarted = true
        lastFaultAt = Date.now()
        yield* Effect.orDie(server.stop)
        yield* Effect.sleep("1 second")
        yield* Effect.orDie(server.start)
        serverBackAt = Date.now()
        injected("server restart")
      } else if (roll < 0.6) {
        const killed = yield* observe<{ pid: number }>(
          `SELECT pg_terminate_backend(pid), pid FROM pg_stat_activity WHERE application_name = '${appName}' ORDER BY random() LIMIT 1`
        )
        if (killed.length > 0) injected("terminate backend")
      } else if (roll < 0.75) {
        const pid = yield* notifications.listenerPid
        if (pid !== undefined) {
          lastFaultAt = Date.now()
          yield* observe(`SELECT pg_terminate_backend(${pid})`)
          injected("terminate listener")
        }
      } else if (roll < 0.92) {
        proxy.cut()
        lastFaultAt = Date.now()
        injected("network cut")
      } else {
        proxy.blackhole = true
        yield* Effect.sleep("1500 millis")
        proxy.blackhole = false
        injected("network blackhole 1.5 s")
      }
    }
  })

  const started = Date.now()
  const fibers = yield* Effect.forEach(Array.from({ length: workers }, (_, w) => w), (w) => Effect.forkChild(worker(w)))
  yield* chaos
  // Every worker must finish by itself: the acquire and connect timeouts bound every wait.
  const joined = yield* Effect.forEach(fibers, (f) => Fiber.join(f).pipe(Effect.timeout("60 seconds"), Effect.exit))
  const hung = joined.filter(Exit.isFailure).length
  const elapsedMs = Date.now() - started

  // The listener is back and receiving: a last notification must arrive.
  for (let i = 0; i < 50; i++) {
    const sent = yield* Effect.result(notifications.notify("transfers", "final"))
    if (sent._tag === "Success") break
    yield* Effect.sleep("100 millis")
  }
  const listenerReceiving = yield* Effect.gen(function*() {
    for (let i = 0; i < 100; i++) {
      if (received.has("final")) return true
      yield* Effect.sleep("100 millis")
    }
    return false
  })
  yield* Fiber.interrupt(listener)

  const idleInTransactionBefore = yield* observe<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = '${appName}' AND state LIKE 'idle in transaction%'`
  )
  yield* Scope.close(poolScope, Exit.void)
  yield* Effect.sleep("1 second")
  const leftover = yield* observe<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = '${appName}'`
  )

  // The ledger: every committed transfer present once, balances consistent with the transfers.
  const rows = yield* observe<{ id: string }>("SELECT id FROM transfers")
  const onServer = new Set(rows.map((r) => r.id))
  for (const id of inDoubt) if (onServer.has(id)) committed.add(id)
  const lost = [...committed].filter((id) => !onServer.has(id)).length
  const unexpected = [...onServer].filter((id) => !committed.has(id) && !inDoubt.has(id)).length
  const [total] = yield* observe<{ sum: string }>("SELECT sum(balance)::text AS sum FROM accounts")
  const mismatched = yield* observe<{ id: number }>(`
    SELECT a.id FROM accounts a
    LEFT JOIN (SELECT dst AS id, sum(amount) AS amount FROM transfers GROUP BY dst) i USING (id)
    LEFT JOIN (SELECT src AS id, sum(amount) AS amount FROM transfers GROUP BY src) o USING (id)
    WHERE a.balance <> ${initialBalance} + coalesce(i.amount, 0) - coalesce(o.amount, 0)`)
  const duplicated = unexpected + mismatched.length
  const totalOk = Number(total?.sum) === accountCount * initialBalance
  const notAnnounced = [...committed].filter((id) => onServer.has(id) && !received.has(id)).length
  yield* Effect.promise(() => admin.end({ timeout: 1 }))

  const summary = {
    ops,
    committed: committed.size,
    rejected,
    faultsInjected,
    lost,
    duplicated,
    hung,
    unhandled: unhandled.length,
    leakedConnections: leftover[0]?.n ?? -1,
    idleInTransaction: idleInTransactionBefore[0]?.n ?? -1,
    listenerRecoveryMs,
    listenerAfterRestartMs,
    inDoubt: inDoubt.size,
    resubscriptions,
    totalBalanceUnchanged: totalOk,
    listenerReceiving,
    notificationsMissedWhileDisconnected: notAnnounced
  }
  console.log(`chaos run: ${(elapsedMs / 1000).toFixed(1)} s, ${workers} workers, ${accountCount} accounts`)
  console.log(`faults: ${[...faults].map(([k, v]) => `${k} ×${v}`).join(", ")}`)
  console.log(`errors seen by workers (all typed, retried after checking the ledger): ${[...errorsByTag].map(([k, v]) => `${k} ×${v}`).join(", ")}`)
  console.log(
    `transfers: ${committed.size} committed, ${rejected} refused (insufficient funds), ${inDoubt.size} in doubt; total balance ${totalOk ? "unchanged" : "CHANGED"}`
  )
  console.log(
    `listener: ${resubscriptions} resubscriptions, slowest recovery ${listenerRecoveryMs} ms (${listenerAfterRestartMs} ms after the restarted server accepted connections), receiving at the end: ${listenerReceiving}; ${notAnnounced} committed transfers not announced (sent while it was disconnected: Postgres keeps none)`
  )
  for (const u of unhandled) console.log(u)
  const ok = lost === 0 && duplicated === 0 && hung === 0 && unhandled.length === 0 && summary.leakedConnections === 0 &&
    summary.idleInTransaction === 0 && totalOk && listenerReceiving && faultsInjected > 0 && inDoubt.size === 0
  console.log(ok ? "all invariants hold" : "INVARIANT FAILED")
  console.log(JSON.stringify({ chaos: summary }))
  return ok
})

const main = program.pipe(
  Effect.scoped,
  Effect.provide(postgresLayer({ alwaysEmbedded: true }))
)

Effect.runPromise(main).then(
  (ok) => process.exit(ok ? 0 : 1),
  (error: unknown) => {
    console.error(error)
    process.exit(1)
  }
)
