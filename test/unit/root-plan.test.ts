/** The root-filesystem planner on recorded layouts of common cloud images and refused layouts. */
import test from 'ava'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import { factsFromRecord, type RootFacts } from '../../agent/encrypt/root-facts.ts'
import {
  GPT_XBOOTLDR,
  MIN_FREE_AFTER_BYTES,
  ROOT_HEADER_ROOM_BYTES,
  planRoot,
  rootPlanText,
  type RootPlan,
} from '../../agent/encrypt/root-plan.ts'

const DIR = join(import.meta.dirname, '..', 'fixtures', 'root-layouts')
const LUKS_UUID = '11111111-2222-4333-8444-555555555555'
const BOOT_UUID = '66666666-7777-4888-9999-aaaaaaaaaaaa'

function facts(name: string): RootFacts {
  return factsFromRecord(JSON.parse(readFileSync(join(DIR, `${name}.json`), 'utf8')))
}

function plan(f: RootFacts, o: { enrolled?: boolean; hasFallback?: boolean } = {}): RootPlan {
  return planRoot({
    facts: f,
    enrolled: o.enrolled ?? true,
    hasFallback: o.hasFallback ?? true,
    luksUuid: LUKS_UUID,
    bootFsUuid: BOOT_UUID,
  })
}

const reasons = (p: RootPlan): string[] => p.refusals.map((r) => r.reason)

test('every recorded layout parses', (t) => {
  const files = readdirSync(DIR).filter((f) => f.endsWith('.json'))
  t.true(files.length >= 8)
  for (const f of files) t.notThrows(() => facts(f.replace(/\.json$/, '')), f)
})

for (const name of [
  'debian-12-genericcloud-bios',
  'debian-12-genericcloud-uefi',
  'digitalocean-ubuntu-22.04',
  'debian-12-mbr',
]) {
  test(`${name}: /boot on root gets its own partition carved from the end of the root partition`, (t) => {
    const f = facts(name)
    const p = plan(f)
    t.deepEqual(p.refusals, [])
    t.is(p.bootMode, 'on-root')
    const g = p.geometry
    if (g === null || g.boot === null) return t.fail('no geometry')
    const root = f.mounts.find((m) => m.target === '/')
    // The root partition keeps its start and ends where the new /boot begins.
    t.is(g.rootStart + g.rootSectorsAfter, g.boot.start)
    t.is(g.boot.start + g.boot.sectors, g.rootStart + g.rootSectorsBefore, 'the tail, exactly')
    t.is((g.boot.start * g.sectorBytes) % (1024 * 1024), 0, '/boot starts on a MiB boundary')
    t.true(g.boot.sectors * g.sectorBytes >= 2 * f.bootUsedBytes, 'room for a second kernel')
    // 32 MiB free at the end of the shrunk partition for the LUKS2 header.
    t.true(g.fsBytesAfter + ROOT_HEADER_ROOM_BYTES <= g.rootSectorsAfter * g.sectorBytes)
    t.is(g.fsBytesAfter % 4096, 0)
    t.true(g.fsBytesAfter >= (root?.usedBytes ?? Infinity) + MIN_FREE_AFTER_BYTES)
    // A free partition number, not one in use.
    const disk = f.devices.find((d) => d.path === g.disk)
    const used = (disk?.children ?? []).map((c) => Number(/(\d+)$/.exec(c.name)?.[1]))
    t.true(used.length > 0)
    t.false(used.includes(g.boot.partn))
    t.is(g.boot.parttype, g.pttype === 'gpt' ? GPT_XBOOTLDR : '83')
    t.deepEqual(
      p.stages.map((s) => `${s.where}:${s.boot}`),
      ['now:0', 'initramfs:1', 'system:1', 'initramfs:2', 'system:2'],
    )
    t.deepEqual(p.stages[1]?.steps.slice(0, 2), ['fsck', 'shrink-fs'])
    t.true(p.stages[3]?.steps.includes('reencrypt-init'))
    t.is(p.stages[3]?.steps[0], 'unseal-key', 'no key, nothing changes')
    t.deepEqual(p.stages[4]?.steps, ['reencrypt-data', 'enroll', 'cleanup'])
    const text = rootPlanText(p)
    t.regex(text, /boot 1, in the initramfs/)
    t.regex(text, /rollback: /)
    t.notRegex(text, /REFUSED/)
  })
}

test('the new /boot takes the lowest free partition number (GPT 2 after 1, 14, 15; MBR 2)', (t) => {
  t.is(plan(facts('debian-12-genericcloud-bios')).geometry?.boot?.partn, 2)
  t.is(plan(facts('debian-12-mbr')).geometry?.boot?.partn, 2)
})

test('UEFI picks the EFI GRUB platform, BIOS the i386-pc one', (t) => {
  t.deepEqual(plan(facts('debian-12-genericcloud-uefi')).grubTargets, ['x86_64-efi'])
  t.deepEqual(plan(facts('debian-12-genericcloud-bios')).grubTargets, ['i386-pc'])
})

test('Ubuntu 24.04 cloud: /boot is already separate, one boot shrinks and encrypts', (t) => {
  const p = plan(facts('ubuntu-24.04-cloud'))
  t.deepEqual(p.refusals, [])
  t.is(p.bootMode, 'separate')
  t.is(p.geometry?.boot, null)
  t.is(p.geometry?.rootSectorsAfter, p.geometry?.rootSectorsBefore, 'the partition stays')
  t.deepEqual(
    p.stages.map((s) => `${s.where}:${s.boot}`),
    ['now:0', 'initramfs:1', 'system:1'],
  )
  t.deepEqual(p.stages[1]?.steps.slice(0, 3), ['unseal-key', 'fsck', 'shrink-fs'])
})

const refused: [string, string][] = [
  ['ubuntu-24.04-server-lvm', 'lvm'],
  ['rocky-9-genericcloud-xfs', 'xfs'],
  ['fedora-40-cloud-btrfs', 'btrfs'],
  ['whole-disk-ext4', 'whole_disk'],
  ['debian-12-luks', 'already_encrypted'],
]
for (const [name, reason] of refused) {
  test(`${name}: refused (${reason}), no steps planned`, (t) => {
    const p = plan(facts(name))
    t.deepEqual(reasons(p), [reason])
    t.deepEqual(p.stages, [])
    t.regex(rootPlanText(p), new RegExp(`REFUSED \\(${reason}\\)`))
  })
}

test('too little free space: the reason says how much to free', (t) => {
  const f = facts('debian-12-genericcloud-bios')
  const root = f.mounts.find((m) => m.target === '/')
  if (!root) return t.fail()
  // Fill the filesystem until the shrunk one would keep less than the minimum free.
  root.usedBytes = root.sizeBytes - 600 * 1024 * 1024
  const p = plan(f)
  t.deepEqual(reasons(p), ['too_full'])
  t.regex(p.refusals[0]?.message ?? '', /free at least \d+ MiB/)
  // A used size just under the limit passes: the check is on the computed size, not a constant.
  const g = p.geometry
  if (!g) return t.fail()
  root.usedBytes = g.fsBytesAfter - MIN_FREE_AFTER_BYTES
  f.rootMinBytes = null
  t.deepEqual(reasons(plan(f)), [])
})

test('a resize2fs estimate above the used bytes counts', (t) => {
  const f = facts('debian-12-genericcloud-bios')
  const p0 = plan(f)
  f.rootMinBytes = (p0.geometry?.fsBytesAfter ?? 0) - MIN_FREE_AFTER_BYTES + 4096
  t.deepEqual(reasons(plan(f)), ['too_full'])
})

test('not booted by GRUB (no BOOT_IMAGE=, or no GRUB modules): unknown bootloader', (t) => {
  const f = facts('debian-12-genericcloud-bios')
  f.cmdline = f.cmdline.replace(/BOOT_IMAGE=\S+ /, '')
  t.deepEqual(reasons(plan(f)), ['unknown_bootloader'])
  const g = facts('debian-12-genericcloud-uefi')
  g.grubPlatforms = ['i386-pc']
  const p = plan(g)
  t.deepEqual(reasons(p), ['unknown_bootloader'])
  t.regex(p.refusals[0]?.message ?? '', /\*-efi/)
})

test('BIOS on GPT without a BIOS boot partition is refused', (t) => {
  const f = facts('debian-12-genericcloud-bios')
  const disk = f.devices[0]
  if (!disk) return t.fail()
  disk.children = disk.children.filter((c) => c.name !== 'vda14')
  t.deepEqual(reasons(plan(f)), ['no_bios_boot_partition'])
})

test('MBR with four primary partitions has no slot for /boot', (t) => {
  const f = facts('debian-12-mbr')
  const disk = f.devices[0]
  const root = disk?.children[0]
  if (!disk || !root) return t.fail()
  for (const n of [2, 3, 4])
    disk.children.push({ ...root, name: `sda${n}`, path: `/dev/sda${n}`, mountpoints: [] })
  t.deepEqual(reasons(plan(f)), ['no_partition_slot'])
})

test('/boot too big for a new partition', (t) => {
  const f = facts('debian-12-genericcloud-bios')
  f.bootUsedBytes = 1500 * 1024 * 1024
  t.deepEqual(reasons(plan(f)), ['boot_too_big'])
})

test('not enrolled and no fallback passphrase: both reasons, with their codes', (t) => {
  const p = plan(facts('debian-12-genericcloud-bios'), { enrolled: false, hasFallback: false })
  t.deepEqual(reasons(p), ['not_enrolled', 'no_fallback'])
  t.deepEqual(
    p.refusals.map((r) => r.code),
    ['not_enrolled', 'destructive_needs_force'],
  )
})

test('garbage lsblk output is refused with the command to run', (t) => {
  t.throws(() => factsFromRecord({ lsblk: { blockdevices: [{ size: 1 }] }, efi: false }), {
    message: /lsblk --json -O -b/,
  })
})
