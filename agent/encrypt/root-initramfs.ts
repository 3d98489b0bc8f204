/**
 * `unlockd encrypt --root --boot-stage`, run by the initramfs script before / is mounted: reads
 * the job (copied into the image), mounts the root filesystem read-only to read the journal,
 * runs the boot's steps (root-boot.ts), and writes the journal back onto the root filesystem (the
 * plaintext partition after the carve, /dev/mapper/root after the init). Prints what it did; a
 * failure leaves the plaintext system bootable and is recorded for the agent to report.
 */
import { existsSync, mkdirSync, readFileSync, realpathSync } from 'node:fs'
import { basename, join } from 'node:path'
import { UnlockdError } from '../../shared/errors.ts'
import type { HostKeys } from '../../shared/crypto/keys.ts'
import { saveJournal } from './journal.ts'
import { tool } from './probe.ts'
import { carveBoot, initRoot, type BootContext, type Tool } from './root-boot.ts'
import { loadJob, type RootJournal } from './root-stage.ts'
import { partName } from './root-table.ts'

const RUN = '/run/unlockd/root-encrypt'
const t: Tool = (cmd, args, stdin) => tool(cmd, args, stdin === undefined ? {} : { stdin })

async function must(cmd: string, args: string[]): Promise<void> {
  const r = await t(cmd, args)
  if (r.code !== 0) throw new UnlockdError('luks_failed', `${cmd} ${args.join(' ')} failed`)
}

/** Read the journal from the root filesystem on `dev`, or write it there. */
async function onRoot<T>(dev: string, mode: 'ro' | 'rw', f: (jpath: string) => T): Promise<T> {
  const m = join(RUN, 'rootfs')
  mkdirSync(m, { recursive: true })
  await must('mount', ['-o', mode, dev, m])
  try {
    return f(m)
  } finally {
    await must('umount', [m])
  }
}

/** Which part this boot does: nothing, the carve, or the init. */
export function bootStageOf(j: RootJournal): 'carve' | 'init' | 'none' {
  if (j.aborted || j.finished) return 'none'
  const done = (s: string): boolean => j.completed.includes(s as never)
  if (!done('stage')) return 'none'
  if (j.plan.bootMode === 'on-root' && !done('copy-boot')) return 'carve'
  if (j.plan.bootMode === 'on-root' && !done('update-initramfs')) return 'none'
  if (!done('open')) return 'init'
  return 'none'
}

export async function runBootStage(o: {
  jobPath: string
  keys: HostKeys
  log: (l: string) => void
}): Promise<'carved' | 'encrypted' | 'nothing'> {
  const job = loadJob(o.jobPath)
  if (job === undefined) return 'nothing'
  const rootDev = realpathSync(
    job.rootPartuuid && existsSync(`/dev/disk/by-partuuid/${job.rootPartuuid}`)
      ? `/dev/disk/by-partuuid/${job.rootPartuuid}`
      : job.rootDevice,
  )
  const isLuks = (await t('cryptsetup', ['isLuks', rootDev])).code === 0
  const inRoot = (m: string): string => join(m, job.journal)
  if (isLuks && !existsSync('/dev/mapper/root')) return 'nothing' // cryptroot opens it
  const readFrom = isLuks ? '/dev/mapper/root' : rootDev
  const j = await onRoot(
    readFrom,
    'ro',
    (m) => JSON.parse(readFileSync(inRoot(m), 'utf8')) as RootJournal,
  )
  const stage = bootStageOf(j)
  if (stage === 'none') return 'nothing'
  const disk = `/dev/${basename(realpathSync(`/sys/class/block/${basename(rootDev)}/..`))}`
  const g = j.plan.geometry
  let saved = j
  const c: BootContext = {
    j,
    disk,
    rootDev,
    bootDev: async () => {
      const n = g?.boot?.partn
      if (n === undefined) throw new TypeError('no /boot partition planned')
      const dev = partName(disk, n)
      for (let i = 0; i < 100 && !existsSync(dev); i++) await new Promise((r) => setTimeout(r, 100))
      return dev
    },
    mnt: RUN,
    tool: t,
    keys: o.keys,
    save: (x) => {
      saved = x
    },
    log: o.log,
    open: true,
  }
  const record = async (ok: boolean, message: string, dev: string): Promise<void> => {
    saved.boots.push({ at: new Date().toISOString(), stage: saved.boots.length + 1, ok, message })
    await onRoot(dev, 'rw', (m) => saveJournal(inRoot(m), saved))
  }
  try {
    if (stage === 'carve') {
      await carveBoot(c)
      await record(true, 'carved /boot', rootDev)
      return 'carved'
    }
    const bootMount = join(RUN, 'boot')
    mkdirSync(bootMount, { recursive: true })
    const bootUuid = j.plan.bootFsUuid
    const bootSrc = bootUuid ? `/dev/disk/by-uuid/${bootUuid}` : j.plan.bootDevice
    if (bootSrc === null) throw new TypeError('no /boot device')
    await must('mount', [bootSrc, bootMount])
    try {
      await initRoot(c, join(bootMount, 'unlockd-root.luks-header'))
    } finally {
      await must('umount', [bootMount])
    }
    await record(
      true,
      'LUKS2 initialized; the data is encrypted online after boot',
      '/dev/mapper/root',
    )
    return 'encrypted'
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err)
    o.log(`unlockd: root encryption step failed: ${message}; booting unchanged`)
    const dev = existsSync('/dev/mapper/root') ? '/dev/mapper/root' : rootDev
    await record(false, message, dev).catch(() => {})
    throw err
  }
}
