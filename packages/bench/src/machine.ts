/**
 * What both benchmark drivers (main.ts, replicas.ts) read of the machine and
 * how they summarise rounds.
 */
import * as Fs from "node:fs"

/** The machine's total, steal and idle (+ iowait) jiffies so far (the aggregate `cpu` line of /proc/stat). */
export const cpuTimes = (): { total: number; steal: number; idle: number } | undefined => {
  try {
    const line = Fs.readFileSync("/proc/stat", "utf8").split("\n")[0] ?? ""
    const xs = line.trim().split(/\s+/).slice(1).map(Number)
    return { total: xs.reduce((a, b) => a + b, 0), steal: xs[7] ?? 0, idle: (xs[3] ?? 0) + (xs[4] ?? 0) }
  } catch {
    return undefined
  }
}

/** The median of the finite figures, or null when there are none. */
export const median = (xs: ReadonlyArray<number | null>): number | null => {
  const ns = xs.filter((x): x is number => x !== null && Number.isFinite(x)).sort((x, y) => x - y)
  if (ns.length === 0) return null
  const mid = Math.floor(ns.length / 2)
  return ns.length % 2 === 1 ? ns[mid]! : (ns[mid - 1]! + ns[mid]!) / 2
}
