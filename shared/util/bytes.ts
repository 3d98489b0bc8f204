/** Human sizes and durations for progress lines. */

/** 1536 → "1.5 KiB"; below 1 KiB: "512 B". */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let i = 0
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return `${v.toFixed(1)} ${units[i] ?? 'TiB'}`
}

/** 42 → "42s", 300 → "5m", 3900 → "1h5m" (rounded up to a whole minute past one minute). */
export function formatEtaShort(seconds: number): string {
  const s = Math.max(0, Math.ceil(seconds))
  if (s < 60) return `${s}s`
  const m = Math.ceil(s / 60)
  if (m < 60) return `${m}m`
  return `${Math.floor(m / 60)}h${m % 60 ? `${m % 60}m` : ''}`
}
