/**
 * Read-only facts about a volume before it is converted: its filesystem, sizes, where it is
 * mounted, which processes use the mount, and whether device-mapper exists. Nothing here changes
 * the system.
 */
import {
  existsSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  statSync,
} from 'node:fs'
import { basename } from 'node:path'
import { run, type RunResult } from '../exec.ts'
import { UnlockdError } from '../../shared/errors.ts'

const LONG = 24 * 3600 * 1000

export function tool(
  cmd: string,
  args: readonly string[],
  opts: { stdin?: Uint8Array; onOutput?: (s: 'stdout' | 'stderr', c: Buffer) => void } = {},
): Promise<RunResult> {
  return run(cmd, args, {
    stdin: opts.stdin,
    onOutput: opts.onOutput,
    timeoutMs: LONG,
    errorCode: 'internal',
    installHint: cmd.startsWith('cryptsetup') ? 'cryptsetup-bin' : 'e2fsprogs',
  })
}

export function lastLine(r: RunResult): string {
  const lines = `${r.stderr}\n${r.stdout.toString('utf8')}`
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
  return lines.at(-1) ?? `exit status ${r.code}`
}

export interface DeviceFacts {
  path: string
  realPath: string
  isBlockDevice: boolean
  sizeBytes: number
}

export async function deviceFacts(path: string): Promise<DeviceFacts> {
  let real: string
  try {
    real = realpathSync(path)
  } catch (cause) {
    throw new UnlockdError('volume_invalid', `${path} does not exist: check the device path`, {
      cause,
    })
  }
  const st = statSync(real)
  if (st.isBlockDevice()) {
    // sysfs gives the size without opening the device: 512-byte sectors.
    const name = basename(real)
    let sectors: string
    try {
      sectors = readFileSync(`/sys/class/block/${name}/size`, 'utf8').trim()
    } catch (cause) {
      throw new UnlockdError('volume_invalid', `cannot read the size of ${path} from sysfs`, {
        cause,
      })
    }
    return { path, realPath: real, isBlockDevice: true, sizeBytes: Number(sectors) * 512 }
  }
  if (!st.isFile())
    throw new UnlockdError(
      'volume_invalid',
      `${path} is neither a block device nor an image file: give the device that holds the filesystem`,
    )
  return { path, realPath: real, isBlockDevice: false, sizeBytes: st.size }
}

/** Filesystem type as libblkid probes it (no cache), or undefined when none is recognised. */
export async function probeType(dev: string): Promise<string | undefined> {
  const r = await tool('blkid', ['-p', '-o', 'value', '-s', 'TYPE', dev])
  const t = r.stdout.toString('utf8').trim()
  return r.code === 0 && t !== '' ? t : undefined
}

export interface Ext4Facts {
  uuid: string
  blockSize: number
  blockCount: number
  freeBlocks: number
  /** resize2fs's estimate of the smallest size it can shrink to, in blocks. */
  minBlocks: number
  features: string[]
}

export async function ext4Facts(dev: string): Promise<Ext4Facts> {
  const r = await tool('dumpe2fs', ['-h', dev])
  if (r.code !== 0)
    throw new UnlockdError(
      'volume_invalid',
      `cannot read the ext4 superblock of ${dev}: ${lastLine(r)}`,
    )
  const text = r.stdout.toString('utf8')
  const field = (name: string): string =>
    new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim() ?? ''
  const blockSize = Number(field('Block size'))
  const blockCount = Number(field('Block count'))
  const freeBlocks = Number(field('Free blocks'))
  const p = await tool('resize2fs', ['-P', dev])
  const min = /minimum size of the filesystem:\s*(\d+)/.exec(p.stdout.toString('utf8'))?.[1]
  // Mounted or unchecked: fall back to the used blocks plus a margin for metadata.
  const minBlocks =
    min !== undefined ? Number(min) : Math.ceil((blockCount - freeBlocks) * 1.05) + 1024
  return {
    uuid: field('Filesystem UUID'),
    blockSize,
    blockCount,
    freeBlocks,
    minBlocks,
    features: field('Filesystem features').split(/\s+/).filter(Boolean),
  }
}

export interface MountEntry {
  mountpoint: string
  source: string
  fstype: string
  majMin: string
}

function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

export function mountTable(): MountEntry[] {
  const out: MountEntry[] = []
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ')
    const sep = f.indexOf('-', 6)
    if (sep < 0 || f[4] === undefined || f[2] === undefined) continue
    out.push({
      mountpoint: unescape(f[4]),
      majMin: f[2],
      fstype: f[sep + 1] ?? '',
      source: unescape(f[sep + 2] ?? ''),
    })
  }
  return out
}

function majMinOf(rdev: number): string {
  // Linux dev_t: major in bits 8-19 (and 32+), minor in bits 0-7 and 20-31.
  const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff)
  const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
  return `${major}:${minor}`
}

/** Block devices that show the contents of `dev`: itself, or the loop devices backing an image. */
export function blockDevicesOf(dev: DeviceFacts): string[] {
  if (dev.isBlockDevice) return [dev.realPath]
  const found: string[] = []
  let names: string[] = []
  try {
    names = readdirSync('/sys/block').filter((n) => n.startsWith('loop'))
  } catch {
    return found
  }
  for (const n of names) {
    try {
      const backing = readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim()
      if (backing === dev.realPath) found.push(`/dev/${n}`)
    } catch {
      // not attached
    }
  }
  return found
}

/** Mounts of the filesystem on `dev` (directly or through a loop device). */
export function mountsOf(dev: DeviceFacts): MountEntry[] {
  const ids = new Set<string>()
  for (const b of blockDevicesOf(dev)) {
    try {
      ids.add(majMinOf(statSync(b).rdev))
    } catch {
      // vanished
    }
  }
  return mountTable().filter((m) => ids.has(m.majMin))
}

export interface OpenFile {
  pid: number
  command: string
  path: string
}

/** Processes with a file, a cwd or a root under `mountpoint` (from /proc/PID/{fd,cwd,root}). */
export function usersOf(mountpoint: string, limit = 20): OpenFile[] {
  const inside = (p: string): boolean =>
    p === mountpoint || p.startsWith(mountpoint === '/' ? '/' : `${mountpoint}/`)
  const out: OpenFile[] = []
  for (const ent of readdirSync('/proc')) {
    if (!/^\d+$/.test(ent)) continue
    const pid = Number(ent)
    if (pid === process.pid) continue
    const links: string[] = []
    for (const l of ['cwd', 'root']) {
      try {
        links.push(readlinkSync(`/proc/${ent}/${l}`))
      } catch {
        // gone or not ours
      }
    }
    try {
      for (const fd of readdirSync(`/proc/${ent}/fd`)) {
        try {
          links.push(readlinkSync(`/proc/${ent}/fd/${fd}`))
        } catch {
          // closed meanwhile
        }
      }
    } catch {
      continue
    }
    // Every process has root "/"; only count it for a mount below "/".
    const hit = links.find((p) => inside(p) && !(mountpoint !== '/' && p === '/'))
    if (hit !== undefined) {
      let command = ''
      try {
        command = readFileSync(`/proc/${ent}/comm`, 'utf8').trim()
      } catch {
        command = '?'
      }
      out.push({ pid, command, path: hit })
      if (out.length >= limit) break
    }
  }
  return out
}

/** Whether device-mapper can be used (the misc device exists, or `dmsetup version` works). */
export async function deviceMapperAvailable(): Promise<boolean> {
  if (existsSync('/sys/class/misc/device-mapper')) return true
  try {
    const r = await run('dmsetup', ['version'], { timeoutMs: 10_000 })
    return r.code === 0
  } catch {
    return false
  }
}
