/**
 * TEST HOOK, for the crash-recovery tests only: `UNLOCKD_TEST_CRASH_AT=STEP` makes `unlockd
 * encrypt` kill itself with SIGKILL inside the named step (and first any tool it started for
 * that step), exactly as a power cut would stop it. `UNLOCKD_TEST_CRASH_DELAY_MS` delays the kill
 * after the tool starts (default 0), unless the step says when the tool is part-way. Unset in production; it changes nothing when unset.
 */
import { observeSpawns } from '../exec.ts'

const ENV = 'UNLOCKD_TEST_CRASH_AT'

export function crashRequested(step: string): boolean {
  return process.env[ENV] === step
}

/** Die now if the hook names `step`. */
export function crashPoint(step: string): void {
  if (crashRequested(step)) process.kill(process.pid, 'SIGKILL')
}

/** Kill `pid` (a tool we started) and then ourselves. */
export function crashWithChild(pid: number | undefined): void {
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGKILL')
    } catch {
      // already gone
    }
  }
  process.kill(process.pid, 'SIGKILL')
}

/**
 * While `fn` runs, if the hook names `step`, kill the first `cmd` it starts (after the delay)
 * and then this process.
 */
export async function withSpawnCrash<T>(
  step: string,
  cmd: string,
  fn: () => Promise<T>,
  ready?: () => boolean,
): Promise<T> {
  if (!crashRequested(step)) return fn()
  const delay = Number(process.env['UNLOCKD_TEST_CRASH_DELAY_MS'] ?? '0')
  let pending: ReturnType<typeof setTimeout> | undefined
  const stop = observeSpawns((e) => {
    if (e.cmd !== cmd) return
    if (ready === undefined) {
      pending = setTimeout(() => crashWithChild(e.pid), Number.isFinite(delay) ? delay : 0)
      return
    }
    // Poll until the tool has visibly done part of its work, then die.
    const timer = setInterval(() => {
      if (ready()) {
        clearInterval(timer)
        crashWithChild(e.pid)
      }
    }, 1)
  })
  try {
    return await fn()
  } finally {
    stop()
    // The tool finished before the delayed kill fired (a busy machine): die now, still inside
    // the step, rather than later in another one.
    if (pending !== undefined) {
      clearTimeout(pending)
      crashWithChild(undefined)
    }
  }
}

/** Pid of the last `cmd` started while `fn` runs (so a progress handler can kill it). */
export async function trackChild<T>(
  cmd: string,
  fn: (pid: () => number | undefined) => Promise<T>,
): Promise<T> {
  let pid: number | undefined
  const stop = observeSpawns((e) => {
    if (e.cmd === cmd) pid = e.pid
  })
  try {
    return await fn(() => pid)
  } finally {
    stop()
  }
}
