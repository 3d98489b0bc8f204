/**
 * Closed-loop load generator: `concurrency` workers each run `fn` back to back until the request
 * budget or the time budget is spent, whichever comes first. Every run is bounded: a time cap
 * always applies (10 min when only `requests` is given), and each call has a timeout so a hung
 * request cannot stall a worker.
 *
 * Latency percentiles cover successful calls only (a refused connection returns in microseconds
 * and would flatter p50); failed calls are counted in `errors`.
 */

export interface LoadOptions {
  /** Parallel workers, 1..4096. */
  concurrency: number
  /** Stop starting new calls after this long (ms). */
  durationMs?: number
  /** Stop after this many calls in total. */
  requests?: number
  /** One operation; a rejection counts as an error. */
  fn: () => Promise<void>
  /** Per-call timeout (ms), counted as an error. Default 30 000. */
  timeoutMs?: number
}

export interface LoadResult {
  /** Calls completed (successes + errors). */
  requests: number
  errors: number
  /** Successful calls per second of wall time. */
  rps: number
  p50Ms: number
  p99Ms: number
  maxMs: number
  /** Wall time from first start to last completion. */
  elapsedMs: number
  concurrency: number
  /** Message of the first error, for diagnosis. */
  firstError?: string
}

const DEFAULT_CAP_MS = 10 * 60 * 1000
const MAX_DURATION_MS = 60 * 60 * 1000
const MAX_REQUESTS = 100_000_000

/** Nearest-rank percentile of an ascending array (0 when empty). */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] ?? 0
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/**
 * Run a closed-loop load test.
 * @example
 * const r = await runLoad({ concurrency: 16, durationMs: 5000, fn: () => oneRequest() })
 */
export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  const { concurrency, fn } = opts
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 4096)
    throw new RangeError('concurrency must be an integer in 1..4096')
  if (opts.durationMs === undefined && opts.requests === undefined)
    throw new RangeError('give durationMs, requests, or both')
  if (opts.durationMs !== undefined && !(opts.durationMs > 0 && opts.durationMs <= MAX_DURATION_MS))
    throw new RangeError('durationMs must be in (0, 1 h]')
  if (
    opts.requests !== undefined &&
    !(Number.isInteger(opts.requests) && opts.requests > 0 && opts.requests <= MAX_REQUESTS)
  ) {
    throw new RangeError(`requests must be an integer in 1..${MAX_REQUESTS}`)
  }
  const timeoutMs = opts.timeoutMs ?? 30_000
  if (!(timeoutMs > 0 && timeoutMs <= MAX_DURATION_MS))
    throw new RangeError('timeoutMs must be in (0, 1 h]')
  const budget = opts.requests ?? MAX_REQUESTS
  const durationMs = opts.durationMs ?? DEFAULT_CAP_MS

  let latencies = new Float64Array(1024)
  let ok = 0
  let errors = 0
  let started = 0
  let firstError: string | undefined

  const record = (ms: number): void => {
    if (ok === latencies.length) {
      const grown = new Float64Array(latencies.length * 2)
      grown.set(latencies)
      latencies = grown
    }
    latencies[ok++] = ms
  }

  const callWithTimeout = async (): Promise<void> => {
    let timer: ReturnType<typeof setTimeout> | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs)
    })
    try {
      await Promise.race([Promise.resolve().then(fn), timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  const t0 = performance.now()
  const deadline = t0 + durationMs
  const worker = async (): Promise<void> => {
    while (started < budget && performance.now() < deadline) {
      started++
      const s = performance.now()
      try {
        await callWithTimeout()
        record(performance.now() - s)
      } catch (err) {
        errors++
        firstError ??= describe(err)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  const elapsedMs = performance.now() - t0

  const sorted = latencies.subarray(0, ok).sort()
  const result: LoadResult = {
    requests: ok + errors,
    errors,
    rps: elapsedMs > 0 ? (ok * 1000) / elapsedMs : 0,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    maxMs: sorted.length > 0 ? (sorted[sorted.length - 1] ?? 0) : 0,
    elapsedMs,
    concurrency,
  }
  if (firstError !== undefined) result.firstError = firstError
  return result
}
