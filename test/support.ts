/**
 * Shared by the test files: a pool Layer on the test server, and an observer
 * connection that looks at the server from outside the pool
 * (pg_stat_activity, pg_locks), so tests check what Postgres sees.
 */
import { Effect, Layer, Redacted, References } from "effect"
import { DbPool, type DbError, type Notifications, type ReadPool, sql, WritePool } from "effect-dbpool"
import postgres from "postgres"
import { afterAll, afterEach, expect, inject } from "vitest"

export const databaseUrl = Redacted.make(inject("databaseUrl"))

export interface Harness {
  /** The application_name of every pool connection this file opens. */
  readonly appName: string
  /** Pools on the test server; defaults suited to tests, overridable. */
  readonly pools: (config?: Partial<DbPool.Config>) => Layer.Layer<WritePool | ReadPool | Notifications.Notifications, DbError.ConnectFailed | DbError.InvalidInput>
  /** A connection outside the pool, for observing the server. */
  readonly observer: postgres.Sql
  /** Backends of this file's pools as the server sees them. */
  readonly sessions: Effect.Effect<ReadonlyArray<{ pid: number; state: string | null; query: string }>>
  /** Runs SQL on the observer connection. */
  readonly observe: <T = postgres.Row>(text: string, params?: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<T>>
  /** `val1` of a row as the observer (outside the pool) sees it. */
  readonly val1: (id: number) => Effect.Effect<number | undefined>
  /**
   * Runs a test on some rows and restores their `val1` afterwards (from the
   * observer, after the test's pools are closed), so other files see the
   * seeded values. The original values are passed to the test.
   */
  readonly withRows: <A, E>(
    ids: ReadonlyArray<number>,
    test: (original: ReadonlyMap<number, number>) => Effect.Effect<A, E>
  ) => Effect.Effect<A, E>
}

/**
 * Is the pool's connection outside any transaction? Two statements of one
 * interaction get different transaction ids only if each ran in its own
 * implicit transaction; inside a leftover transaction both see the same one.
 */
export const outsideTransaction = Effect.gen(function*() {
  const pool = yield* WritePool
  return yield* pool.interaction((conn) =>
    Effect.gen(function*() {
      const [x] = yield* conn.run(sql`SELECT pg_current_xact_id()::text AS xid`)
      const [y] = yield* conn.run(sql`SELECT pg_current_xact_id()::text AS xid`)
      return x?.["xid"] !== undefined && x["xid"] !== y?.["xid"]
    })
  )
})

/**
 * A driver error escaping the library (an 'error' event without a listener, a
 * rejected promise nobody awaits) would crash a user's process: every one is
 * recorded and fails the test it happened in.
 */
export const failOnEscapes = (): void => {
  const escaped: Array<string> = []
  const onUncaughtException = (error: unknown) => {
    escaped.push(`uncaughtException: ${String(error)}`)
  }
  const onUnhandledRejection = (error: unknown) => {
    escaped.push(`unhandledRejection: ${String(error)}`)
  }
  process.on("uncaughtException", onUncaughtException)
  process.on("unhandledRejection", onUnhandledRejection)
  afterEach(() => {
    expect(escaped.splice(0)).toEqual([])
  })
  afterAll(() => {
    process.off("uncaughtException", onUncaughtException)
    process.off("unhandledRejection", onUnhandledRejection)
  })
}

/** The test server's URL under another host name for the same machine: a different server as far as URLs go. */
export const otherHostName = (): Redacted.Redacted<string> => {
  const url = new URL(Redacted.value(databaseUrl))
  url.hostname = url.hostname === "localhost" ? "127.0.0.1" : "localhost"
  return Redacted.make(url.toString())
}

/** Repeats `check` every `everyMillis` until `ok` holds or `millis` have passed; returns the last result. */
export const poll = <A>(check: Effect.Effect<A>, ok: (a: A) => boolean, millis = 3000, everyMillis = 20): Effect.Effect<A> =>
  Effect.gen(function*() {
    const deadline = Date.now() + millis
    let a = yield* check
    while (!ok(a) && Date.now() < deadline) {
      yield* Effect.sleep(everyMillis)
      a = yield* check
    }
    return a
  })

/**
 * Sets up a test file: after every test, the server must show no session of
 * this file's pools left (the pools are closed) and none idle in transaction.
 */
export const harness = (name: string): Harness => {
  const appName = `dbpool-test-${name}`
  const observer = postgres(Redacted.value(databaseUrl), { max: 1, onnotice: () => {} })
  const observe = <T>(text: string, params: ReadonlyArray<unknown> = []) =>
    // The observer's parameters are plain test values; postgres.js types them loosely.
    Effect.promise(() => observer.unsafe(text, params as Array<postgres.ParameterOrJSON<never>>) as Promise<ReadonlyArray<T>>)
  const sessions = observe<{ pid: number; state: string | null; query: string }>(
    "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = $1",
    [appName]
  )
  const val1 = (id: number): Effect.Effect<number | undefined> =>
    Effect.map(observe<{ val1: number }>("SELECT val1 FROM test_values WHERE id = $1", [id]), (rows) => rows[0]?.val1)
  const withRows = <A, E>(
    ids: ReadonlyArray<number>,
    test: (original: ReadonlyMap<number, number>) => Effect.Effect<A, E>
  ): Effect.Effect<A, E> =>
    Effect.gen(function*() {
      const original = new Map<number, number>()
      for (const id of ids) {
        let v = yield* val1(id)
        expect(v, `row ${id} exists`).toBeTypeOf("number")
        if (v === undefined || v < 0) {
          // A mark left by an aborted earlier run: start again from a seeded-looking value.
          yield* observe("UPDATE test_values SET val1 = 0 WHERE id = $1", [id])
          v = 0
        }
        original.set(id, v)
      }
      return yield* test(original).pipe(
        Effect.ensuring(
          Effect.forEach(ids, (id) =>
            observe("UPDATE test_values SET val1 = $2 WHERE id = $1", [id, original.get(id) ?? 0]), { discard: true })
        )
      )
    })
  afterEach(async () => {
    // Backends exit a moment after their client closes the socket.
    let left: ReadonlyArray<{ pid: number; state: string | null; query: string }> = []
    for (let i = 0; i < 50; i++) {
      left = await Effect.runPromise(sessions)
      if (left.length === 0) break
      await new Promise((r) => setTimeout(r, 100))
    }
    expect(left.filter((s) => s.state === "idle in transaction" || s.state === "idle in transaction (aborted)")).toEqual([])
    expect(left).toEqual([])
  })
  afterAll(async () => {
    await observer.end({ timeout: 1 })
  })
  return {
    appName,
    observer,
    sessions,
    observe,
    val1,
    withRows,
    pools: (config = {}) =>
      // Tests count the connections a pool opens: the start-up check (tested on its own) would add one.
      DbPool.layer({
        url: databaseUrl,
        maxSize: 4,
        acquireTimeout: "3 seconds",
        connectTimeout: "3 seconds",
        applicationName: appName,
        checkOnStart: false,
        ...config
      })
        // Pool start/close lines would drown the test report.
        .pipe(Layer.provide(Layer.succeed(References.MinimumLogLevel, "Warn")))
  }
}
