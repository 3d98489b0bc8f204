import type { Target } from '../lib/targets.ts'

/** What bench/run.ts hands to each suite. */
export interface SuiteContext {
  log: (line: string) => void
  /** Per-measurement duration (ms) for time-bound suites; suite default when undefined. */
  durationMs?: number
  /** Concurrency levels for the exchange suite. */
  concurrencies?: number[]
  /** Simulated hosts for the storm suite. */
  hosts?: number
  /** Requests in flight at most during a storm. */
  inflight?: number
  /** Repetitions for the agent suite. */
  runs?: number
  /** Image size in MiB for the encrypt suite. */
  sizeMiB?: number
  /** Where suites record the targets they checked (printed at the end of the run). */
  targets: Target[]
  /** Register cleanup; run in reverse order when the suite ends, fails or is interrupted. */
  onCleanup(fn: () => Promise<void>): void
}
