/**
 * Progress of long work (cryptsetup reencrypt, copying a tree): parsing cryptsetup's two progress
 * formats, and a reporter that draws one updating line on a terminal, or writes one JSON line per
 * second (`--json`, on stderr, so stdout stays one result document), or stays quiet.
 */
import { formatBytes } from '../../shared/util/bytes.ts'

export interface Progress {
  /** What is being done, e.g. "encrypting data" or "copying". */
  phase: string
  doneBytes: number
  totalBytes: number
  /** Bytes per second, when known. */
  rate: number | undefined
  /** Seconds left, when known. */
  etaSeconds: number | undefined
}

export { formatBytes }

const num = (v: unknown): number | undefined => {
  const n = typeof v === 'string' ? Number(v) : typeof v === 'number' ? v : NaN
  return Number.isFinite(n) ? n : undefined
}

/**
 * One line of `cryptsetup reencrypt --progress-json` (cryptsetup >= 2.6):
 * {"device":"d.img","device_bytes":"134217728","device_size":"612368384","speed":"233040932","eta_ms":"2123","time_ms":"503"}
 */
export function parseProgressJson(line: string, phase: string): Progress | undefined {
  let doc: unknown
  try {
    doc = JSON.parse(line)
  } catch {
    return undefined
  }
  if (typeof doc !== 'object' || doc === null) return undefined
  const d = doc as Record<string, unknown>
  const done = num(d['device_bytes'])
  const total = num(d['device_size'])
  if (done === undefined || total === undefined) return undefined
  const eta = num(d['eta_ms'])
  return {
    phase,
    doneBytes: done,
    totalBytes: total,
    rate: num(d['speed']),
    etaSeconds: eta === undefined ? undefined : eta / 1000,
  }
}

const UNIT: Record<string, number> = {
  B: 1,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
  TiB: 1024 ** 4,
}

/**
 * One line of the older `--progress-frequency` text:
 * "Progress:  12.3%, ETA 00:04, 123 MiB written, speed 250.1 MiB/s". Total bytes are derived
 * from the percentage.
 */
export function parseProgressText(line: string, phase: string): Progress | undefined {
  const m =
    /Progress:\s*([\d.]+)%,\s*ETA\s*(\d+):(\d+)(?::(\d+))?,\s*([\d.]+)\s*(B|KiB|MiB|GiB|TiB) written,\s*speed\s*([\d.]+)\s*(B|KiB|MiB|GiB|TiB)\/s/.exec(
      line,
    )
  if (!m) return undefined
  const pct = Number(m[1])
  const done = Number(m[5]) * (UNIT[m[6] as string] ?? 1)
  const parts = [m[2], m[3], m[4]].filter((x): x is string => x !== undefined).map(Number)
  const eta = parts.reduce((acc, p) => acc * 60 + p, 0)
  return {
    phase,
    doneBytes: done,
    totalBytes: pct > 0 ? Math.round((done * 100) / pct) : 0,
    rate: Number(m[7]) * (UNIT[m[8] as string] ?? 1),
    etaSeconds: eta,
  }
}

/** Split a stream into lines (cryptsetup ends its terminal updates with '\r'). */
export function lineSplitter(onLine: (line: string) => void): (chunk: Buffer) => void {
  let rest = ''
  return (chunk) => {
    rest += chunk.toString('utf8')
    const parts = rest.split(/[\r\n]/)
    rest = parts.pop() ?? ''
    for (const p of parts) if (p.trim() !== '') onLine(p.trim())
  }
}

function formatEta(s: number | undefined): string {
  if (s === undefined || !Number.isFinite(s)) return '--:--'
  const t = Math.max(0, Math.round(s))
  const h = Math.floor(t / 3600)
  const m = Math.floor((t % 3600) / 60)
  const sec = t % 60
  const mm = String(m).padStart(2, '0')
  const ss = String(sec).padStart(2, '0')
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`
}

/** The terminal line for `p`. */
export function progressLine(p: Progress): string {
  const pct = p.totalBytes > 0 ? ((100 * p.doneBytes) / p.totalBytes).toFixed(1) : '0.0'
  const rate = p.rate === undefined ? '' : `, ${formatBytes(p.rate)}/s`
  return `${p.phase}: ${formatBytes(p.doneBytes)} / ${formatBytes(p.totalBytes)} (${pct}%)${rate}, ETA ${formatEta(p.etaSeconds)}`
}

export type ProgressMode = 'tty' | 'json' | 'quiet'

export interface Reporter {
  update(p: Progress): void
  /** Print the last state (always, in JSON mode) and end the terminal line. */
  done(): void
}

/**
 * A reporter for `mode`. JSON lines are rate-limited to one per second (plus the last one);
 * `now` is injectable for tests.
 */
export function progressReporter(
  mode: ProgressMode,
  write: (text: string) => void,
  now: () => number = Date.now,
): Reporter {
  let last: Progress | undefined
  let lastAt = -Infinity
  let printedLast = true
  const emit = (p: Progress): void => {
    if (mode === 'json')
      write(
        JSON.stringify({
          progress: p.phase,
          doneBytes: p.doneBytes,
          totalBytes: p.totalBytes,
          bytesPerSecond: p.rate ?? null,
          etaSeconds: p.etaSeconds ?? null,
        }) + '\n',
      )
    else if (mode === 'tty') write(`\r\x1b[K${progressLine(p)}`)
  }
  return {
    update(p) {
      last = p
      printedLast = false
      const t = now()
      if (mode === 'tty' || t - lastAt >= 1000) {
        lastAt = t
        printedLast = true
        emit(p)
      }
    },
    done() {
      if (last !== undefined && !printedLast) emit(last)
      if (mode === 'tty' && last !== undefined) write('\n')
      last = undefined
      printedLast = true
    },
  }
}
