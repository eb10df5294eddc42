/** Postgres LSNs (`X/Y`, both hexadecimal) as numbers. */

/** `X/Y` as a number (`undefined` when it is not an LSN). */
export const toBigInt = (lsn: string): bigint | undefined => {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn)
  return m === null ? undefined : (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`)
}

/** A number as Postgres prints an LSN. */
export const toText = (lsn: bigint): string =>
  `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`

/**
 * Where everything inserted so far ends, from the primary's insert position
 * (`pg_current_wal_insert_lsn()`). That position is where the next record
 * will start: just past the page header when a page has just begun. A replica
 * reports the end of the last record it replayed, which is then the page's
 * start, so the header is taken off (24 bytes, 40 at a segment's start, as
 * on every 64-bit server) — otherwise an idle primary's position would never
 * be reached.
 */
export const insertedUpTo = (insert: bigint, blockSize: bigint, segmentSize: bigint): bigint =>
  insert % segmentSize === 40n ? insert - 40n : insert % blockSize === 24n ? insert - 24n : insert
