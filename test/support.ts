/**
 * Shared by the test files: a pool Layer on the test server, and an observer
 * connection that looks at the server from outside the pool
 * (pg_stat_activity, pg_locks), so tests check what Postgres sees.
 */
import { Effect, Layer, Redacted, References } from "effect"
import { DbPool, type Notifications, type ReadPool, type WritePool } from "effect-dbpool"
import postgres from "postgres"
import { afterAll, afterEach, expect, inject } from "vitest"

export const databaseUrl = Redacted.make(inject("databaseUrl"))

export interface Harness {
  /** The application_name of every pool connection this file opens. */
  readonly appName: string
  /** Pools on the test server; defaults suited to tests, overridable. */
  readonly pools: (config?: Partial<DbPool.Config>) => Layer.Layer<WritePool | ReadPool | Notifications.Notifications>
  /** A connection outside the pool, for observing the server. */
  readonly observer: postgres.Sql
  /** Backends of this file's pools as the server sees them. */
  readonly sessions: Effect.Effect<ReadonlyArray<{ pid: number; state: string | null; query: string }>>
  /** Runs SQL on the observer connection. */
  readonly observe: <T = postgres.Row>(text: string, params?: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<T>>
}

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
    pools: (config = {}) =>
      DbPool.layer({ url: databaseUrl, maxSize: 4, acquireTimeout: "3 seconds", connectTimeout: "3 seconds", applicationName: appName, ...config })
        // Pool start/close lines would drown the test report.
        .pipe(Layer.provide(Layer.succeed(References.MinimumLogLevel, "Warn")))
  }
}
