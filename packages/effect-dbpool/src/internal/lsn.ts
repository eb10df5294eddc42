/** Postgres LSNs (`X/Y`, both hexadecimal) as numbers. */

/** `X/Y` as a number (`undefined` when it is not an LSN). */
export const toBigInt = (lsn: string): bigint | undefined => {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(lsn)
  return m === null ? undefined : (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`)
}
