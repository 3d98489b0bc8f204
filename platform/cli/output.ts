/** Command output: `--json` or a table, and times as ISO 8601. */
import type { Values } from './command.ts'
import type { CliIo } from './io.ts'

/** Print `--json` output or a table. */
export function output(io: CliIo, values: Values, data: unknown, table: () => string): void {
  io.stdout(values['json'] ? JSON.stringify(data, null, 2) + '\n' : table())
}

export function formatTable(
  headers: string[],
  rows: (string | number | null | undefined)[][],
): string {
  const cells = [
    headers,
    ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c)))),
  ]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  return (
    cells
      .map((r) =>
        r
          .map((c, i) => (i === r.length - 1 ? c : (c ?? '').padEnd(widths[i] as number)))
          .join('  '),
      )
      .join('\n') + '\n'
  )
}

export function fmtTime(sec: number | null | undefined): string {
  return sec === null || sec === undefined
    ? '-'
    : new Date(sec * 1000).toISOString().replace('.000Z', 'Z')
}
