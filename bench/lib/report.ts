/**
 * Side-by-side benchmark table: our server against a peer (tang, mandos, …), with ratios
 * ours/peer. For rps a ratio above 1 is better for us; for latencies below 1 is better.
 */
import type { LoadResult } from './load.ts'

export interface ReportRow {
  /** Scenario, e.g. "/rec c=16". */
  name: string
  ours?: LoadResult
  peer?: LoadResult
}

export interface ReportOptions {
  title?: string
  oursLabel?: string
  peerLabel?: string
  /** Lines printed under the table (method, caveats). */
  notes?: readonly string[]
}

/** `ours / peer` as "1.23x", or "-" when either side is missing or the peer value is 0. */
export function ratio(ours: number | undefined, peer: number | undefined): string {
  if (ours === undefined || peer === undefined || peer === 0) return '-'
  return `${(ours / peer).toFixed(2)}x`
}

function num(v: number | undefined, digits: number): string {
  return v === undefined ? '-' : v.toFixed(digits)
}

function errs(r: LoadResult | undefined): string {
  return r === undefined ? '-' : `${r.errors}/${r.requests}`
}

/** The table as text (fixed-width columns). */
export function formatReport(rows: readonly ReportRow[], opts: ReportOptions = {}): string {
  const o = opts.oursLabel ?? 'ours'
  const p = opts.peerLabel ?? 'peer'
  const header = [
    'scenario',
    `${o} rps`,
    `${p} rps`,
    'rps x',
    `${o} p50`,
    `${p} p50`,
    'p50 x',
    `${o} p99`,
    `${p} p99`,
    'p99 x',
    `${o} max`,
    `${p} max`,
    `${o} err`,
    `${p} err`,
  ]
  const body = rows.map((r) => [
    r.name,
    num(r.ours?.rps, 1),
    num(r.peer?.rps, 1),
    ratio(r.ours?.rps, r.peer?.rps),
    num(r.ours?.p50Ms, 2),
    num(r.peer?.p50Ms, 2),
    ratio(r.ours?.p50Ms, r.peer?.p50Ms),
    num(r.ours?.p99Ms, 2),
    num(r.peer?.p99Ms, 2),
    ratio(r.ours?.p99Ms, r.peer?.p99Ms),
    num(r.ours?.maxMs, 1),
    num(r.peer?.maxMs, 1),
    errs(r.ours),
    errs(r.peer),
  ])
  // Drop columns that are empty for every row (e.g. a peer-only run).
  const keep = header.map((_, i) => i === 0 || body.some((row) => row[i] !== '-'))
  const cols = header.filter((_, i) => keep[i])
  const lines = body.map((row) => row.filter((_, i) => keep[i]))
  const widths = cols.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] ?? '').length)))
  const fmt = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0)))
      .join('  ')
      .trimEnd()
  const out: string[] = []
  if (opts.title !== undefined) out.push(opts.title, '')
  out.push(fmt(cols), widths.map((w) => '-'.repeat(w)).join('  '))
  for (const l of lines) out.push(fmt(l))
  out.push(
    '',
    'rps: successful requests/s; latencies in ms (successful requests); x = ours/peer (rps: >1 better, latency: <1 better).',
  )
  for (const n of opts.notes ?? []) out.push(n)
  for (const r of rows) {
    if (r.ours?.firstError !== undefined)
      out.push(`${r.name} ${o} first error: ${r.ours.firstError}`)
    if (r.peer?.firstError !== undefined)
      out.push(`${r.name} ${p} first error: ${r.peer.firstError}`)
  }
  return out.join('\n')
}

/** Print {@link formatReport} to stdout. */
export function printReport(rows: readonly ReportRow[], opts: ReportOptions = {}): void {
  process.stdout.write(`${formatReport(rows, opts)}\n`)
}

/** A plain fixed-width table (first column left-aligned, the rest right-aligned). */
export function formatTable(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const fmt = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0)))
      .join('  ')
      .trimEnd()
  return [fmt(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(fmt)].join('\n')
}

/** Format a number with `digits` decimals, or "-" when missing or not finite. */
export function fmtNum(v: number | undefined, digits = 1): string {
  return v === undefined || !Number.isFinite(v) ? '-' : v.toFixed(digits)
}
