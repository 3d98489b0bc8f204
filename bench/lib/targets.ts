/**
 * The targets, checked by the suites that measure them and printed together at the end
 * of a run with a pass/miss column. A target a suite could not measure is listed as "not run".
 */
import os from 'node:os'
import { formatTable } from './report.ts'

export interface Target {
  suite: string
  target: string
  measured: string
  /** undefined: not measured in this run. */
  pass: boolean | undefined
}

export function formatTargets(targets: readonly Target[]): string {
  const rows = targets.map((t) => [
    t.suite,
    t.target,
    t.measured,
    t.pass === undefined ? 'not run' : t.pass ? 'pass' : 'MISS',
  ])
  const [l1, l5] = os.loadavg()
  return [
    'targets (ratios measured side by side in this run)',
    '',
    formatTable(['suite', 'target', 'measured', 'result'], rows),
    '',
    `Load average during the run: ${(l1 ?? 0).toFixed(1)} (1 min), ${(l5 ?? 0).toFixed(1)} (5 min) on ${os.cpus().length} vCPUs;`,
    '  the machine is shared, so ratios move with the load of the other work on it.',
    '',
  ].join('\n')
}
