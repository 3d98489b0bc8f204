/**
 * Process facts from /proc for benchmarks: CPU time (own + reaped children, so a launcher such
 * as systemd-socket-activate accounts for the per-connection tangd processes it has waited for)
 * and memory high-water marks. Linux only; every reader returns undefined when /proc is absent.
 */
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'

let ticks: number | undefined

function clockTicks(): number {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100
    } catch {
      ticks = 100
    }
  }
  return ticks
}

/** CPU milliseconds of `pid` (user + system), plus its waited-for children when `children`. */
export function cpuMs(pid: number, children = false): number | undefined {
  let stat: string
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  // Fields after the command name (which may contain spaces) start at ")".
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const n = (i: number): number => Number(f[i - 3] ?? 0)
  const total = n(14) + n(15) + (children ? n(16) + n(17) : 0)
  return (total * 1000) / clockTicks()
}

/** `VmHWM` (peak resident set) or `VmRSS` of `pid`, in MiB. */
export function memMiB(pid: number, field: 'VmHWM' | 'VmRSS' = 'VmHWM'): number | undefined {
  let status: string
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    return undefined
  }
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)
  return m ? Number(m[1]) / 1024 : undefined
}

/** Sample `VmRSS` of `pid` every `everyMs` until stopped; returns the peak seen (MiB). */
export function sampleRss(pid: number, everyMs = 200): { stop(): number | undefined } {
  let peak: number | undefined
  const take = (): void => {
    const v = memMiB(pid, 'VmRSS')
    if (v !== undefined && (peak === undefined || v > peak)) peak = v
  }
  take()
  const timer = setInterval(take, everyMs)
  timer.unref()
  return {
    stop() {
      clearInterval(timer)
      take()
      return peak
    },
  }
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN
  const s = [...values].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}
