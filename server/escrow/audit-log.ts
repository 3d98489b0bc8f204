/** Audit helpers: the actor naming convention and a safe detail builder. */
import type { StoreTx } from '../store/store.ts'

export type Actor =
  `operator:${string}` | `host:${string}` | 'system' | `enroll-token:${string}` | 'anonymous'

export function audit(
  t: StoreTx,
  at: number,
  actor: Actor,
  action: string,
  host: string | null,
  detail: Record<string, unknown> = {},
): Promise<unknown> {
  return t.appendAudit({ at, actor, action, host, detail })
}
