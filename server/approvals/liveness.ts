/**
 * The liveness checker as a maintenance job (server/jobs.ts): every active host whose policy
 * sets `idleSuspendSeconds` and that has not been seen (released unlock, watch, resume) for that
 * long is suspended, with an idle reason. Its next unlock opens an approval request (rule
 * `idle-suspend`); approving it, or `unlockd host resume`, brings the host back. The unlock path
 * makes the same check (release.ts), so a host is caught even if the job has not run yet.
 */
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { idleExpired, idleSuspendReason } from '../policy/idle.ts'
import type { HostRow, StoreTx } from '../store/store.ts'
import { expireApprovals } from './decide.ts'

export async function suspendIdle(t: StoreTx, host: HostRow, now: number): Promise<void> {
  const idle = host.policy.idleSuspendSeconds as number
  await t.updateHost(host.id, { state: 'suspended', stateReason: idleSuspendReason(idle) })
  await audit(t, now, 'system', 'host.idle_suspend', host.name, {
    lastSeenAt: host.lastSeenAt ?? host.createdAt,
    idleSeconds: idle,
  })
}

/** Suspend every host idle for longer than its policy allows; returns their names. */
export function suspendIdleHosts(deps: ServerDeps): Promise<string[]> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const due = (await t.listHosts()).filter((h) => idleExpired(h, h.policy, now))
    for (const h of due) await suspendIdle(t, h, now)
    return due.map((h) => h.name)
  })
}

/** The job appended to server/jobs.ts: idle suspension, then approval expiry. */
export async function livenessJob(deps: ServerDeps): Promise<void> {
  const suspended = await suspendIdleHosts(deps)
  if (suspended.length > 0)
    deps.log.log('warn', 'hosts suspended for idleness', {
      hosts: suspended.join(','),
      count: suspended.length,
    })
  const expired = await expireApprovals(deps)
  if (expired > 0) deps.log.log('info', 'approval requests expired', { count: expired })
}
