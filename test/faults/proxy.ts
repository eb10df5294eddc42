/**
 * A loopback TCP proxy between a pool and its server that fails like a
 * network: cut every connection, blackhole (accept, never answer, drop what
 * arrives), add latency. Listens on 127.0.0.1 only.
 */
import { Effect, type Scope } from "effect"
import * as Net from "node:net"

export interface Proxy {
  readonly port: number
  /** Destroys every open connection through the proxy (both sides see a reset). */
  readonly cut: () => number
  /**
   * While on, connections are accepted but nothing moves: every socket is
   * paused, as packets into a black hole (TCP keeps the bytes; the stream
   * stalls). Turning it off lets everything through again.
   */
  blackhole: boolean
  /** Added to every chunk forwarded, in ms. */
  latencyMs: number
  /** Connections accepted so far. */
  readonly accepted: () => number
  /** Stops accepting new connections (they are refused), keeping the open ones: a server going away mid-failover. */
  readonly refuseNew: () => void
}

export const make = (upstreamPort: number): Effect.Effect<Proxy, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.callback<{ proxy: Proxy; server: Net.Server; sockets: Set<Net.Socket> }>((resume) => {
      const sockets = new Set<Net.Socket>()
      let accepted = 0
      const state = { blackhole: false, latencyMs: 0 }
      const forward = (from: Net.Socket, to: Net.Socket) => {
        from.on("data", (chunk: Buffer) => {
          if (state.latencyMs > 0) setTimeout(() => to.destroyed || to.write(chunk), state.latencyMs)
          else if (!to.destroyed) to.write(chunk)
        })
      }
      const server = Net.createServer((client) => {
        accepted++
        const upstream = Net.connect(upstreamPort, "127.0.0.1")
        for (const s of [client, upstream]) {
          sockets.add(s)
          s.on("error", () => {})
          s.on("close", () => {
            sockets.delete(s)
            client.destroy()
            upstream.destroy()
          })
        }
        forward(client, upstream)
        forward(upstream, client)
        if (state.blackhole) {
          client.pause()
          upstream.pause()
        }
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        const port = typeof address === "object" && address !== null ? address.port : 0
        const proxy: Proxy = {
          port,
          cut: () => {
            const n = sockets.size
            for (const s of sockets) s.resetAndDestroy()
            return n
          },
          get blackhole() {
            return state.blackhole
          },
          set blackhole(on: boolean) {
            state.blackhole = on
            for (const s of sockets) on ? s.pause() : s.resume()
          },
          get latencyMs() {
            return state.latencyMs
          },
          set latencyMs(ms: number) {
            state.latencyMs = ms
          },
          accepted: () => accepted,
          refuseNew: () => void server.close()
        }
        resume(Effect.succeed({ proxy, server, sockets }))
      })
    }),
    ({ server, sockets }) =>
      Effect.callback<void>((resume) => {
        for (const s of sockets) s.destroy()
        // Closed already when it refuses new connections: then close reports that, and there is nothing to wait for.
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ proxy }) => proxy))
