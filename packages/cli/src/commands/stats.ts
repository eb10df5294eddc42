import { Deferred, Duration, Effect, Layer, Stream } from "effect"
import { Command, Flag } from "effect/cli"
import { type DbError, type InteractionPool, Notifications, ReadPool, Statement, WritePool } from "effect-dbpool"
import { connectionFlags, pools } from "../connection.ts"
import { durationFlag, formatMillis } from "../duration.ts"
import { errorLine, table } from "../output.ts"
import { interruptExit, stdout } from "../run.ts"
import { isTerminal, screen } from "../terminal.ts"

/**
 * The server's client sessions (every database: `max_connections` is the
 * server's), grouped by application_name and state. Without the
 * pg_read_all_stats role, other users' sessions show no state: they are
 * counted under "(not visible)" rather than left out.
 */
const sessionsSql = `
SELECT coalesce(nullif(application_name, ''), '(none)') AS application_name,
       coalesce(state, '(not visible)') AS state,
       count(*)::int AS sessions,
       (extract(epoch FROM max(now() - xact_start)) * 1000)::float8 AS oldest_xact_ms,
       (extract(epoch FROM max(now() - query_start) FILTER (WHERE state = 'active')) * 1000)::float8 AS longest_query_ms,
       count(*) FILTER (WHERE wait_event_type = 'Lock')::int AS waiting_on_locks
FROM pg_stat_activity
WHERE backend_type = 'client backend'
GROUP BY 1, 2
ORDER BY 1, 2`

const serverSql = `
SELECT current_setting('server_version') AS version,
       current_setting('max_connections')::int AS max_connections,
       (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend') AS sessions,
       (pg_notification_queue_usage() * 100)::float8 AS queue_percent`

interface SessionGroup {
  readonly application_name: string
  readonly state: string
  readonly sessions: number
  readonly oldest_xact_ms: number | null
  readonly longest_query_ms: number | null
  readonly waiting_on_locks: number
}

interface ServerFigures {
  readonly version: string
  readonly max_connections: number
  readonly sessions: number
  readonly queue_percent: number
}

const age = (millis: number | null): string => millis === null ? "-" : formatMillis(Math.max(0, millis))

const poolRow = (s: InteractionPool.PoolStats) => ({
  pool: s.pool,
  idle: s.idle,
  used: s.used,
  pending: s.pending,
  min: s.min,
  max: s.max,
  "server max": s.serverMax
})

/** One frame: the CLI's own pools and listener, then the server's sessions, from one look at each. */
const frame = (
  header: string,
  sessionRowLimit: () => number
): Effect.Effect<string, never, WritePool | ReadPool | Notifications.Notifications> =>
  Effect.gen(function*() {
    const write = yield* WritePool
    const read = yield* ReadPool
    const notifications = yield* Notifications.Notifications
    // The server's figures through the read pool: a read-only session is all pg_stat_activity needs.
    const server = yield* Effect.all([
      read.run(Statement.text(sessionsSql)),
      read.run(Statement.text(serverSql))
    ]).pipe(Effect.result)
    // The pools' figures after the queries, so the read pool shows the connection they used.
    const [writeStats, readStats, listener] = yield* Effect.all([write.stats, read.stats, notifications.stats])
    const lines: Array<string> = [
      header,
      "",
      "this CLI's pools",
      table([poolRow(writeStats), poolRow(readStats)], { rowCount: false }),
      "",
      "this CLI's listener",
      table([{
        connected: listener.connected ? "yes" : "no",
        channels: listener.channels.length,
        "listening on": listener.channels.join(", ") || "-",
        subscribers: listener.subscribers,
        delivered: listener.delivered,
        dropped: listener.dropped,
        reconnects: listener.reconnects
      }], { rowCount: false }),
      ""
    ]
    if (server._tag === "Failure") {
      // In --watch the next refresh tries again (the pool reconnects); the error is the frame's last word till then.
      lines.push("server sessions", errorLine(server.failure))
      return lines.join("\n")
    }
    const [sessionRows, [figuresRow]] = server.success
    const groups = sessionRows as unknown as ReadonlyArray<SessionGroup>
    const figures = figuresRow as unknown as ServerFigures | undefined
    const shown = groups.slice(0, Math.max(1, sessionRowLimit()))
    lines.push(
      "server sessions (pg_stat_activity: client backends of every database, by application_name and state)",
      table(
        shown.map((g) => ({
          application_name: g.application_name,
          state: g.state,
          sessions: g.sessions,
          "oldest xact": age(g.oldest_xact_ms),
          "longest query": age(g.longest_query_ms),
          "waiting on locks": g.waiting_on_locks
        })),
        { rowCount: false }
      )
    )
    if (shown.length < groups.length) lines.push(`… ${groups.length - shown.length} more groups (a taller terminal shows them)`)
    if (figures !== undefined) {
      lines.push(
        "",
        `${figures.sessions} client sessions of max_connections ${figures.max_connections} · ` +
          `notification queue ${figures.queue_percent.toFixed(1)}% used · ` +
          // pg_listening_channels() shows a session its own channels only: the server-wide count is not to be had.
          `listening channels: ${listener.channels.length} of this CLI (other sessions' are not visible)`
      )
    }
    return lines.join("\n")
  })

export const stats = Command.make("stats", {
  watch: Flag.Boolean("watch").pipe(
    Flag.withAlias("w"),
    Flag.withDescription("Refresh the figures in place every --interval until Ctrl-C (then exit 0)"),
    Flag.withDefault(false)
  ),
  interval: durationFlag("interval", "1s", "How often --watch refreshes"),
  listen: Flag.String("listen").pipe(
    Flag.withDescription("LISTEN on this channel (repeatable), so the listener's figures count its notifications"),
    Flag.withMetavar("channel"),
    Flag.atLeast(0)
  ),
  ...connectionFlags
}, (options) => {
  let server = "(unknown server)"
  return Effect.gen(function*() {
    // Watching until interrupted is the command's normal life: Ctrl-C ends it with exit code 0.
    if (options.watch) interruptExit.code = 0
    const notifications = yield* Notifications.Notifications
    // Subscribers that only drain: the listener counts what it delivers, which is the figure shown. Each says when
    // its LISTEN is in place, so that a single look shows the channels listened to.
    const subscribed = yield* Effect.forEach(options.listen, (channel) =>
      Effect.gen(function*() {
        const listening = yield* Deferred.make<void, DbError.ListenError>()
        yield* notifications.listen(channel).pipe(
          Stream.runForEach((event) => event._tag === "Subscribed" ? Deferred.succeed(listening, undefined) : Effect.void),
          // A channel that cannot be listened on (a bad name) fails the command instead of being left out silently.
          Effect.catch((error) => Deferred.fail(listening, error)),
          Effect.forkScoped
        )
        return listening
      }))
    const header = (refresh: number) => {
      const base = `dbpool stats · server ${server} · ${new Date().toISOString()}`
      return options.watch ? `${base} · refresh ${refresh} every ${Duration.format(options.interval)} · Ctrl-C to stop` : base
    }
    // The terminal's height (read at every frame: it may be resized) less the frame's other lines and a margin: a
    // frame taller than the terminal would scroll, and the next one would no longer start at the top.
    const sessionRowLimit = () =>
      options.watch && isTerminal(process.stdout) ? (process.stdout.rows ?? 40) - 19 : Number.MAX_SAFE_INTEGER
    if (!options.watch) {
      // A listener that cannot connect is itself a figure worth showing: after a while, print without it.
      yield* Effect.forEach(subscribed, Deferred.await, { discard: true }).pipe(Effect.timeoutOption("10 seconds"))
      return yield* stdout(yield* frame(header(1), sessionRowLimit))
    }
    const draw = yield* screen(process.stdout)
    let refresh = 0
    const redraw = Effect.forever(
      Effect.gen(function*() {
        refresh++
        yield* draw(yield* frame(header(refresh), sessionRowLimit))
        yield* Effect.sleep(options.interval)
      })
    )
    // Watching, a channel that cannot be listened on ends the command too.
    return yield* Effect.raceFirst(redraw, Effect.andThen(Effect.forEach(subscribed, Deferred.await, { discard: true }), Effect.never))
  }).pipe(
    Effect.scoped,
    Effect.provide(Layer.fresh(pools(options, (s) => Effect.sync(() => void (server = s)))))
  )
}).pipe(
  Command.withShortDescription("Show the pool's and listener's figures and the server's sessions (--watch: live)"),
  Command.withDescription(
    "Print this CLI's pool figures (idle, used, pending, min, max, server max) and its listener's (connected, channels, " +
      "delivered, dropped, reconnects), then the server's client sessions from pg_stat_activity grouped by " +
      "application_name and state: how many, the oldest open transaction, the longest running query, how many wait " +
      "on a lock; and the total against max_connections and the notification queue's use. --watch redraws it in " +
      "place every --interval until Ctrl-C, which closes the connections and exits 0. The password is never shown."
  ),
  Command.withExamples([
    { command: "dbpool stats", description: "Print the figures once" },
    { command: "dbpool stats --watch --interval 2s", description: "Refresh every 2 seconds until Ctrl-C" },
    { command: "dbpool stats -w --listen jobs", description: "Also LISTEN on jobs and count its notifications" },
    { command: "dbpool stats --url postgres://app@db:5432/app", description: "Against a given server (the password is never printed)" }
  ])
)
