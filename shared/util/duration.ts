/**
 * Durations as people write them in configs and flags: `90s`, `15m`, `1h`, `7d`, `2w`,
 * or a combination such as `1h30m`. Returns seconds.
 */
const UNIT: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }

export function parseDuration(text: string): number | undefined {
  if (typeof text !== 'string' || text.length === 0 || text.length > 32) return undefined
  const re = /(\d+)([smhdw])/gy
  let total = 0
  let consumed = 0
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    total += Number(m[1]) * (UNIT[m[2] as string] as number)
    consumed = re.lastIndex
  }
  if (consumed !== text.length || total <= 0 || !Number.isSafeInteger(total)) return undefined
  return total
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds <= 0) return '0s'
  const parts: string[] = []
  let rest = Math.floor(seconds)
  for (const [u, n] of [
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    if (rest >= n) {
      parts.push(`${Math.floor(rest / n)}${u}`)
      rest %= n
    }
  }
  return parts.join('')
}
