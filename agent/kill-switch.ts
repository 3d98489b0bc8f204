/**
 * The kill switch, run when the server orders a shred for this host: lock and erase what can be
 * erased, report, then delete the host keys. Order matters: the report is signed with the host
 * key, so the keys go last. Every step is attempted even if an earlier one failed, and every
 * outcome is logged and reported.
 */
import { UnlockdError, describeError } from '../shared/errors.ts'
import type { AgentConfig } from '../shared/config/agent.ts'
import type { HostKeys } from '../shared/crypto/keys.ts'
import { shredFile } from '../platform/atomic-file.ts'
import type { ConfigDir } from './config-dir.ts'
import { reportTo } from './escrow.ts'
import { updateRunState } from './run-state.ts'
import { backendFor } from './volumes/registry.ts'

export async function executeShred(
  c: ConfigDir,
  config: AgentConfig,
  keys: HostKeys,
  volumes: string[],
  log: (line: string) => void,
): Promise<string[]> {
  const actions: string[] = []
  let failed = false
  const targets = volumes.length
    ? config.volumes.filter((v) => volumes.includes(v.name))
    : config.volumes
  for (const v of targets) {
    const report = (step: string): void => {
      actions.push(`${v.kind} ${v.name}: ${step}`)
    }
    try {
      const backend = await backendFor(v)
      await backend.shred(v, { closeFirst: config.onShred === 'close-then-erase', report })
    } catch (err) {
      failed = true
      report(`FAILED: ${describeError(err)}`)
    }
  }
  const shredded = new Set(targets.map((v) => v.name))
  updateRunState((s) => {
    for (const n of shredded)
      s.volumes[n] = {
        state: 'shredded',
        at: Math.floor(Date.now() / 1000),
        code: 'host_shredded',
        reason: 'shred order from the escrow server',
      }
  })
  const allVolumes = targets.length === config.volumes.length
  if (allVolumes) actions.push('host keys: deleted')
  for (const a of actions) log(`shred: ${a}`)
  await reportTo(c, config, keys, failed ? 'shred_failed' : 'shred_done', actions).catch(() =>
    log('shred: could not report to the server'),
  )
  if (allVolumes) {
    for (const p of [c.signingPath, c.sealingPath]) {
      try {
        shredFile(p)
      } catch (err) {
        log(`shred: could not delete ${p}: ${err instanceof Error ? err.message : String(err)}`)
      }
    }
  }
  if (failed)
    throw new UnlockdError(
      'luks_failed',
      `shred finished with failures: ${actions.filter((a) => a.includes('FAILED')).join('; ')}`,
    )
  return actions
}
