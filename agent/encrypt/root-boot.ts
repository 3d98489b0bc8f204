/**
 * The initramfs part of a root conversion, run by the agent from the initramfs script before /
 * is mounted. Every step checks its own result first, so a boot that died half-way repeats only
 * what is missing; every failure before the LUKS2 header exists is rolled back (the saved
 * partition table written back, the filesystem grown to fill the partition again), so the boot
 * goes on from the unchanged plaintext root, without the network.
 *
 *   carve (boot 1, when /boot is on /):  fsck, shrink-fs, shrink-partition + create-boot-partition
 *     (one sfdisk write of the whole planned table), mkfs-boot, copy-boot (compared file by file)
 *   encrypt (the next boot):  unseal-key, fsck, shrink-fs (separate /boot only), reencrypt-init
 *     (--init-only --reduce-device-size 32M --uuid planned), fallback-keyslot, header-backup, open
 */
import { createHash } from 'node:crypto'
import { lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { UnlockdError } from '../../shared/errors.ts'
import { zeroize } from '../../shared/crypto/bytes.ts'
import type { HostKeys } from '../../shared/crypto/keys.ts'
import { FAST_TEST_PBKDF, PBKDF_ENV } from '../volumes/luks.ts'
import type { RunResult } from '../exec.ts'
import { lastLine } from './probe.ts'
import { ROOT_HEADER_ROOM_BYTES, type RootStep } from './root-plan.ts'
import { openFallback, type RootJournal } from './root-stage.ts'
import { carvedTable, samePartitions } from './root-table.ts'

export type Tool = (cmd: string, args: string[], stdin?: Uint8Array) => Promise<RunResult>

export interface BootContext {
  j: RootJournal
  /** The disk as this boot sees it (the planned path, or an image file in tests). */
  disk: string
  rootDev: string
  /** The new /boot partition's device, once the table has it (waits for udev at boot). */
  bootDev: () => Promise<string>
  /** Empty directories to mount the old root (read-only) and the new /boot on. */
  mnt: string
  tool: Tool
  keys: HostKeys
  /** Record progress (the initramfs keeps the journal in RAM and writes it back at the end). */
  save: (j: RootJournal) => void
  log: (line: string) => void
  /** Whether to open the mapping after init (false where device-mapper is missing: tests). */
  open: boolean
  /** Test hook: fail inside this step, after its work, to exercise the rollback. */
  failAfter?: RootStep | undefined
}

async function must(
  c: BootContext,
  cmd: string,
  args: string[],
  stdin?: Uint8Array,
): Promise<string> {
  const r = await c.tool(cmd, args, stdin)
  if (r.code !== 0)
    throw new UnlockdError('luks_failed', `${cmd} ${args[0] ?? ''} failed: ${lastLine(r)}`, {
      details: { tool: cmd, exitCode: r.code },
    })
  return r.stdout.toString('utf8')
}

async function fsck(c: BootContext, dev: string): Promise<void> {
  const r = await c.tool('e2fsck', ['-f', '-y', dev])
  if (r.code > 2)
    throw new UnlockdError(
      'volume_invalid',
      `e2fsck could not repair ${dev} (exit ${r.code}: ${lastLine(r)}); nothing was changed: repair it from the initramfs shell`,
    )
}

async function fsBytes(c: BootContext, dev: string): Promise<number> {
  const t = await must(c, 'dumpe2fs', ['-h', dev])
  const f = (k: string): number => Number(new RegExp(`^${k}:\\s*(\\d+)`, 'm').exec(t)?.[1])
  return f('Block count') * f('Block size')
}

async function fsUuid(c: BootContext, dev: string): Promise<string | null> {
  const r = await c.tool('blkid', ['-p', '-o', 'value', '-s', 'UUID', dev])
  const u = r.stdout.toString('utf8').trim().toLowerCase()
  return r.code === 0 && u !== '' ? u : null
}

function mark(c: BootContext, step: RootStep): void {
  c.j.current = null
  if (!c.j.completed.includes(step)) c.j.completed.push(step)
  c.save(c.j)
}

async function step(c: BootContext, s: RootStep, work: () => Promise<void>): Promise<void> {
  if (c.j.completed.includes(s)) return
  c.j.current = s
  c.save(c.j)
  c.log(`unlockd: ${s}`)
  await work()
  if (c.failAfter === s) throw new UnlockdError('internal', `test failure after ${s}`)
  mark(c, s)
}

async function shrinkFs(c: BootContext, dev: string, bytes: number): Promise<void> {
  if ((await fsBytes(c, dev)) <= bytes) return
  await must(c, 'resize2fs', [dev, `${bytes / 1024}K`])
  if ((await fsBytes(c, dev)) > bytes)
    throw new UnlockdError('internal', `resize2fs left ${dev} larger than planned`)
}

/** Boot 1 when /boot is on the root filesystem. Rolls back on any failure, then rethrows. */
export async function carveBoot(c: BootContext): Promise<void> {
  const g = c.j.plan.geometry
  if (g === null || g.boot === null) throw new TypeError('this plan has no /boot to carve')
  const original = c.j.partitionTable
  const dumpDisk = /^device:\s*(\S+)/m.exec(original)?.[1] ?? g.disk
  try {
    await step(c, 'fsck', () => fsck(c, c.rootDev))
    await step(c, 'shrink-fs', () => shrinkFs(c, c.rootDev, g.fsBytesAfter))
    const next = carvedTable(original, g, dumpDisk, null)
    await step(c, 'shrink-partition', async () => {
      const now = await must(c, 'sfdisk', ['--dump', c.disk])
      if (samePartitions(now, next)) return
      if (!samePartitions(now, original))
        throw new UnlockdError(
          'conflict',
          `the partition table of ${c.disk} is neither the saved one nor the planned one: it was changed since staging; nothing more is done`,
        )
      await must(c, 'sfdisk', ['--no-reread', '--no-tell-kernel', '-q', c.disk], enc(next))
      await reread(c)
    })
    // One sfdisk write made the new partition too; this step only checks that it is there.
    await step(c, 'create-boot-partition', async () => {
      const now = await must(c, 'sfdisk', ['--dump', c.disk])
      if (!samePartitions(now, next))
        throw new UnlockdError('internal', `${c.disk} does not have the planned partitions`)
    })
    const bootDev = await c.bootDev()
    const uuid = c.j.plan.bootFsUuid
    if (uuid === null) throw new TypeError('no /boot UUID planned')
    await step(c, 'mkfs-boot', async () => {
      if ((await fsUuid(c, bootDev)) === uuid) return
      await must(c, 'mkfs.ext4', ['-q', '-F', '-U', uuid, '-L', 'boot', bootDev])
    })
    await step(c, 'copy-boot', () => copyBoot(c, bootDev))
  } catch (err) {
    c.log(`unlockd: ${err instanceof Error ? err.message : String(err)}; rolling back`)
    await rollbackCarve(c, original)
    throw err
  }
}

/** Tell the kernel about the new table and wait for udev (an image file has neither). */
async function reread(c: BootContext): Promise<void> {
  for (const [cmd, args] of [
    ['partx', ['-u', c.disk]],
    ['udevadm', ['settle']],
  ] as const) {
    try {
      await c.tool(cmd, [...args])
    } catch {
      // not installed where there is no kernel partition device to update
    }
  }
}

function enc(s: string): Uint8Array {
  return new TextEncoder().encode(s)
}

/** Copy /boot of the old root into the new partition and compare every file. */
async function copyBoot(c: BootContext, bootDev: string): Promise<void> {
  const oldRoot = join(c.mnt, 'root')
  const newBoot = join(c.mnt, 'boot')
  mkdirSync(oldRoot, { recursive: true })
  mkdirSync(newBoot, { recursive: true })
  await must(c, 'mount', ['-o', 'ro', c.rootDev, oldRoot])
  try {
    await must(c, 'mount', [bootDev, newBoot])
    try {
      // Everything in /boot except the mount point of the ESP, which stays where it is.
      await must(c, 'cp', ['-a', '-T', join(oldRoot, 'boot'), newBoot])
      const a = treeDigest(join(oldRoot, 'boot'))
      const b = treeDigest(newBoot)
      for (const [p, h] of a)
        if (b.get(p) !== h)
          throw new UnlockdError('internal', `the copy of /boot/${p} differs from the original`)
    } finally {
      await must(c, 'umount', [newBoot])
    }
  } finally {
    await must(c, 'umount', [oldRoot])
  }
}

/** Relative path -> digest of contents (files), target (links) or 'dir', below `dir`. */
export function treeDigest(dir: string, prefix = ''): Map<string, string> {
  const out = new Map<string, string>()
  for (const name of readdirSync(dir).sort()) {
    if (prefix === '' && name === 'lost+found') continue
    const p = join(dir, name)
    const rel = prefix === '' ? name : `${prefix}/${name}`
    const st = lstatSync(p)
    if (st.isSymbolicLink()) out.set(rel, `link:${readlinkSync(p)}`)
    else if (st.isDirectory()) {
      out.set(rel, 'dir')
      for (const [k, v] of treeDigest(p, rel)) out.set(k, v)
    } else if (st.isFile()) out.set(rel, createHash('sha256').update(readFileSync(p)).digest('hex'))
  }
  return out
}

/** Put the saved table back and let the filesystem fill its partition again. */
export async function rollbackCarve(c: BootContext, original: string): Promise<void> {
  const now = await must(c, 'sfdisk', ['--dump', c.disk])
  if (!samePartitions(now, original)) {
    await must(c, 'sfdisk', ['--no-reread', '--no-tell-kernel', '-q', c.disk], enc(original))
    await reread(c)
    c.log(`unlockd: the partition table of ${c.disk} is restored`)
  }
  await fsck(c, c.rootDev)
  await must(c, 'resize2fs', [c.rootDev])
  c.j.completed = c.j.completed.filter((s) => s === 'partition-table-backup' || s === 'stage')
  c.j.current = null
  c.save(c.j)
}

function pbkdf(): readonly string[] {
  return process.env[PBKDF_ENV] === 'fast' ? FAST_TEST_PBKDF : []
}

/**
 * The boot that encrypts: LUKS2 init on the root partition, header backup, open. cryptsetup adds
 * no keyslot to a device marked for reencryption, so the conversion's one keyslot is the fallback
 * passphrase (typed at the prompt, or answered by the agent from the sealed copy); the escrowed
 * key gets its own keyslot once the data is encrypted.
 */
export async function initRoot(c: BootContext, headerBackup: string): Promise<void> {
  const g = c.j.plan.geometry
  if (g === null || c.j.sealedFallback === null)
    throw new TypeError('the journal has no plan or lost its sealed passphrase')
  let fallback: Uint8Array | undefined
  try {
    await step(c, 'unseal-key', async () => {})
    fallback = await openFallback(c.j.sealedFallback, c.keys)
    const fb = fallback
    const isLuks = async (): Promise<boolean> =>
      (await c.tool('cryptsetup', ['isLuks', '--type', 'luks2', c.rootDev])).code === 0
    if (!(await isLuks())) {
      await step(c, 'fsck', () => fsck(c, c.rootDev))
      if (c.j.plan.bootMode === 'separate')
        await step(c, 'shrink-fs', () => shrinkFs(c, c.rootDev, g.fsBytesAfter))
      const room = g.rootSectorsAfter * g.sectorBytes - (await fsBytes(c, c.rootDev))
      if (room < ROOT_HEADER_ROOM_BYTES)
        throw new UnlockdError('internal', `only ${room} bytes after the filesystem; need 32 MiB`)
    }
    await step(c, 'reencrypt-init', async () => {
      if (await isLuks()) return
      const args = [
        'reencrypt',
        '--encrypt',
        '--init-only',
        '--type',
        'luks2',
        '--reduce-device-size',
        '32M',
        '--uuid',
        c.j.plan.luksUuid,
        '--batch-mode',
        ...pbkdf(),
        '--key-file',
        '-',
      ]
      if (!c.open) args.push('--force-offline-reencrypt')
      args.push(c.rootDev)
      await must(c, 'cryptsetup', args, fb)
    })
    await step(c, 'fallback-keyslot', async () => {
      const t = await c.tool(
        'cryptsetup',
        ['open', '--test-passphrase', '--key-file', '-', c.rootDev],
        fb,
      )
      if (t.code !== 0)
        throw new UnlockdError(
          'luks_failed',
          `the fallback passphrase does not open ${c.rootDev}: type the passphrase given to unlockd encrypt --root at the prompt`,
        )
    })
    await step(c, 'header-backup', async () => {
      rmSync(headerBackup, { force: true })
      await must(c, 'cryptsetup', [
        'luksHeaderBackup',
        '--batch-mode',
        '--header-backup-file',
        headerBackup,
        c.rootDev,
      ])
      await must(c, 'chmod', ['600', headerBackup])
    })
    if (c.open)
      await step(c, 'open', async () => {
        await must(
          c,
          'cryptsetup',
          ['open', '--type', 'luks2', '--key-file', '-', c.rootDev, 'root'],
          fb,
        )
      })
  } finally {
    zeroize(fallback)
  }
}
