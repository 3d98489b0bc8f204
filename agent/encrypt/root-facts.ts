/**
 * The facts the root-filesystem planner decides from, as the tools print them: `lsblk --json -O
 * -b` (the block-device tree), `findmnt --json -b` for /, /boot and /boot/efi, /proc/cmdline, and
 * what is installed of GRUB. Parsing only: every field the planner reads is checked here, so a
 * recorded fixture and a live probe go through the same gate.
 */
import { UnlockdError } from '../../shared/errors.ts'

export interface BlockDev {
  name: string
  path: string
  type: string
  sizeBytes: number
  /** First sector (512 bytes) of a partition; null for anything else. */
  start: number | null
  pttype: string | null
  ptuuid: string | null
  parttype: string | null
  partuuid: string | null
  fstype: string | null
  uuid: string | null
  label: string | null
  fsusedBytes: number | null
  mountpoints: string[]
  logSec: number
  children: BlockDev[]
}

export interface MountFact {
  target: string
  source: string
  fstype: string
  sizeBytes: number
  usedBytes: number
  availBytes: number
}

export interface RootFacts {
  devices: BlockDev[]
  mounts: MountFact[]
  cmdline: string
  /** /sys/firmware/efi exists: the machine booted through UEFI. */
  efi: boolean
  /** GRUB platform directories installed under /usr/lib/grub (i386-pc, x86_64-efi, ...). */
  grubPlatforms: string[]
  /** Path of the GRUB configuration found under /boot, or null. */
  grubCfg: string | null
  /** Bytes the files under /boot take (du), to size a new /boot partition. */
  bootUsedBytes: number
  /** resize2fs -P's estimate for the root filesystem, bytes; null when it could not tell. */
  rootMinBytes: number | null
}

type Json = Record<string, unknown>

function bad(what: string): never {
  throw new UnlockdError(
    'volume_invalid',
    `cannot read the disk layout: ${what}; run \`lsblk --json -O -b\` and \`findmnt --json -b /\` to see what this system reports`,
  )
}

function str(o: Json, k: string): string | null {
  const v = o[k]
  if (v === null || v === undefined) return null
  if (typeof v === 'string') return v
  return bad(`field ${k} is not a string`)
}

function num(o: Json, k: string): number | null {
  const v = o[k]
  if (v === null || v === undefined) return null
  // lsblk prints numbers; some versions quote them.
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN
  if (!Number.isSafeInteger(n) || n < 0) return bad(`field ${k} is not a byte count`)
  return n
}

function obj(v: unknown, what: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    return bad(`${what} is not an object`)
  return v as Json
}

function list(v: unknown, what: string): unknown[] {
  if (v === undefined || v === null) return []
  if (!Array.isArray(v)) return bad(`${what} is not a list`)
  return v
}

function blockDev(v: unknown): BlockDev {
  const o = obj(v, 'a block device')
  const name = str(o, 'name') ?? bad('a block device has no name')
  const mps = o['mountpoints'] ?? (o['mountpoint'] === undefined ? [] : [o['mountpoint']])
  return {
    name,
    path: str(o, 'path') ?? `/dev/${name}`,
    type: str(o, 'type') ?? bad(`${name} has no type`),
    sizeBytes: num(o, 'size') ?? bad(`${name} has no size`),
    start: num(o, 'start'),
    pttype: str(o, 'pttype'),
    ptuuid: str(o, 'ptuuid'),
    parttype: str(o, 'parttype')?.toLowerCase() ?? null,
    partuuid: str(o, 'partuuid')?.toLowerCase() ?? null,
    fstype: str(o, 'fstype'),
    uuid: str(o, 'uuid')?.toLowerCase() ?? null,
    label: str(o, 'label'),
    fsusedBytes: num(o, 'fsused'),
    mountpoints: list(mps, `mountpoints of ${name}`).filter(
      (m): m is string => typeof m === 'string',
    ),
    logSec: num(o, 'log-sec') ?? 512,
    children: list(o['children'], `children of ${name}`).map(blockDev),
  }
}

/** `lsblk --json -O -b` output. */
export function parseLsblk(text: string): BlockDev[] {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch {
    return bad('lsblk did not print JSON')
  }
  return list(obj(doc, 'lsblk output')['blockdevices'], 'blockdevices').map(blockDev)
}

/** `findmnt --json -b -o TARGET,SOURCE,FSTYPE,SIZE,USED,AVAIL` output (any nesting). */
export function parseFindmnt(text: string): MountFact[] {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch {
    return bad('findmnt did not print JSON')
  }
  const out: MountFact[] = []
  const walk = (v: unknown): void => {
    const o = obj(v, 'a mount')
    out.push({
      target: str(o, 'target') ?? bad('a mount has no target'),
      source: str(o, 'source') ?? '',
      fstype: str(o, 'fstype') ?? '',
      sizeBytes: num(o, 'size') ?? 0,
      usedBytes: num(o, 'used') ?? 0,
      availBytes: num(o, 'avail') ?? 0,
    })
    for (const c of list(o['children'], 'children')) walk(c)
  }
  for (const f of list(obj(doc, 'findmnt output')['filesystems'], 'filesystems')) walk(f)
  return out
}

/** A node of the tree with its ancestors (nearest first). */
export interface Located {
  dev: BlockDev
  ancestors: BlockDev[]
}

export function flatten(devs: BlockDev[], ancestors: BlockDev[] = []): Located[] {
  return devs.flatMap((d) => [{ dev: d, ancestors }, ...flatten(d.children, [d, ...ancestors])])
}

/** The kernel command line as key/value pairs (the last occurrence wins, as the kernel does). */
export function cmdlineArgs(cmdline: string): Map<string, string> {
  const m = new Map<string, string>()
  for (const w of cmdline.trim().split(/\s+/)) {
    if (w === '') continue
    const i = w.indexOf('=')
    m.set(i < 0 ? w : w.slice(0, i), i < 0 ? '' : w.slice(i + 1))
  }
  return m
}

/**
 * Facts as recorded in a file: the raw `lsblk` and `findmnt` JSON beside the other probes. The
 * journal keeps this record, and the planner's tests read recorded layouts in the same form.
 */
export function factsFromRecord(v: unknown): RootFacts {
  const o = obj(v, 'the recorded facts')
  const strings = (k: string): string[] =>
    list(o[k], k).map((s) => (typeof s === 'string' ? s : bad(`${k} holds a non-string`)))
  if (typeof o['efi'] !== 'boolean') bad('efi is not a boolean')
  return {
    devices: parseLsblk(JSON.stringify(o['lsblk'])),
    mounts: parseFindmnt(JSON.stringify(o['findmnt'])),
    cmdline: str(o, 'cmdline') ?? '',
    efi: o['efi'] === true,
    grubPlatforms: strings('grubPlatforms'),
    grubCfg: str(o, 'grubCfg'),
    bootUsedBytes: num(o, 'bootUsedBytes') ?? 0,
    rootMinBytes: num(o, 'rootMinBytes'),
  }
}
