/**
 * The plan of an in-place LUKS2 conversion: every fact the decision rests on, the steps that
 * will run, and the reasons to refuse. Built from read-only probes; `--dry-run` prints it.
 */
import { UnlockdError, type UnlockdErrorCode } from '../../shared/errors.ts'
import {
  deviceFacts,
  deviceMapperAvailable,
  ext4Facts,
  mountsOf,
  probeType,
  usersOf,
  type OpenFile,
} from './probe.ts'

/** What cryptsetup takes from the end of the device; the filesystem shrinks by this first. */
export const HEADER_ROOM_BYTES = 32 * 1024 * 1024

export type LuksStep =
  | 'stop-units'
  | 'unmount'
  | 'fsck'
  | 'shrink'
  | 'fsck-after-shrink'
  | 'reencrypt-init'
  | 'header-backup'
  | 'grow'
  | 'remount'
  | 'start-units'
  | 'reencrypt-data'
  | 'fallback-key'
  | 'enroll'
  | 'drop-conversion-key'
  | 'system-files'
  | 'cleanup'

export const OFFLINE_STEPS: LuksStep[] = [
  'stop-units',
  'unmount',
  'fsck',
  'shrink',
  'fsck-after-shrink',
  'reencrypt-init',
  'header-backup',
  'reencrypt-data',
  'fallback-key',
  'enroll',
  'drop-conversion-key',
  'system-files',
  'cleanup',
]

/**
 * With device-mapper the volume is back in use while the data moves. cryptsetup adds no keyslot
 * while a LUKS2 reencryption is in progress, so the conversion key itself is escrowed (enroll)
 * and crypttab/fstab are written before the volume goes back to work: after a crash or reboot in
 * the data phase the agent unlocks it from escrow at boot and resumes the data conversion. The
 * fallback passphrase keyslot is added once the data is encrypted.
 */
export const ONLINE_STEPS: LuksStep[] = [
  'stop-units',
  'unmount',
  'fsck',
  'shrink',
  'fsck-after-shrink',
  'reencrypt-init',
  'header-backup',
  'enroll',
  'system-files',
  'grow',
  'remount',
  'start-units',
  'reencrypt-data',
  'fallback-key',
  'cleanup',
]

/** Steps after which an online run has the volume back in use: the agent may finish the rest. */
export const ONLINE_BACKGROUND_FROM: LuksStep = 'reencrypt-data'

/** Stable reasons, in `details.reason` of the error and in the plan. */
export type RefusalReason =
  | 'not_ext4'
  | 'root_filesystem'
  | 'busy'
  | 'too_full'
  | 'already_luks'
  | 'not_enrolled'
  | 'no_second_way'

export interface Refusal {
  code: UnlockdErrorCode
  reason: RefusalReason
  message: string
}

export interface LuksPlan {
  device: string
  name: string
  isBlockDevice: boolean
  deviceBytes: number
  fstype: string | null
  fsUuid: string | null
  blockSize: number
  fsBytes: number
  freeBytes: number
  minFsBytes: number
  /** The filesystem size after the shrink; the device keeps HEADER_ROOM_BYTES free at its end. */
  targetFsBytes: number
  headerRoomBytes: number
  mountpoints: string[]
  users: OpenFile[]
  units: string[]
  deviceMapper: boolean
  mode: 'offline' | 'online'
  secondWay: 'recovery-key' | 'fallback-passphrase' | null
  steps: LuksStep[]
  refusals: Refusal[]
}

export interface PlanInput {
  device: string
  name: string
  units: string[]
  enrolled: boolean
  secondWay: 'recovery-key' | 'fallback-passphrase' | null
}

export async function planLuks(i: PlanInput): Promise<LuksPlan> {
  const dev = await deviceFacts(i.device)
  const refusals: Refusal[] = []
  const mounts = mountsOf(dev)
  const mountpoints = mounts.map((m) => m.mountpoint)
  const dm = await deviceMapperAvailable()
  // Decided before the device is even read: the root filesystem is never converted here.
  const isRoot = mountpoints.includes('/')
  const fstype = isRoot
    ? (mounts.find((m) => m.mountpoint === '/')?.fstype ?? null)
    : ((await probeType(dev.realPath)) ?? null)
  const base = {
    device: i.device,
    name: i.name,
    isBlockDevice: dev.isBlockDevice,
    deviceBytes: dev.sizeBytes,
    fstype,
    headerRoomBytes: HEADER_ROOM_BYTES,
    mountpoints,
    units: i.units,
    deviceMapper: dm,
    mode: dm ? ('online' as const) : ('offline' as const),
    secondWay: i.secondWay,
    steps: dm ? ONLINE_STEPS : OFFLINE_STEPS,
  }
  // A plan refused before the filesystem is read: nothing about it is known.
  const unread = () => ({
    ...base,
    fsUuid: null,
    blockSize: 0,
    fsBytes: 0,
    freeBytes: 0,
    minFsBytes: 0,
    targetFsBytes: 0,
    users: [],
    refusals,
  })
  if (!i.enrolled)
    refusals.push({
      code: 'not_enrolled',
      reason: 'not_enrolled',
      message:
        'this host is not enrolled: run `unlockd enroll --server URL --token-file F` first, so the new key can be escrowed',
    })
  if (i.secondWay === null)
    refusals.push({
      code: 'destructive_needs_force',
      reason: 'no_second_way',
      message:
        'refusing to encrypt without a second way in: give --recovery-key PUBLIC_JWK (made by `unlockd recovery-key create`) or --fallback-passphrase-file F (a 0600 file)',
    })
  if (isRoot) {
    refusals.push({
      code: 'volume_busy',
      reason: 'root_filesystem',
      message: `${i.device} is the root filesystem, which cannot be unmounted while the system runs: use --root, which converts it from the initramfs at the next boot`,
    })
    return unread()
  }
  if (fstype === 'crypto_LUKS') {
    refusals.push({
      code: 'volume_invalid',
      reason: 'already_luks',
      message: `${i.device} is already a LUKS volume: enroll it with \`unlockd enroll --luks ${i.device} --existing-key-file F\` instead`,
    })
    return unread()
  }
  if (fstype !== 'ext4') {
    refusals.push({
      code: 'volume_invalid',
      reason: 'not_ext4',
      message: `${i.device} holds ${fstype ?? 'no recognised filesystem'}, not ext4: in-place encryption shrinks the filesystem with resize2fs and only ext4 is supported; copy the data to a new LUKS2 volume instead`,
    })
    return unread()
  }
  const fs = await ext4Facts(dev.realPath)
  const users = mountpoints.flatMap((m) => usersOf(m))
  if (users.length > 0 && i.units.length === 0)
    refusals.push({
      code: 'volume_busy',
      reason: 'busy',
      message: `${mountpoints.join(', ')} is in use (${users
        .slice(0, 5)
        .map((u) => `pid ${u.pid} ${u.command}: ${u.path}`)
        .join(
          '; ',
        )}): stop those programs, or name their systemd units with --stop UNIT so they are stopped and started again`,
    })
  const blockBytes = fs.blockSize
  const targetBlocks = Math.floor((dev.sizeBytes - HEADER_ROOM_BYTES) / blockBytes)
  const fsBytes = fs.blockCount * blockBytes
  if (fsBytes > dev.sizeBytes)
    refusals.push({
      code: 'volume_invalid',
      reason: 'not_ext4',
      message: `the filesystem on ${i.device} (${fsBytes} bytes) is larger than the device (${dev.sizeBytes}): run e2fsck and fix the device size first`,
    })
  if (fs.minBlocks > targetBlocks)
    refusals.push({
      code: 'volume_invalid',
      reason: 'too_full',
      message: `${i.device} is too full to make room for the LUKS2 header: the filesystem can shrink to ${fs.minBlocks * blockBytes} bytes but must fit in ${targetBlocks * blockBytes}; free at least ${(fs.minBlocks - targetBlocks) * blockBytes} bytes, or grow the device by 32 MiB first`,
    })
  return {
    ...base,
    fsUuid: fs.uuid,
    blockSize: blockBytes,
    fsBytes,
    freeBytes: fs.freeBlocks * blockBytes,
    minFsBytes: fs.minBlocks * blockBytes,
    targetFsBytes: Math.min(targetBlocks, fs.blockCount) * blockBytes,
    users,
    refusals,
  }
}

/** The error for the first refusal (the plan lists them all). */
export function refusalError(r: Refusal, plan: { device: string }): UnlockdError {
  return new UnlockdError(r.code, r.message, { details: { reason: r.reason, device: plan.device } })
}

export function planText(p: LuksPlan): string {
  const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`
  const lines = [
    `plan: encrypt ${p.device} in place as LUKS2 volume ${p.name} (${p.mode}${p.mode === 'offline' ? ', no device-mapper: the volume stays unmounted until the data is encrypted' : ''})`,
    `  device            ${p.isBlockDevice ? 'block device' : 'image file'}, ${mib(p.deviceBytes)}`,
    `  filesystem        ${p.fstype ?? 'none'}${p.fsUuid ? ` (UUID ${p.fsUuid})` : ''}, ${mib(p.fsBytes)}, ${mib(p.freeBytes)} free, can shrink to ${mib(p.minFsBytes)}`,
    `  header room       ${mib(p.headerRoomBytes)}: the filesystem shrinks to ${mib(p.targetFsBytes)} first`,
    `  mounted at        ${p.mountpoints.join(', ') || '-'}`,
    `  in use by         ${p.users.map((u) => `${u.pid} ${u.command}`).join(', ') || '-'}`,
    `  units to stop     ${p.units.join(', ') || '-'}`,
    `  device-mapper     ${p.deviceMapper ? 'available' : 'not available'}`,
    `  second way in     ${p.secondWay ?? 'none'}`,
    `  steps             ${p.steps.join(', ')}`,
  ]
  for (const r of p.refusals) lines.push(`  REFUSED (${r.reason}): ${r.message}`)
  return lines.join('\n') + '\n'
}
