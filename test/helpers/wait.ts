/**
 * Wait for a condition instead of sleeping for a guessed time: poll `cond` until it holds. The
 * bound is generous (a busy 2-core machine must not trip it); it only stops a hung test.
 *
 * @example
 * ```ts
 * await until(() => srv.deps.events.listenerCount(`shred:${hostId}`) > 0, 'the watch to wait')
 * ```
 */
import { setTimeout as sleep } from 'node:timers/promises'

export async function until(
  cond: () => boolean | Promise<boolean>,
  what: string | (() => string),
  o: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<void> {
  const deadline = Date.now() + (o.timeoutMs ?? 60_000)
  while (!(await cond())) {
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${typeof what === 'string' ? what : what()}`)
    await sleep(o.intervalMs ?? 50)
  }
}
