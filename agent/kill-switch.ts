/**
 * The kill switch, run when the server orders a shred for this host: lock and erase what can be
 * erased, report, then delete the host keys. Order matters: the report is signed with the host
 * key, so the keys go last. Every step is attempted even if an earlier one failed, and every
 * outcome is logged and reported.
 */
import { UnlockdError } from '../shared/errors.ts'
import type { AgentConfig } from '../shared/config/agent.ts'
import type { HostKeys } from '../shared/crypto/keys.ts'
import { shredFile } from '../platform/atomic-file.ts'
import type { ConfigDir } from './config-dir.ts'
import { luksDevice, mapperName } from './apply.ts'
import { reportTo } from './escrow.ts'
import { updateRunState } from './run-state.ts'
import { closeVolume, eraseLuks } from './volumes/luks.ts'

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
    try {
      if (v.kind === 'fscrypt') {
        const { removeKey } = await import('./volumes/fscrypt.ts')
        let r = await removeKey(v.mountpoint, v.keyId, { allUsers: true })
        // Open files keep a busy key alive; retry a few times, then report it.
        for (let i = 0; r === 'busy' && i < 5; i++) {
          await new Promise((res) => setTimeout(res, 1000))
          r = await removeKey(v.mountpoint, v.keyId, { allUsers: true })
        }
        actions.push(
          `fscrypt ${v.name}: key ${r === 'busy' ? 'removed but files still open (incompletely removed until they close)' : r}`,
        )
      } else {
        if (config.onShred === 'close-then-erase') {
          try {
            await closeVolume(mapperName(v))
            actions.push(`luks ${v.name}: closed`)
          } catch (err) {
            actions.push(
              `luks ${v.name}: close failed (${err instanceof Error ? err.message : String(err)}); erasing anyway`,
            )
          }
        }
        await eraseLuks(luksDevice(v))
        actions.push(`luks ${v.name}: header keyslots erased (luksErase)`)
      }
    } catch (err) {
      failed = true
      actions.push(
        `${v.kind} ${v.name}: FAILED: ${err instanceof Error ? err.message : String(err)}`,
      )
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
