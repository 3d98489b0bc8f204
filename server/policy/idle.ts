/**
 * Liveness (Mandos-style checkers): a host unseen for `policy.idleSuspendSeconds` is suspended,
 * and its next unlock needs an operator's approval (or `unlockd host resume`). The suspension is
 * told apart from an operator's by its reason prefix, so that only idle suspensions can be
 * lifted by an approval. Pure: the maintenance job and the unlock path share these checks.
 */
import { formatDuration } from '../../shared/util/duration.ts'
import type { Policy } from '../../shared/protocol/policy.ts'

/** The rule name an idle host's approval request carries. */
export const IDLE_SUSPEND_RULE = 'idle-suspend'

const IDLE_PREFIX = 'idle: '

export function idleSuspendReason(idleSeconds: number): string {
  return `${IDLE_PREFIX}not seen for more than ${formatDuration(idleSeconds)}; approve its next unlock or run \`unlockd host resume\``
}

/** True when the host was suspended by the liveness check (not by an operator). */
export function isIdleSuspended(host: {
  state: string
  stateReason?: string | null | undefined
}): boolean {
  return (
    host.state === 'suspended' &&
    typeof host.stateReason === 'string' &&
    host.stateReason.startsWith(IDLE_PREFIX)
  )
}

/** True when an active host has been unseen for longer than its policy allows. */
export function idleExpired(
  host: { state: string; lastSeenAt: number | null; createdAt: number },
  policy: Pick<Policy, 'idleSuspendSeconds'>,
  now: number,
): boolean {
  if (host.state !== 'active' || policy.idleSuspendSeconds === null) return false
  return now - (host.lastSeenAt ?? host.createdAt) > policy.idleSuspendSeconds
}
