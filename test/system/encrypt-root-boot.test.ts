/**
 * Story: the initramfs steps of `unlockd encrypt --root`, run on a provider-like GPT disk image
 * (BIOS boot partition 14, ext4 root on partition 1 holding /boot and data). The carve shrinks
 * the filesystem and its partition and gives /boot a partition of its own, with every file
 * compared; run again it changes nothing. The encrypting boot then initializes LUKS2 on the
 * shrunk partition with the planned UUID, the key sealed at staging and the fallback passphrase
 * as the keyslot of the conversion; the data, encrypted to the end, decrypts to the same files. A failure
 * half-way through the carve puts the saved partition table back and grows the filesystem again.
 *
 * The host has no partition devices for loop images and no device-mapper: partitions are loop
 * devices at their offsets, and the data moves offline (the initramfs opens the mapping instead).
 */
import type { ExecutionContext } from 'ava'
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { rootTest, mustRun, tool } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { seedDataset, snapshot, DATASET_NEEDS } from '../helpers/dataset.ts'
import { decryptCopy } from '../helpers/encrypt.ts'
import { generateHostKeys, type HostKeys } from '../../shared/crypto/keys.ts'
import { loadJournal, saveJournal } from '../../agent/encrypt/journal.ts'
import { tool as agentTool } from '../../agent/encrypt/probe.ts'
import { factsFromRecord } from '../../agent/encrypt/root-facts.ts'
import {
  GPT_BIOS_BOOT,
  GPT_LINUX_FS,
  planRoot,
  type RootPlan,
} from '../../agent/encrypt/root-plan.ts'
import { stageRoot, type RootJournal } from '../../agent/encrypt/root-stage.ts'
import { samePartitions } from '../../agent/encrypt/root-table.ts'
import { carveBoot, initRoot, treeDigest, type BootContext } from '../../agent/encrypt/root-boot.ts'

const NEEDS = {
  serial: true,
  bins: [
    'sfdisk',
    'sgdisk',
    'losetup',
    'mkfs.ext4',
    'resize2fs',
    'cryptsetup',
    'mount',
    ...DATASET_NEEDS,
  ],
}
const MiB = 1024 * 1024
const SECTORS = 1400 * 2048
const ROOT_START = 8192
const ROOT_SECTORS = SECTORS - 34 - ROOT_START + 1
const FALLBACK = 'typed at the prompt'
const ROOT_UUID = '0b5c6c3e-8f1d-4d2a-9a61-7d3c2b1a0f9e'

interface World {
  dir: string
  img: string
  keys: HostKeys
  plan: RootPlan
  jpath: string
  original: string
  loops: string[]
  before: Record<string, unknown>
  bootBefore: Map<string, string>
}

async function loop(w: World, startSector: number, sectors: number): Promise<string> {
  const dev = (
    await mustRun('losetup', [
      '--find',
      '--show',
      '--offset',
      String(startSector * 512),
      '--sizelimit',
      String(sectors * 512),
      w.img,
    ])
  ).trim()
  w.loops.push(dev)
  return dev
}

async function world(t: ExecutionContext): Promise<World> {
  const dir = await tempDir(t)
  const img = join(dir, 'disk.img')
  await writeFile(img, '')
  await mustRun('truncate', ['-s', String(SECTORS * 512), img])
  await mustRun('sgdisk', ['-n14:2048:+1M', `-t14:EF02`, `-n1:${ROOT_START}:0`, '-t1:8300', img])
  const w: World = {
    dir,
    img,
    keys: await generateHostKeys(),
    plan: undefined as unknown as RootPlan,
    jpath: '',
    original: '',
    loops: [],
    before: {},
    bootBefore: new Map(),
  }
  t.teardown(async () => {
    await tool('umount', [join(dir, 'seed')])
    for (const l of w.loops.reverse()) await tool('losetup', ['-d', l])
  })
  const root = await loop(w, ROOT_START, ROOT_SECTORS)
  await mustRun('mkfs.ext4', ['-q', '-F', '-b', '4096', '-U', ROOT_UUID, root])
  const seed = join(dir, 'seed')
  await mkdir(seed)
  await mustRun('mount', [root, seed])
  await mkdir(join(seed, 'boot', 'grub'), { recursive: true })
  await writeFile(join(seed, 'boot', 'vmlinuz-6.1.0-28-cloud-amd64'), Buffer.alloc(5 * MiB, 7))
  await writeFile(join(seed, 'boot', 'grub', 'grub.cfg'), 'menuentry "Debian" {}\n')
  await symlink('vmlinuz-6.1.0-28-cloud-amd64', join(seed, 'boot', 'vmlinuz'))
  await mkdir(join(seed, 'srv'))
  await seedDataset(join(seed, 'srv'), { smallFiles: 200, bigMiB: 16 })
  w.before = await snapshot(join(seed, 'srv'))
  w.bootBefore = treeDigest(join(seed, 'boot'))
  const df = (await mustRun('df', ['-B1', '--output=size,used', seed])).trim().split('\n')[1]
  const [size, used] = (df ?? '').trim().split(/\s+/).map(Number)
  await mustRun('umount', [seed])
  const record = {
    lsblk: {
      blockdevices: [
        {
          name: 'disk.img',
          path: img,
          type: 'disk',
          size: SECTORS * 512,
          pttype: 'gpt',
          children: [
            {
              name: 'disk.img1',
              path: `${img}1`,
              type: 'part',
              start: ROOT_START,
              size: ROOT_SECTORS * 512,
              parttype: GPT_LINUX_FS,
              fstype: 'ext4',
              uuid: ROOT_UUID,
              mountpoints: ['/'],
            },
            {
              name: 'disk.img14',
              path: `${img}14`,
              type: 'part',
              start: 2048,
              size: MiB,
              parttype: GPT_BIOS_BOOT,
            },
          ],
        },
      ],
    },
    findmnt: {
      filesystems: [{ target: '/', source: `${img}1`, fstype: 'ext4', size, used, avail: 0 }],
    },
    cmdline: `BOOT_IMAGE=/boot/vmlinuz root=UUID=${ROOT_UUID} ro`,
    efi: false,
    grubPlatforms: ['i386-pc'],
    grubCfg: '/boot/grub/grub.cfg',
    bootUsedBytes: 6 * MiB,
    rootMinBytes: null,
  }
  w.plan = planRoot({
    facts: factsFromRecord(record),
    enrolled: true,
    hasFallback: true,
    luksUuid: '3f1e2d4c-5b6a-4978-8a9b-0c1d2e3f4a5b',
    bootFsUuid: '4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d',
  })
  if (w.plan.refusals.length > 0) throw new Error(JSON.stringify(w.plan.refusals))
  const r = await stageRoot({
    plan: w.plan,
    record,
    keys: w.keys,
    fallback: new TextEncoder().encode(FALLBACK),
    stateDir: join(dir, 'state'),
    jobPath: join(dir, 'root-encrypt.json'),
    dumpTable: async (d) => mustRun('sfdisk', ['--dump', d]),
    rebuildInitramfs: async () => {},
    runStep: async () => {},
    log: () => {},
  })
  w.jpath = r.journal
  w.original = await mustRun('sfdisk', ['--dump', img])
  return w
}

function journal(w: World): RootJournal {
  const j = loadJournal<RootJournal>(w.jpath)
  if (!j) throw new Error('no journal')
  return j
}

function context(w: World, rootDev: string, extra: Partial<BootContext> = {}): BootContext {
  const boot = w.plan.geometry?.boot
  if (!boot) throw new Error('no boot geometry')
  let bootDev: string | undefined
  return {
    j: journal(w),
    disk: w.img,
    rootDev,
    bootDev: async () => (bootDev ??= await loop(w, boot.start, boot.sectors)),
    mnt: join(w.dir, 'mnt'),
    tool: (cmd, args, stdin) => agentTool(cmd, args, stdin === undefined ? {} : { stdin }),
    keys: w.keys,
    save: (j) => saveJournal(w.jpath, j),
    log: () => {},
    open: false,
    ...extra,
  }
}

async function fsBytes(dev: string): Promise<number> {
  const t = await mustRun('dumpe2fs', ['-h', dev])
  const f = (k: string): number => Number(new RegExp(`^${k}:\\s*(\\d+)`, 'm').exec(t)?.[1])
  return f('Block count') * f('Block size')
}

async function dataSnapshot(w: World, dev: string): Promise<Record<string, unknown>> {
  const m = join(w.dir, 'check')
  await mkdir(m, { recursive: true })
  await mustRun('mount', ['-o', 'ro', dev, m])
  try {
    return await snapshot(join(m, 'srv'))
  } finally {
    await mustRun('umount', [m])
  }
}

rootTest(
  'boot 1 carves /boot from the root partition, boot 2 initializes LUKS2 on what is left',
  async (t) => {
    const w = await world(t)
    const g = w.plan.geometry
    const boot = g?.boot
    if (!g || !boot) return t.fail()
    const root = w.loops[0] as string
    await carveBoot(context(w, root))

    const table = JSON.parse(await mustRun('sfdisk', ['--json', w.img])) as {
      partitiontable: { partitions: { node: string; start: number; size: number; type: string }[] }
    }
    const parts = table.partitiontable.partitions
    t.like(
      parts.find((p) => p.node === `${w.img}1`),
      { start: ROOT_START, size: g.rootSectorsAfter },
    )
    t.like(
      parts.find((p) => p.node === `${w.img}${boot.partn}`),
      {
        start: boot.start,
        size: boot.sectors,
        type: 'BC13C2FF-59E6-4262-A352-B275FD6F7172',
      },
    )
    t.like(
      parts.find((p) => p.node === `${w.img}14`),
      { start: 2048, size: 2048 },
    )
    t.regex(
      await mustRun('sgdisk', ['-p', w.img]),
      new RegExp(`\\n\\s+${boot.partn}\\s+${boot.start}\\s+.*EA00`),
    )
    t.is(await fsBytes(root), g.fsBytesAfter)
    t.is((await tool('e2fsck', ['-f', '-n', root])).code, 0)
    const bootDev = w.loops[1] as string
    t.is(
      (await mustRun('blkid', ['-p', '-o', 'value', '-s', 'UUID', bootDev])).trim(),
      w.plan.bootFsUuid ?? '',
    )
    const m = join(w.dir, 'newboot')
    await mkdir(m)
    await mustRun('mount', ['-o', 'ro', bootDev, m])
    t.deepEqual(treeDigest(m), w.bootBefore, '/boot copied file by file')
    await mustRun('umount', [m])
    t.deepEqual(await dataSnapshot(w, root), w.before)
    t.deepEqual(journal(w).completed.slice(-6), [
      'fsck',
      'shrink-fs',
      'shrink-partition',
      'create-boot-partition',
      'mkfs-boot',
      'copy-boot',
    ])
    // A second run (a boot that died after the last step) changes nothing.
    const dump = await mustRun('sfdisk', ['--dump', w.img])
    await carveBoot(context(w, root))
    t.is(await mustRun('sfdisk', ['--dump', w.img]), dump)

    // The encrypting boot, on the partition as the kernel now sees it.
    const luksDev = await loop(w, ROOT_START, g.rootSectorsAfter)
    const header = join(w.dir, 'root.luks-header')
    await initRoot(context(w, luksDev), header)
    const dumpText = await mustRun('cryptsetup', ['luksDump', luksDev])
    t.regex(dumpText, new RegExp(`UUID:\\s+${w.plan.luksUuid}`))
    t.regex(dumpText, /online-reencrypt/)
    t.is(
      (
        await tool(
          'cryptsetup',
          ['open', '--test-passphrase', '--key-file', '-', luksDev],
          new TextEncoder().encode(FALLBACK),
        )
      ).code,
      0,
      'the fallback passphrase opens it',
    )
    t.not(
      (
        await tool(
          'cryptsetup',
          ['open', '--test-passphrase', '--key-file', '-', luksDev],
          new TextEncoder().encode('wrong'),
        )
      ).code,
      0,
    )
    t.regex(await mustRun('cryptsetup', ['luksDump', header]), new RegExp(w.plan.luksUuid))
    t.regex(dumpText, /^\s+0: luks2/m)
    t.notRegex(dumpText, /^\s+1: luks2/m, 'one keyslot while it reencrypts')
    const key = new TextEncoder().encode(FALLBACK)
    // The rest of the data, offline here (the booted system does it online).
    await mustRun(
      'cryptsetup',
      [
        'reencrypt',
        '--resume-only',
        '--force-offline-reencrypt',
        '--batch-mode',
        '--key-file',
        '-',
        luksDev,
      ],
      key,
    )
    t.notRegex(await mustRun('cryptsetup', ['luksDump', luksDev]), /online-reencrypt/)
    const part = join(w.dir, 'root-part.img')
    await mustRun('dd', [`if=${luksDev}`, `of=${part}`, 'bs=1M', 'status=none'])
    const plain = await decryptCopy(w.dir, part, new TextEncoder().encode(FALLBACK))
    const plainDev = (await mustRun('losetup', ['--find', '--show', plain])).trim()
    w.loops.push(plainDev)
    t.deepEqual(await dataSnapshot(w, plainDev), w.before, 'every file, byte for byte')
    t.is((await readFile(w.jpath)).includes(FALLBACK), false)
  },
  NEEDS,
)

rootTest(
  'a failure during the carve restores the partition table and grows the filesystem back',
  async (t) => {
    const w = await world(t)
    const root = w.loops[0] as string
    const err = await t.throwsAsync(carveBoot(context(w, root, { failAfter: 'mkfs-boot' })))
    t.regex(err?.message ?? '', /after mkfs-boot/)
    t.true(samePartitions(await mustRun('sfdisk', ['--dump', w.img]), w.original))
    t.is(await fsBytes(root), ROOT_SECTORS * 512 - ((ROOT_SECTORS * 512) % 4096))
    t.is((await tool('e2fsck', ['-f', '-n', root])).code, 0)
    t.deepEqual(await dataSnapshot(w, root), w.before)
    t.deepEqual(journal(w).completed, ['partition-table-backup', 'stage'])
  },
  NEEDS,
)
