/**
 * Background maintenance while the server runs: purge spent nonces. Scheduled KEK rotation
 * hooks in here too (server/keys/rotation.ts). Every job is bounded and never throws out.
 */
import type { ServerDeps } from './context.ts'
import { livenessJob } from './approvals/liveness.ts'
import { expireActions } from './approvals/quorum.ts'
import { rotateIfDue } from './keys/rotation.ts'
import { flushAuthFailureAudit } from './escrow/auth-failure-audit.ts'
import { anchorAuditHead } from './escrow/audit-chain.ts'

type MaintenanceJob = (deps: ServerDeps) => Promise<void>

const jobs: MaintenanceJob[] = [
  async (deps) => {
    const n = await deps.store.tx((t) => t.purgeNonces(deps.now() - 60))
    if (n > 0) deps.log.log('debug', 'purged nonces', { count: n })
  },
  // Liveness: suspend hosts unseen past policy.idleSuspendSeconds; expire stale approvals.
  livenessJob,
  // Quorum actions past their expiry.
  async (deps) => {
    await expireActions(deps)
  },
  // KEK rotation: finish a pending one (after a crash or a failed shred rotation), then rotate
  // every settings.kekRotationPeriod.
  async (deps) => {
    await rotateIfDue(deps)
  },
  // Counts of host authentication failures whose summary minute has passed.
  (deps) => flushAuthFailureAudit(deps),
  // Seal the audit chain; export its head every settings.auditHead entries or seconds.
  async (deps) => {
    await anchorAuditHead(deps)
  },
]

/** Run every job now and then every `intervalMs`; returns a stop function. */
export function runMaintenance(deps: ServerDeps, intervalMs = 60_000): () => void {
  let running = false
  const tick = async (): Promise<void> => {
    if (running) return
    running = true
    for (const job of jobs) {
      try {
        await job(deps)
      } catch (err) {
        deps.log.log('error', 'maintenance job failed', {
          err: err instanceof Error ? err.message : String(err),
        })
      }
    }
    running = false
  }
  const timer = setInterval(() => void tick(), intervalMs)
  timer.unref()
  void tick()
  return () => clearInterval(timer)
}
