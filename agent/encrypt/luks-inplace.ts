/**
 * In-place conversion of a plaintext ext4 volume (block device or image file) to LUKS2, with a
 * journal so that a run killed at any point is finished by running it again:
 *
 *   stop units, unmount, e2fsck -f, resize2fs -z UNDO (shrink by >= 32 MiB, else the tail of the
 *   filesystem would be lost), e2fsck -f again (then the undo file goes), cryptsetup reencrypt
 *   --encrypt --init-only --reduce-device-size 32M (the header), a header backup, then the data
 *   (reencrypt --resume-only), a fallback passphrase keyslot, enrollment (the escrowed key gets
 *   its own keyslot), removal of the temporary conversion key, crypttab/fstab, cleanup.
 *
 * The temporary conversion key never touches the disk in the clear: the journal holds it sealed
 * to this host's sealing key, so a resumed run can open the volume; cryptsetup gets it on stdin.
 *
 * Without device-mapper (containers, this project's CI) the data moves offline with
 * --force-offline-reencrypt; after a crash mid-way, `cryptsetup repair` replays the LUKS2
 * reencryption hotzone and --resume-only continues. With device-mapper (ONLINE_STEPS in plan.ts)
 * --init-only also opens the mapping; the conversion key is escrowed as the volume's key (no
 * keyslot can be added during a reencryption), crypttab/fstab point at the mapping, the
 * filesystem is grown into it, remounted and its units started, and the data moves while the
 * volume is in use. After a crash or reboot in that phase the agent unlocks the volume from
 * escrow at boot and finishes the run (./background.ts); `cryptsetup open` replays the hotzone.
 * The online path is tested in a QEMU guest (test/boot/encrypt-online.test.ts).
 *
 * One process at a time runs a journal (acquireRunLock): the command, or the agent.
 */
import { chmodSync, existsSync, rmSync, statSync, truncateSync } from 'node:fs'
import { join } from 'node:path'
import { UnlockdError } from '../../shared/errors.ts'
import { openEscrowBlob, sealVolumeKey, type EscrowBlob } from '../../shared/crypto/blob.ts'
import { zeroize } from '../../shared/crypto/bytes.ts'
import { publicOf, type PublicOkpJwk } from '../../shared/crypto/keys.ts'
import { shredFile } from '../../platform/atomic-file.ts'
import { configDir, loadConfig, loadKeys } from '../config-dir.ts'
import { enrollHost } from '../enroll.ts'
import { newLuksKey } from '../volumes/luks-backend.ts'
import { isLuksVolume } from '../volumes/registry.ts'
import {
  addKeyslot,
  FAST_TEST_PBKDF,
  inspectLuks,
  killSlot,
  openVolume,
  PBKDF_ENV,
  testKey,
} from '../volumes/luks.ts'
import { crashRequested, crashWithChild, trackChild, withSpawnCrash } from './crash-hook.ts'
import {
  acquireRunLock,
  journalPath,
  loadJournal,
  runSteps,
  saveJournal,
  type JournalBase,
} from './journal.ts'
import { planLuks, refusalError, HEADER_ROOM_BYTES, type LuksPlan, type LuksStep } from './plan.ts'
import { ext4Facts, lastLine, mountsOf, mountTable, deviceFacts, tool, usersOf } from './probe.ts'
import { lineSplitter, parseProgressJson, parseProgressText, type Reporter } from './progress.ts'
import { updateSystemFiles } from './system-files.ts'

export interface LuksJournal extends JournalBase<LuksStep> {
  kind: 'luks'
  device: string
  isBlockDevice: boolean
  mode: 'offline' | 'online'
  /** Size of an image file before resize2fs (which truncates image files when it shrinks them). */
  originalSize: number
  blockSize: number
  targetBlocks: number
  fsUuid: string | null
  mountpoints: string[]
  units: string[]
  /** The conversion key, sealed to this host; dropped when the run finishes. */
  sealedKey: EscrowBlob | null
  /** The second way in the run was started with (absent in journals of older versions). */
  secondWay?: 'recovery-key' | 'fallback-passphrase'
  /** The fallback passphrase, sealed to this host, until its keyslot is added. */
  sealedFallback?: EscrowBlob | null
  /** The recovery key's public half (public: it only seals). */
  recoveryKey?: PublicOkpJwk | null
  convSlot: number | null
  luksUuid: string | null
}

export interface LuksEncryptOptions {
  device: string
  name: string
  units: string[]
  configDir?: string | undefined
  stateDir: string
  recoveryKey?: PublicOkpJwk | undefined
  fallbackPassphrase?: Uint8Array | undefined
  crypttabPath?: string
  fstabPath?: string
  dryRun: boolean
  log: (line: string) => void
  progress: Reporter
  /** Called once, just before the first step that touches the volume runs (or resumes). */
  onStart?: ((totalBytes: number) => void) | undefined
}

export interface LuksEncryptResult {
  name: string
  device: string
  status: 'planned' | 'converted' | 'unchanged'
  resumed: boolean
  plan: LuksPlan | null
  journal: string
}

const CRYPTSETUP = 'cryptsetup'

function pbkdf(): readonly string[] {
  // Test-only switch shared with agent/volumes/luks.ts; production lets cryptsetup benchmark.
  return process.env[PBKDF_ENV] === 'fast' ? FAST_TEST_PBKDF : []
}

async function mustTool(
  cmd: string,
  args: string[],
  what: string,
  stdin?: Uint8Array,
): Promise<void> {
  const r = await tool(cmd, args, stdin === undefined ? {} : { stdin })
  if (r.code !== 0)
    throw new UnlockdError('luks_failed', `${what} failed: ${lastLine(r)}`, {
      details: { tool: cmd, exitCode: r.code },
    })
}

async function fsck(dev: string): Promise<void> {
  const r = await tool('e2fsck', ['-f', '-y', dev])
  // 0 clean, 1 errors fixed, 2 fixed and a reboot is advised (irrelevant: it is not mounted).
  if (r.code > 2)
    throw new UnlockdError(
      'volume_invalid',
      `e2fsck could not repair ${dev} (exit ${r.code}: ${lastLine(r)}); nothing was encrypted: repair the filesystem, then run the same command again`,
    )
}

async function needsReencrypt(dev: string): Promise<boolean> {
  const r = await tool(CRYPTSETUP, ['luksDump', dev])
  return r.code === 0 && /online-reencrypt/.test(r.stdout.toString('utf8'))
}

async function isLuks(dev: string): Promise<boolean> {
  return (await tool(CRYPTSETUP, ['isLuks', '--type', 'luks2', dev])).code === 0
}

/** The mapper device while it is open (online path only). */
const mapper = (name: string): string => `/dev/mapper/${name}`

export async function encryptLuks(o: LuksEncryptOptions): Promise<LuksEncryptResult> {
  const c = configDir(o.configDir)
  const jpath = journalPath(o.stateDir, o.name, 'luks')
  const config = loadConfig(c)
  const keys = loadKeys(c)
  const enrolled = config !== undefined && keys !== undefined
  const j = loadJournal<LuksJournal>(jpath)
  const base = { name: o.name, device: o.device, journal: jpath }

  if (j?.finished === true) {
    o.log(`${o.device} was already converted to LUKS2 as ${o.name}; nothing to do`)
    return { ...base, status: 'unchanged', resumed: false, plan: null }
  }
  if (j !== undefined && j.device !== o.device)
    throw new UnlockdError(
      'conflict',
      `the journal ${jpath} belongs to ${j.device}, not ${o.device}: give that device, or another :NAME`,
    )
  const known = config?.volumes.find((v) => isLuksVolume(v) && v.device === o.device)
  if (j === undefined && known !== undefined && (await isLuks(o.device))) {
    o.log(`${o.device} is already LUKS2 and enrolled as ${known.name}; nothing to do`)
    return { ...base, status: 'unchanged', resumed: false, plan: null }
  }
  const secondWay =
    o.fallbackPassphrase !== undefined
      ? ('fallback-passphrase' as const)
      : o.recoveryKey !== undefined
        ? ('recovery-key' as const)
        : null

  let plan: LuksPlan | null = null
  if (j === undefined) {
    plan = await planLuks({ device: o.device, name: o.name, units: o.units, enrolled, secondWay })
    if (o.dryRun) return { ...base, status: 'planned', resumed: false, plan }
    const first = plan.refusals[0]
    if (first !== undefined) throw refusalError(first, plan)
  } else if (o.dryRun) {
    o.log(
      `a conversion of ${o.device} is in progress (step ${j.current ?? 'next'}); run without --dry-run to finish it`,
    )
    return { ...base, status: 'planned', resumed: true, plan: null }
  }
  if (!enrolled || keys === undefined || config === undefined)
    throw new UnlockdError('not_enrolled', 'this host is not enrolled: run `unlockd enroll` first')
  // A resumed run finds the second way in its journal (the agent resumes without options).
  let fallback = o.fallbackPassphrase
  const recoveryKey = o.recoveryKey ?? j?.recoveryKey ?? undefined
  if (fallback === undefined && j?.sealedFallback)
    fallback = await openEscrowBlob(j.sealedFallback, keys.sealing)
  const stillNeeded =
    j === undefined ||
    (j.secondWay === 'fallback-passphrase' && !j.completed.includes('fallback-key')) ||
    (j.secondWay === 'recovery-key' && !j.completed.includes('enroll')) ||
    (j.secondWay === undefined && !j.finished)
  if (stillNeeded && fallback === undefined && recoveryKey === undefined)
    throw new UnlockdError(
      'usage',
      'give the same --recovery-key or --fallback-passphrase-file as the first run to finish it',
    )
  const release = acquireRunLock(jpath)
  try {
    return await convert(o, {
      c,
      jpath,
      keys,
      config,
      journal: j,
      plan,
      fallback,
      recoveryKey,
      secondWay: secondWay ?? j?.secondWay ?? 'recovery-key',
    })
  } finally {
    release()
    if (fallback !== o.fallbackPassphrase) fallback?.fill(0)
  }
}

interface ConvertContext {
  c: ReturnType<typeof configDir>
  jpath: string
  keys: NonNullable<ReturnType<typeof loadKeys>>
  config: NonNullable<ReturnType<typeof loadConfig>>
  journal: LuksJournal | undefined
  plan: LuksPlan | null
  fallback: Uint8Array | undefined
  recoveryKey: PublicOkpJwk | undefined
  secondWay: 'recovery-key' | 'fallback-passphrase'
}

async function convert(o: LuksEncryptOptions, x: ConvertContext): Promise<LuksEncryptResult> {
  const { c, jpath, keys, config, plan } = x
  const base = { name: o.name, device: o.device, journal: jpath }
  // Read again under the lock: another process may have moved the run on meanwhile.
  let j = loadJournal<LuksJournal>(jpath)
  if (j?.finished === true) return { ...base, status: 'unchanged', resumed: false, plan: null }
  if (x.journal === undefined && j !== undefined)
    throw new UnlockdError(
      'conflict',
      `another run started converting ${o.device} meanwhile: run the same command again to finish it`,
    )

  const resumed = j !== undefined
  let key: Uint8Array
  if (j === undefined) {
    if (plan === null) throw new Error('unreachable: no plan')
    key = newLuksKey()
    const dev = await deviceFacts(o.device)
    j = {
      version: 1,
      kind: 'luks',
      name: o.name,
      device: o.device,
      isBlockDevice: plan.isBlockDevice,
      mode: plan.mode,
      originalSize: dev.sizeBytes,
      blockSize: plan.blockSize,
      targetBlocks: plan.targetFsBytes / plan.blockSize,
      fsUuid: plan.fsUuid,
      mountpoints: plan.mountpoints,
      units: o.units,
      sealedKey: await sealVolumeKey(key, [publicOf(keys.sealing)]),
      secondWay: x.secondWay,
      sealedFallback:
        x.fallback === undefined ? null : await sealVolumeKey(x.fallback, [publicOf(keys.sealing)]),
      recoveryKey: x.recoveryKey ?? null,
      convSlot: null,
      luksUuid: null,
      steps: plan.steps,
      completed: [],
      current: null,
      finished: false,
      startedAt: new Date().toISOString(),
      finishedAt: null,
    }
    saveJournal(jpath, j)
    o.log(`journal ${jpath}`)
  } else {
    if (j.sealedKey === null)
      throw new UnlockdError('config_invalid', `the journal ${jpath} has lost its conversion key`)
    key = await openEscrowBlob(j.sealedKey, keys.sealing)
    o.log(`resuming the conversion of ${o.device} (done: ${j.completed.join(', ') || 'nothing'})`)
  }

  const journal: LuksJournal = j
  const dev = o.device
  const undoFile = join(o.stateDir, `${o.name}.e2undo`)
  const headerFile = join(o.stateDir, `${o.name}.luks-header`)
  const offlineFlag = journal.mode === 'offline' ? ['--force-offline-reencrypt'] : []

  const restoreImageSize = (): void => {
    // resize2fs truncates an image file it shrinks: give cryptsetup its full length back.
    if (!journal.isBlockDevice) {
      const now = statSync(dev).size
      if (now < journal.originalSize) truncateSync(dev, journal.originalSize)
    }
  }

  const steps: Record<LuksStep, (interrupted: boolean) => Promise<void>> = {
    'stop-units': async () => {
      for (const u of journal.units) await mustTool('systemctl', ['stop', u], `systemctl stop ${u}`)
    },
    unmount: async () => {
      for (const m of mountsOf(await deviceFacts(dev))) {
        const users = usersOf(m.mountpoint)
        if (users.length > 0)
          throw new UnlockdError(
            'volume_busy',
            `${m.mountpoint} is still in use after stopping the units (${users.map((u) => `pid ${u.pid} ${u.command}`).join(', ')}): stop them, then run the same command again`,
            { details: { reason: 'busy' } },
          )
        await mustTool('umount', [m.mountpoint], `umount ${m.mountpoint}`)
      }
    },
    fsck: async () => fsck(dev),
    shrink: async (interrupted) => {
      if (interrupted) {
        restoreImageSize()
        if (existsSync(undoFile)) {
          const r = await tool('e2undo', [undoFile, dev])
          o.log(
            r.code === 0
              ? 'undid the interrupted resize2fs with e2undo'
              : `e2undo: ${lastLine(r)} (the interrupted resize2fs had not changed anything)`,
          )
        }
        await fsck(dev)
      }
      rmSync(undoFile, { force: true })
      const fs = await ext4Facts(dev)
      if (fs.blockCount > journal.targetBlocks) {
        await withSpawnCrash('shrink', 'resize2fs', () =>
          mustTool('resize2fs', ['-z', undoFile, dev, String(journal.targetBlocks)], 'resize2fs'),
        )
      }
      restoreImageSize()
      const after = await ext4Facts(dev)
      if (after.blockCount * after.blockSize > journal.originalSize - HEADER_ROOM_BYTES)
        throw new UnlockdError(
          'internal',
          `resize2fs left ${dev} larger than planned; nothing was encrypted`,
        )
    },
    'fsck-after-shrink': async () => {
      await fsck(dev)
      rmSync(undoFile, { force: true })
    },
    'reencrypt-init': async () => {
      if (!(await isLuks(dev))) {
        const args = [
          'reencrypt',
          '--encrypt',
          '--init-only',
          '--type',
          'luks2',
          '--reduce-device-size',
          '32M',
          '--batch-mode',
          ...pbkdf(),
          '--key-file',
          '-',
          ...offlineFlag,
          dev,
        ]
        // Online: --init-only also opens the new mapping (device-mapper hosts only).
        if (journal.mode === 'online') args.push(o.name)
        await mustTool(CRYPTSETUP, args, 'cryptsetup reencrypt --init-only', key)
      }
      const info = await inspectLuks(dev)
      journal.convSlot = info.keyslots[0] ?? null
      journal.luksUuid = info.uuid
    },
    'header-backup': async () => {
      rmSync(headerFile, { force: true })
      await mustTool(
        CRYPTSETUP,
        ['luksHeaderBackup', '--batch-mode', '--header-backup-file', headerFile, dev],
        'cryptsetup luksHeaderBackup',
      )
      chmodSync(headerFile, 0o600)
    },
    // ---- online only (device-mapper hosts; not exercised by the host tests) ----
    grow: async () => {
      if (!existsSync(mapper(o.name))) await openVolume(dev, o.name, key, { test: false })
      // Fills the mapping (offline, or online when the volume was mounted meanwhile).
      await mustTool('resize2fs', [mapper(o.name)], 'resize2fs (grow)')
    },
    remount: async () => {
      const mapped = await deviceFacts(mapper(o.name))
      const mounted = new Set(mountsOf(mapped).map((m) => m.mountpoint))
      for (const mp of journal.mountpoints) {
        if (mounted.has(mp)) continue
        if (mountTable().some((m) => m.mountpoint === mp))
          throw new UnlockdError(
            'volume_busy',
            `something else is mounted on ${mp}: unmount it, then run the same command again`,
          )
        await mustTool('mount', [mapper(o.name), mp], `mount ${mp}`)
      }
    },
    'start-units': async () => {
      for (const u of journal.units)
        await mustTool('systemctl', ['start', u], `systemctl start ${u}`)
    },
    // ---- both paths ----
    'reencrypt-data': async (interrupted) => {
      if (!(await needsReencrypt(dev))) return
      if (interrupted && journal.mode === 'offline') {
        // Replays the LUKS2 reencryption hotzone so no sector is lost or encrypted twice.
        await mustTool(
          CRYPTSETUP,
          ['repair', '--batch-mode', '--key-file', '-', dev],
          'cryptsetup repair',
          key,
        )
      }
      if (journal.mode === 'online' && !existsSync(mapper(o.name)))
        await openVolume(dev, o.name, key, { test: false }) // open performs the recovery
      await reencryptData(dev, key, offlineFlag, o.progress)
      if (await needsReencrypt(dev))
        throw new UnlockdError(
          'luks_failed',
          `cryptsetup stopped before the data of ${dev} was encrypted; run the same command again`,
        )
    },
    'fallback-key': async () => {
      const fb = x.fallback
      if (fb === undefined) return
      if (!(await testKey(dev, fb))) await addKeyslot(dev, key, fb, { backupDir: o.stateDir })
      journal.sealedFallback = null
    },
    enroll: async () => {
      await enrollHost({
        configDir: c.dir,
        servers: [],
        name: config.name,
        volumes: [
          {
            kind: 'luks',
            device: dev,
            name: o.name,
            existingKey: key,
            // Online: the data still moves, and cryptsetup adds no keyslot until it is done.
            adopt: journal.mode === 'online',
          },
        ],
        recoveryKey: x.recoveryKey,
        log: o.log,
      })
    },
    'drop-conversion-key': async () => {
      const slot = journal.convSlot
      if (slot === null) return
      const info = await inspectLuks(dev)
      if (info.keyslots.includes(slot) && (await testKey(dev, key, slot))) await killSlot(dev, slot)
    },
    'system-files': async () => {
      if (!journal.isBlockDevice || journal.luksUuid === null) return
      const r = updateSystemFiles({
        name: o.name,
        device: dev,
        fsUuid: journal.fsUuid,
        luksUuid: journal.luksUuid,
        crypttabPath: o.crypttabPath ?? '/etc/crypttab',
        fstabPath: o.fstabPath ?? '/etc/fstab',
      })
      if (r.crypttab) o.log(`added ${o.name} to ${o.crypttabPath ?? '/etc/crypttab'}`)
      if (r.fstab) o.log(`${o.fstabPath ?? '/etc/fstab'} now mounts /dev/mapper/${o.name}`)
      // systemd reads both files into units: let the running one see the new lines now.
      if (
        (r.crypttab || r.fstab) &&
        o.crypttabPath === undefined &&
        existsSync('/run/systemd/system')
      ) {
        const reload = await tool('systemctl', ['daemon-reload'])
        if (reload.code !== 0) o.log(`warning: systemctl daemon-reload: ${lastLine(reload)}`)
      }
    },
    cleanup: async () => {
      shredFile(headerFile)
      rmSync(undoFile, { force: true })
      journal.sealedKey = null
    },
  }

  o.onStart?.(journal.originalSize)
  try {
    await runSteps<LuksStep, LuksJournal>(
      jpath,
      journal,
      (s, interrupted) => steps[s](interrupted),
      o.log,
    )
  } finally {
    zeroize(key)
  }
  return { ...base, status: 'converted', resumed, plan }
}

let progressJson: Promise<boolean> | undefined

/** Whether this cryptsetup has --progress-json (2.6 and later); older ones print text lines. */
function hasProgressJson(): Promise<boolean> {
  progressJson ??= tool(CRYPTSETUP, ['--help']).then((r) =>
    r.stdout.toString('utf8').includes('--progress-json'),
  )
  return progressJson
}

async function reencryptData(
  dev: string,
  key: Uint8Array,
  offlineFlag: string[],
  progress: Reporter,
): Promise<void> {
  const crash = crashRequested('reencrypt-data')
  let seen = 0
  await trackChild(CRYPTSETUP, async (pid) => {
    // Test hook: a small or fast volume may finish before cryptsetup prints a second progress
    // line; then the kill comes 300 ms after cryptsetup started, still inside the step.
    const t0 = Date.now()
    const fallback = crash
      ? setInterval(() => {
          const p = pid()
          if (p !== undefined && Date.now() - t0 >= 300) crashWithChild(p)
        }, 20)
      : undefined
    fallback?.unref()
    const onLine = (line: string): void => {
      const p = parseProgressJson(line, 'encrypting') ?? parseProgressText(line, 'encrypting')
      if (p === undefined) return
      progress.update(p)
      // Test hook: die part-way, once cryptsetup has moved some data but not all.
      if (crash && ++seen >= 2 && p.doneBytes < p.totalBytes) crashWithChild(pid())
    }
    const split = lineSplitter(onLine)
    const r = await tool(
      CRYPTSETUP,
      [
        'reencrypt',
        '--resume-only',
        '--batch-mode',
        '--key-file',
        '-',
        ...offlineFlag,
        ...((await hasProgressJson()) ? ['--progress-json'] : []),
        '--progress-frequency',
        '1',
        dev,
      ],
      { stdin: key, onOutput: (_s, chunk) => split(chunk) },
    )
    clearInterval(fallback)
    progress.done()
    if (r.code !== 0)
      throw new UnlockdError(
        'luks_failed',
        `cryptsetup reencrypt failed on ${dev}: ${lastLine(r)}; the LUKS2 reencryption journal keeps the state: run the same command again`,
      )
  })
}
