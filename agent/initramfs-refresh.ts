/**
 * After agent.json changed on the running system (a server key pinned on first use, or a key
 * rotation), the initramfs still holds the old copy, and the boot unlock reads that one. Rebuild
 * it with the tool the system has (`update-initramfs -u`, else `dracut -f`), or, when neither is
 * installed or the rebuild fails, say exactly which command to run. Inside the initramfs itself
 * nothing is run: its agent.json lives in RAM and the running system's agent pins again.
 */
import { existsSync } from 'node:fs'
import { describeError } from '../shared/errors.ts'
import { run } from './exec.ts'
import { which } from './initramfs-plan.ts'

export interface RefreshDeps {
  which(name: string): string | undefined
  run(cmd: string, args: readonly string[]): Promise<{ code: number; stderr: string }>
  inInitramfs(): boolean
}

/** Markers only an initramfs has: initramfs-tools' /scripts, dracut's /lib/dracut-lib.sh, initrd-release. */
const INITRAMFS_MARKERS = ['/scripts/local-top', '/lib/dracut-lib.sh', '/etc/initrd-release']

export const systemRefreshDeps: RefreshDeps = {
  which: (name) => which(name, process.env['PATH']),
  run: async (cmd, args) => {
    const r = await run(cmd, args, { timeoutMs: 10 * 60_000 })
    return { code: r.code, stderr: r.stderr.slice(-500) }
  },
  inInitramfs: () => INITRAMFS_MARKERS.some((m) => existsSync(m)),
}

const MANUAL =
  'rebuild the initramfs so that its copy of agent.json has the new server key: update-initramfs -u (Debian, Ubuntu) or dracut -f (Fedora, RHEL)'

export type RefreshOutcome = 'rebuilt' | 'told' | 'skipped'

export async function refreshInitramfs(
  why: string,
  log: (line: string) => void,
  deps: RefreshDeps = systemRefreshDeps,
): Promise<RefreshOutcome> {
  if (deps.inInitramfs()) {
    log(`${why}: running inside the initramfs, not rebuilding it; the running system will`)
    return 'skipped'
  }
  const tools: [string, string[]][] = [
    ['update-initramfs', ['-u']],
    ['dracut', ['-f']],
  ]
  for (const [name, args] of tools) {
    const path = deps.which(name)
    if (!path) continue
    log(`${why}: refreshing the initramfs copy of agent.json (${name} ${args.join(' ')})`)
    try {
      const r = await deps.run(path, args)
      if (r.code === 0) {
        log(`${why}: initramfs rebuilt`)
        return 'rebuilt'
      }
      log(`${why}: ${name} ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim()}`)
    } catch (err) {
      log(`${why}: ${name} ${args.join(' ')} could not run: ${describeError(err)}`)
    }
    log(`${why}: ${MANUAL}`)
    return 'told'
  }
  log(`${why}: no update-initramfs or dracut here; ${MANUAL}`)
  return 'told'
}
