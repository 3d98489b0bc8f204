/**
 * The plan for encrypting the root filesystem in place. Pure: it decides from recorded facts
 * (root-facts.ts) whether the layout is one this handles — ext4 on a GPT or MBR partition, GRUB
 * for BIOS or UEFI, /boot on the root filesystem or on its own partition — and refuses with the
 * reason otherwise. The plan lists every boot and step, with the new partition geometry computed
 * here once, so the initramfs script only carries it out.
 *
 * Geometry when /boot lives on the root filesystem: the root partition keeps its start and
 * shrinks by the size of a new /boot partition, which takes the freed tail; the ext4 filesystem
 * shrinks further so that 32 MiB at the end of the (shrunk) root partition are free for the LUKS2
 * header (`cryptsetup reencrypt --encrypt --reduce-device-size 32M` moves the data by that much).
 * With a separate /boot only the filesystem shrinks by the header room.
 */
import type { UnlockdErrorCode } from '../../shared/errors.ts'
import { cmdlineArgs, flatten, type BlockDev, type Located, type RootFacts } from './root-facts.ts'

const MiB = 1024 * 1024
export const ROOT_HEADER_ROOM_BYTES = 32 * MiB
/** The smallest /boot partition made; larger when the current /boot needs it. */
export const MIN_BOOT_PART_BYTES = 512 * MiB
export const MAX_BOOT_PART_BYTES = 2048 * MiB
/** Free space the root filesystem must keep after it shrank, so the system still runs. */
export const MIN_FREE_AFTER_BYTES = 512 * MiB

export const GPT_BIOS_BOOT = '21686148-6449-6e6f-744e-656564454649'
export const GPT_ESP = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b'
export const GPT_LINUX_FS = '0fc63daf-8483-4772-8e79-3d69d8477de4'
/** The partition type written for the new /boot: XBOOTLDR on GPT, Linux (83) on MBR. */
export const GPT_XBOOTLDR = 'bc13c2ff-59e6-4262-a352-b275fd6f7172'

export type RootRefusalReason =
  | 'not_enrolled'
  | 'no_fallback'
  | 'not_mounted'
  | 'lvm'
  | 'raid'
  | 'already_encrypted'
  | 'btrfs'
  | 'xfs'
  | 'not_ext4'
  | 'whole_disk'
  | 'no_partition_table'
  | 'logical_partition'
  | 'no_partition_slot'
  | 'unknown_bootloader'
  | 'no_bios_boot_partition'
  | 'no_esp'
  | 'boot_unsupported'
  | 'boot_too_big'
  | 'too_full'

export interface RootRefusal {
  code: UnlockdErrorCode
  reason: RootRefusalReason
  message: string
}

export type RootStep =
  // now, on the running system
  | 'partition-table-backup'
  | 'stage'
  // the initramfs, boot 1 (only when /boot is on the root filesystem)
  | 'fsck'
  | 'shrink-fs'
  | 'shrink-partition'
  | 'create-boot-partition'
  | 'mkfs-boot'
  | 'copy-boot'
  // the running system
  | 'fstab-boot'
  | 'grub-install'
  | 'crypttab'
  | 'grub-config'
  | 'update-initramfs'
  // the initramfs, the boot that encrypts
  | 'unseal-key'
  | 'reencrypt-init'
  | 'fallback-keyslot'
  | 'header-backup'
  | 'open'
  // the running system, in the background, across reboots
  | 'enroll'
  | 'reencrypt-data'
  | 'cleanup'

export interface StepInfo {
  does: string
  rollback: string
}

export const STEP_INFO: Record<RootStep, StepInfo> = {
  'partition-table-backup': {
    does: 'save the partition table (sfdisk --dump) in the journal directory',
    rollback: 'nothing has changed yet',
  },
  stage: {
    does: 'write the journal and the boot-time job, install the initramfs script, rebuild the initramfs',
    rollback: '`unlockd encrypt --root --abort` removes the job; the next boot is a normal one',
  },
  fsck: {
    does: 'e2fsck -f the root filesystem (not mounted yet)',
    rollback: 'an unrepairable filesystem stops the job; the boot continues unchanged',
  },
  'shrink-fs': {
    does: 'resize2fs the root filesystem to its planned size (undo file in RAM)',
    rollback: 'e2undo, then the boot continues from the unchanged filesystem',
  },
  'shrink-partition': {
    does: 'shrink the root partition (same start) with sfdisk',
    rollback: 'restore the saved partition table, grow the filesystem back',
  },
  'create-boot-partition': {
    does: 'create the /boot partition in the freed tail',
    rollback: 'restore the saved partition table, grow the filesystem back',
  },
  'mkfs-boot': {
    does: 'mkfs.ext4 the new /boot with its planned UUID',
    rollback: 'restore the saved partition table, grow the filesystem back',
  },
  'copy-boot': {
    does: 'copy /boot from the root filesystem and compare every file',
    rollback: 'restore the saved partition table, grow the filesystem back',
  },
  'fstab-boot': {
    does: 'add the new /boot to /etc/fstab and mount it',
    rollback: 'the old /boot is still on the root filesystem; GRUB still reads it',
  },
  'grub-install': {
    does: 'grub-install for the new /boot (each installed platform) and update-grub',
    rollback: 'the old /boot stays on the root filesystem until the data is encrypted',
  },
  crypttab: {
    does: 'add the root volume (LUKS UUID chosen now) to /etc/crypttab and agent.json',
    rollback: 'remove the lines; the filesystem is still plaintext',
  },
  'grub-config': {
    does: 'boot with root=UUID= of the filesystem (no PARTUUID, no initrd-less boot), update-grub',
    rollback: 'remove /etc/default/grub.d/unlockd-root.cfg and update-grub',
  },
  'update-initramfs': {
    does: 'update-initramfs -u with cryptsetup and the encryption job',
    rollback: 'the job in the image checks the journal and does nothing when it was aborted',
  },
  'unseal-key': {
    does: 'unseal the fallback passphrase sealed to this host at staging',
    rollback:
      'cannot: nothing is changed, the root line leaves the initramfs crypttab, the system boots plaintext',
  },
  'reencrypt-init': {
    does: 'e2fsck, then cryptsetup reencrypt --encrypt --init-only --reduce-device-size 32M --uuid PLANNED, keyslot 0 the fallback passphrase',
    rollback: 'before the first sector moved: cryptsetup reencrypt --decrypt restores plaintext',
  },
  'fallback-keyslot': {
    does: 'check that the fallback passphrase opens it (cryptsetup adds no keyslot while it reencrypts)',
    rollback: 'the typed passphrase opens the volume from here on',
  },
  'header-backup': {
    does: 'cryptsetup luksHeaderBackup to the /boot partition (0600)',
    rollback: 'cryptsetup luksHeaderRestore from that file',
  },
  open: {
    does: 'open the volume and continue booting from /dev/mapper/root',
    rollback: 'the typed passphrase or recovery key opens it at the prompt',
  },
  enroll: {
    does: 'once the data is encrypted: a new key in its own keyslot, escrowed (as `unlockd enroll`); later boots unlock from escrow',
    rollback:
      'until then the agent in the initramfs answers the prompt with the sealed fallback passphrase, and a person can type it',
  },
  'reencrypt-data': {
    does: 'cryptsetup reencrypt --resume-only in the background, resuming after every reboot, reporting progress',
    rollback: 'none needed: LUKS2 keeps the reencryption state in its header; it resumes',
  },
  cleanup: {
    does: 'remove the header and partition-table backups and the old /boot copy, rebuild the initramfs without the job',
    rollback: 'nothing left to undo',
  },
}

export interface Stage {
  where: 'now' | 'initramfs' | 'system'
  /** 1-based boot number this stage runs in (0: now, before any reboot). */
  boot: number
  steps: RootStep[]
}

export interface Geometry {
  disk: string
  pttype: 'gpt' | 'dos'
  sectorBytes: number
  rootPartition: string
  rootPartn: number
  rootStart: number
  rootSectorsBefore: number
  rootSectorsAfter: number
  /** The ext4 filesystem size after the shrink, in bytes (a whole number of 4 KiB blocks). */
  fsBytesAfter: number
  boot: {
    partn: number
    start: number
    sectors: number
    parttype: string
  } | null
}

export interface RootPlan {
  root: {
    device: string
    partuuid: string | null
    fsUuid: string | null
    fsBytes: number
    usedBytes: number
  }
  bootMode: 'on-root' | 'separate'
  bootDevice: string | null
  firmware: 'bios' | 'uefi'
  grubTargets: string[]
  rootArg: string | null
  geometry: Geometry | null
  luksUuid: string
  bootFsUuid: string | null
  stages: Stage[]
  refusals: RootRefusal[]
}

export interface RootPlanInput {
  facts: RootFacts
  enrolled: boolean
  hasFallback: boolean
  /** Chosen in advance (random) by the caller, so the planner stays pure. */
  luksUuid: string
  bootFsUuid: string
}

const alignDown = (n: number, a: number): number => Math.floor(n / a) * a

function partn(d: BlockDev, disk: BlockDev): number | null {
  if (!d.name.startsWith(disk.name)) return null
  const m = /^p?(\d+)$/.exec(d.name.slice(disk.name.length))
  return m ? Number(m[1]) : null
}

function refuse(reason: RootRefusalReason, message: string, code?: UnlockdErrorCode): RootRefusal {
  return { code: code ?? 'volume_invalid', reason, message }
}

/** The node mounted at `target` (the one whose own mountpoints list it). */
function mountedAt(all: Located[], target: string, source: string | null): Located | undefined {
  return (
    all.find((l) => l.dev.mountpoints.includes(target)) ??
    (source ? all.find((l) => l.dev.path === source) : undefined)
  )
}

export function planRoot(i: RootPlanInput): RootPlan {
  const f = i.facts
  const refusals: RootRefusal[] = []
  const all = flatten(f.devices)
  const rootMount = f.mounts.find((m) => m.target === '/')
  const bootMount = f.mounts.find((m) => m.target === '/boot')
  const espMount = f.mounts.find((m) => m.target === '/boot/efi')
  const args = cmdlineArgs(f.cmdline)
  const firmware = f.efi ? ('uefi' as const) : ('bios' as const)
  const plan: RootPlan = {
    root: {
      device: rootMount?.source ?? '?',
      partuuid: null,
      fsUuid: null,
      fsBytes: 0,
      usedBytes: 0,
    },
    bootMode: bootMount ? 'separate' : 'on-root',
    bootDevice: bootMount?.source ?? null,
    firmware,
    grubTargets: [],
    rootArg: args.get('root') ?? null,
    geometry: null,
    luksUuid: i.luksUuid,
    bootFsUuid: bootMount ? null : i.bootFsUuid,
    stages: [],
    refusals,
  }
  if (!i.enrolled)
    refusals.push(
      refuse(
        'not_enrolled',
        'this host is not enrolled: run `unlockd enroll --server URL --token-file F` first, so the root key can be escrowed',
        'not_enrolled',
      ),
    )
  if (!i.hasFallback)
    refusals.push(
      refuse(
        'no_fallback',
        'a fallback passphrase is required (typed at the prompt when the escrow server cannot answer): give --fallback-passphrase-file F (0600) or type it when asked',
        'destructive_needs_force',
      ),
    )
  if (rootMount === undefined) {
    refusals.push(refuse('not_mounted', 'findmnt shows nothing mounted at /'))
    return plan
  }
  const rootNode = mountedAt(all, '/', rootMount.source)
  const fstype = rootMount.fstype
  const chain = rootNode ? [rootNode.dev, ...rootNode.ancestors] : []
  if (chain.some((d) => d.type === 'crypt' || d.fstype === 'crypto_LUKS'))
    refusals.push(
      refuse(
        'already_encrypted',
        `/ (${rootMount.source}) is already on an encrypted device: enroll it with \`unlockd enroll --luks DEVICE:root --existing-key-file F\` instead`,
      ),
    )
  if (chain.some((d) => d.type === 'lvm'))
    refusals.push(
      refuse(
        'lvm',
        `/ is an LVM logical volume (${rootMount.source}): shrinking a physical volume under a running volume group is not handled; encrypt the data volumes with \`unlockd encrypt --luks\`, or rebuild the host with LUKS under LVM`,
      ),
    )
  if (chain.some((d) => /^raid/.test(d.type)))
    refusals.push(
      refuse(
        'raid',
        `/ is on software RAID (${rootMount.source}): encrypting under md is not handled`,
      ),
    )
  if (fstype === 'btrfs')
    refusals.push(
      refuse(
        'btrfs',
        '/ is btrfs: in-place encryption needs to shrink the filesystem from the initramfs, which is only done for ext4 here',
      ),
    )
  else if (fstype === 'xfs')
    refusals.push(
      refuse(
        'xfs',
        '/ is XFS, which cannot shrink: the LUKS2 header needs 32 MiB at the end of the filesystem; copy / to a new LUKS2 disk instead',
      ),
    )
  else if (fstype !== 'ext4')
    refusals.push(refuse('not_ext4', `/ is ${fstype || 'of an unknown type'}, not ext4`))
  if (refusals.some((r) => r.reason !== 'not_enrolled' && r.reason !== 'no_fallback')) return plan
  if (rootNode === undefined) {
    refusals.push(refuse('not_mounted', `lsblk does not show ${rootMount.source}, mounted at /`))
    return plan
  }
  const part = rootNode.dev
  plan.root = {
    device: part.path,
    partuuid: part.partuuid,
    fsUuid: part.uuid,
    fsBytes: rootMount.sizeBytes,
    usedBytes: rootMount.usedBytes,
  }
  if (part.type === 'disk' || part.type === 'loop') {
    refusals.push(
      refuse(
        'whole_disk',
        `/ is on ${part.path}, a whole disk without a partition table: there is no room for a plaintext /boot, and GRUB cannot read a kernel from the encrypted disk; attach a small disk for /boot, or rebuild from a partitioned image`,
      ),
    )
    return plan
  }
  const disk = rootNode.ancestors.find((d) => d.type === 'disk')
  if (part.type !== 'part' || disk === undefined) {
    refusals.push(
      refuse('not_ext4', `/ is on a ${part.type} device (${part.path}), not a partition`),
    )
    return plan
  }
  const pttype = disk.pttype
  if (pttype !== 'gpt' && pttype !== 'dos') {
    refusals.push(
      refuse(
        'no_partition_table',
        `${disk.path} has no GPT or MBR partition table (${pttype ?? 'none'})`,
      ),
    )
    return plan
  }
  const n = partn(part, disk)
  if (n === null || part.start === null) {
    refusals.push(refuse('not_ext4', `cannot tell the partition number and start of ${part.path}`))
    return plan
  }
  if (pttype === 'dos' && n > 4)
    refusals.push(
      refuse(
        'logical_partition',
        `${part.path} is a logical partition inside an extended one: only primary partitions are handled`,
      ),
    )
  const siblings = disk.children.filter((d) => d.type === 'part')
  const used = new Set(siblings.map((d) => partn(d, disk)).filter((x): x is number => x !== null))

  // The bootloader: GRUB sets BOOT_IMAGE=; the firmware decides which GRUB platform matters.
  const grubTargets = f.grubPlatforms.filter((p) =>
    firmware === 'uefi' ? /-efi$/.test(p) : p === 'i386-pc',
  )
  plan.grubTargets = grubTargets
  if (!args.has('BOOT_IMAGE') || f.grubCfg === null || grubTargets.length === 0)
    refusals.push(
      refuse(
        'unknown_bootloader',
        `this system was not booted by GRUB for ${firmware === 'uefi' ? 'UEFI' : 'BIOS'} (${[
          args.has('BOOT_IMAGE') ? null : 'no BOOT_IMAGE= on the kernel command line',
          f.grubCfg === null ? 'no /boot/grub/grub.cfg' : null,
          grubTargets.length === 0
            ? `no GRUB ${firmware === 'uefi' ? '*-efi' : 'i386-pc'} modules in /usr/lib/grub`
            : null,
        ]
          .filter(Boolean)
          .join(', ')}): only GRUB can be pointed at the new plaintext /boot`,
      ),
    )
  if (
    firmware === 'bios' &&
    pttype === 'gpt' &&
    !siblings.some((d) => d.parttype === GPT_BIOS_BOOT)
  )
    refusals.push(
      refuse(
        'no_bios_boot_partition',
        `${disk.path} is GPT without a BIOS boot partition, so grub-install for BIOS has nowhere to put its core image`,
      ),
    )
  if (firmware === 'uefi' && (espMount === undefined || espMount.fstype !== 'vfat'))
    refusals.push(
      refuse(
        'no_esp',
        'booted through UEFI but no FAT EFI system partition is mounted at /boot/efi',
      ),
    )

  let boot: Geometry['boot'] = null
  const sectorBytes = part.logSec
  const align = MiB / sectorBytes
  const rootSectors = part.sizeBytes / sectorBytes
  let rootSectorsAfter = rootSectors
  if (bootMount) {
    const bootNode = mountedAt(all, '/boot', bootMount.source)
    if (
      bootNode === undefined ||
      bootNode.dev.type !== 'part' ||
      bootNode.dev.path === part.path ||
      [bootNode.dev, ...bootNode.ancestors].some((d) => d.type === 'crypt' || d.type === 'lvm')
    )
      refusals.push(
        refuse(
          'boot_unsupported',
          `/boot is mounted from ${bootMount.source}, which is not a plain partition of its own`,
        ),
      )
  } else {
    const free = (pttype === 'gpt' ? range(1, 128) : range(1, 4)).find((k) => !used.has(k))
    if (free === undefined)
      refusals.push(
        refuse(
          'no_partition_slot',
          `${disk.path} has no free ${pttype === 'dos' ? 'primary partition (MBR allows four)' : 'partition entry'} for /boot`,
        ),
      )
    const want = Math.min(
      MAX_BOOT_PART_BYTES,
      Math.max(MIN_BOOT_PART_BYTES, alignDown(f.bootUsedBytes * 3, MiB) + MiB),
    )
    if (f.bootUsedBytes * 2 > MAX_BOOT_PART_BYTES)
      refusals.push(
        refuse(
          'boot_too_big',
          `/boot holds ${mib(f.bootUsedBytes)}; a new /boot partition of at most ${mib(MAX_BOOT_PART_BYTES)} must hold it twice (kernel updates): remove old kernels first (apt autoremove --purge)`,
        ),
      )
    const bootSectors = want / sectorBytes
    rootSectorsAfter = alignDown(part.start + rootSectors - bootSectors, align) - part.start
    const bootStart = part.start + rootSectorsAfter
    boot = {
      partn: free ?? 0,
      start: bootStart,
      sectors: part.start + rootSectors - bootStart,
      parttype: pttype === 'gpt' ? GPT_XBOOTLDR : '83',
    }
  }
  const fsBytesAfter = alignDown(rootSectorsAfter * sectorBytes - ROOT_HEADER_ROOM_BYTES, 4096)
  const usedBytes = Math.max(rootMount.usedBytes, f.rootMinBytes ?? 0)
  const needed = usedBytes + MIN_FREE_AFTER_BYTES
  if (needed > fsBytesAfter)
    refusals.push(
      refuse(
        'too_full',
        `/ uses ${mib(usedBytes)} and would shrink to ${mib(fsBytesAfter)} (${bootMount ? '' : 'a new /boot partition and '}32 MiB for the LUKS2 header), leaving less than ${mib(MIN_FREE_AFTER_BYTES)} free: free at least ${mib(needed - fsBytesAfter)}, or grow the disk first`,
      ),
    )
  plan.geometry = {
    disk: disk.path,
    pttype,
    sectorBytes,
    rootPartition: part.path,
    rootPartn: n,
    rootStart: part.start,
    rootSectorsBefore: rootSectors,
    rootSectorsAfter,
    fsBytesAfter,
    boot,
  }
  plan.stages = bootMount
    ? [
        {
          where: 'now',
          boot: 0,
          steps: ['partition-table-backup', 'crypttab', 'grub-config', 'stage'],
        },
        {
          where: 'initramfs',
          boot: 1,
          steps: [
            'unseal-key',
            'fsck',
            'shrink-fs',
            'reencrypt-init',
            'fallback-keyslot',
            'header-backup',
            'open',
          ],
        },
        { where: 'system', boot: 1, steps: ['reencrypt-data', 'enroll', 'cleanup'] },
      ]
    : [
        { where: 'now', boot: 0, steps: ['partition-table-backup', 'stage'] },
        {
          where: 'initramfs',
          boot: 1,
          steps: [
            'fsck',
            'shrink-fs',
            'shrink-partition',
            'create-boot-partition',
            'mkfs-boot',
            'copy-boot',
          ],
        },
        {
          where: 'system',
          boot: 1,
          steps: ['fstab-boot', 'grub-install', 'crypttab', 'grub-config', 'update-initramfs'],
        },
        {
          where: 'initramfs',
          boot: 2,
          steps: [
            'unseal-key',
            'fsck',
            'reencrypt-init',
            'fallback-keyslot',
            'header-backup',
            'open',
          ],
        },
        { where: 'system', boot: 2, steps: ['reencrypt-data', 'enroll', 'cleanup'] },
      ]
  return plan
}

function range(a: number, b: number): number[] {
  return Array.from({ length: b - a + 1 }, (_, k) => a + k)
}

function mib(n: number): string {
  return `${(n / MiB).toFixed(0)} MiB`
}

export function rootPlanText(p: RootPlan): string {
  const g = p.geometry
  const lines = [
    `plan: encrypt / (${p.root.device}) in place as LUKS2 volume root, UUID ${p.luksUuid}`,
    `  filesystem        ext4${p.root.fsUuid ? ` UUID ${p.root.fsUuid}` : ''}, ${mib(p.root.fsBytes)}, ${mib(p.root.usedBytes)} used`,
    `  firmware, loader  ${p.firmware.toUpperCase()}, GRUB ${p.grubTargets.join(', ') || '-'}${p.rootArg ? `, root=${p.rootArg}` : ''}`,
    `  /boot             ${p.bootMode === 'separate' ? `separate (${p.bootDevice ?? '?'}), kept` : 'on the root filesystem: moves to a new plaintext partition'}`,
  ]
  if (g) {
    lines.push(
      `  disk              ${g.disk} (${g.pttype === 'gpt' ? 'GPT' : 'MBR'}), root partition ${g.rootPartn} at sector ${g.rootStart}: ${mib(g.rootSectorsBefore * g.sectorBytes)} -> ${mib(g.rootSectorsAfter * g.sectorBytes)}`,
      `  root filesystem   shrinks to ${mib(g.fsBytesAfter)} (32 MiB left for the LUKS2 header)`,
    )
    if (g.boot)
      lines.push(
        `  new /boot         partition ${g.boot.partn}, sectors ${g.boot.start}-${g.boot.start + g.boot.sectors - 1} (${mib(g.boot.sectors * g.sectorBytes)}), ext4 UUID ${p.bootFsUuid ?? '?'}`,
      )
  }
  for (const s of p.stages) {
    const head =
      s.where === 'now'
        ? 'now'
        : s.where === 'initramfs'
          ? `boot ${s.boot}, in the initramfs before / is mounted`
          : `boot ${s.boot}, the running system`
    lines.push(`  ${head}:`)
    for (const st of s.steps)
      lines.push(
        `    ${st.padEnd(22)} ${STEP_INFO[st].does}`,
        `    ${''.padEnd(22)} rollback: ${STEP_INFO[st].rollback}`,
      )
  }
  for (const r of p.refusals) lines.push(`  REFUSED (${r.reason}): ${r.message}`)
  return lines.join('\n') + '\n'
}
