/**
 * Live facts for the root planner: runs `lsblk --json -O -b`, `findmnt --json -b` for /, /boot
 * and /boot/efi, reads /proc/cmdline, looks for GRUB and measures /boot. Read-only. The record it
 * returns is kept in the journal, so what the plan was decided from can be read back later.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { UnlockdError } from '../../shared/errors.ts'
import { lastLine, tool } from './probe.ts'

export interface ProbeRoots {
  /** Prefix for /proc, /sys, /boot and /usr/lib/grub (tests point it at a fake tree). */
  root?: string
}

const GRUB_CFGS = ['/boot/grub/grub.cfg', '/boot/grub2/grub.cfg']

async function json(cmd: string, args: string[]): Promise<unknown> {
  const r = await tool(cmd, args)
  if (r.code !== 0 && r.code !== 1)
    throw new UnlockdError('volume_invalid', `${cmd} ${args.join(' ')} failed: ${lastLine(r)}`)
  const text = r.stdout.toString('utf8').trim()
  if (text === '') return cmd === 'findmnt' ? { filesystems: [] } : { blockdevices: [] }
  try {
    return JSON.parse(text)
  } catch (cause) {
    throw new UnlockdError('volume_invalid', `${cmd} did not print JSON`, { cause })
  }
}

async function duBytes(dir: string): Promise<number> {
  const r = await tool('du', ['-sbx', dir])
  const n = Number(/^(\d+)/.exec(r.stdout.toString('utf8'))?.[1])
  return Number.isSafeInteger(n) ? n : 0
}

/** resize2fs -P on the mounted root: an estimate in blocks, times the block size. */
async function minBytes(dev: string): Promise<number | null> {
  const p = await tool('resize2fs', ['-P', dev])
  const blocks = /minimum size of the filesystem:\s*(\d+)/.exec(p.stdout.toString('utf8'))?.[1]
  if (blocks === undefined) return null
  const d = await tool('dumpe2fs', ['-h', dev])
  const bs = /^Block size:\s*(\d+)/m.exec(d.stdout.toString('utf8'))?.[1]
  return bs === undefined ? null : Number(blocks) * Number(bs)
}

/** The record planRoot's facts are made from (see factsFromRecord). */
export async function probeRootRecord(o: ProbeRoots = {}): Promise<Record<string, unknown>> {
  const at = (p: string): string => `${o.root ?? ''}${p}`
  const lsblk = await json('lsblk', ['--json', '-O', '-b'])
  const findmnt = await json('findmnt', [
    '--json',
    '-b',
    '-o',
    'TARGET,SOURCE,FSTYPE,SIZE,USED,AVAIL',
    '--mountpoint',
    '/',
  ])
  const more: unknown[] = []
  for (const mp of ['/boot', '/boot/efi']) {
    const m = (await json('findmnt', [
      '--json',
      '-b',
      '-o',
      'TARGET,SOURCE,FSTYPE,SIZE,USED,AVAIL',
      '--mountpoint',
      mp,
    ])) as { filesystems?: unknown[] }
    more.push(...(m.filesystems ?? []))
  }
  const fm = findmnt as { filesystems?: unknown[] }
  const rootSource = (fm.filesystems?.[0] as { source?: unknown } | undefined)?.source
  let grubPlatforms: string[] = []
  try {
    grubPlatforms = readdirSync(at('/usr/lib/grub')).sort()
  } catch {
    // no GRUB installed
  }
  return {
    source: 'probed',
    lsblk,
    findmnt: { filesystems: [...(fm.filesystems ?? []), ...more] },
    cmdline: readFileSync(at('/proc/cmdline'), 'utf8').trim(),
    efi: existsSync(at('/sys/firmware/efi')),
    grubPlatforms,
    grubCfg: GRUB_CFGS.find((p) => existsSync(at(p))) ?? null,
    bootUsedBytes: await duBytes(at('/boot')),
    rootMinBytes: typeof rootSource === 'string' ? await minBytes(rootSource) : null,
  }
}
