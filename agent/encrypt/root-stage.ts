/**
 * Staging `unlockd encrypt --root`: nothing on the disk changes now. The journal (0600, in the
 * state directory on the root filesystem) records the plan, the facts it was made from, the
 * partition table as it is, and the fallback passphrase sealed to this host's sealing key; the job file tells the initramfs script that a conversion is staged. The next
 * boot's initramfs reads the journal (mounting / read-only), does its steps and records them.
 */
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { UnlockdError } from '../../shared/errors.ts'
import { openEscrowBlob, sealVolumeKey, type EscrowBlob } from '../../shared/crypto/blob.ts'
import { publicOf, type HostKeys } from '../../shared/crypto/keys.ts'
import { zeroize } from '../../shared/crypto/bytes.ts'
import { readFileIfExists, writeFileAtomic, ensurePrivateDir } from '../../platform/atomic-file.ts'
import { journalPath, loadJournal, saveJournal, type JournalBase } from './journal.ts'
import type { RootPlan, RootStep } from './root-plan.ts'

export const ROOT_NAME = 'root'
/** The job file's name in the config directory (/etc/unlockd), which the initramfs hook copies. */
export const ROOT_JOB_FILE = 'root-encrypt.json'
/** What the sealed fallback starts with: a passphrase of any length makes a valid blob. */
const FALLBACK_PREFIX = 'unlockd-fallback:'

export interface RootJournal extends JournalBase<RootStep> {
  kind: 'root'
  plan: RootPlan
  /** The probe's record the plan was decided from (lsblk, findmnt, cmdline, ...). */
  facts: Record<string, unknown>
  /** `sfdisk --dump` of the disk before anything changed; restored by every rollback. */
  partitionTable: string
  tableBackupPath: string
  /** The fallback passphrase, sealed to this host: the conversion's keyslot until the data is encrypted. */
  sealedFallback: EscrowBlob | null
  /** Outcome of each boot, appended by the initramfs and the agent. */
  boots: { at: string; stage: number; ok: boolean; message: string }[]
  aborted: boolean
}

/** The job file in /etc/unlockd (copied into the initramfs): where the journal is. */
export interface RootJob {
  version: 1
  journal: string
  luksUuid: string
  rootPartuuid: string | null
  rootDevice: string
}

export function newUuids(): { luksUuid: string; bootFsUuid: string } {
  return { luksUuid: randomUUID(), bootFsUuid: randomUUID() }
}

export async function sealFallback(pass: Uint8Array, keys: HostKeys): Promise<EscrowBlob> {
  const prefix = new TextEncoder().encode(FALLBACK_PREFIX)
  const buf = new Uint8Array(prefix.byteLength + pass.byteLength)
  buf.set(prefix)
  buf.set(pass, prefix.byteLength)
  try {
    return await sealVolumeKey(buf, [publicOf(keys.sealing)])
  } finally {
    zeroize(buf)
  }
}

export async function openFallback(blob: EscrowBlob, keys: HostKeys): Promise<Uint8Array> {
  const buf = await openEscrowBlob(blob, keys.sealing)
  const n = FALLBACK_PREFIX.length
  const out = buf.slice(n)
  zeroize(buf)
  return out
}

export interface StageOptions {
  plan: RootPlan
  record: Record<string, unknown>
  keys: HostKeys
  fallback: Uint8Array
  stateDir: string
  jobPath: string
  /** `sfdisk --dump DISK`. */
  dumpTable: (disk: string) => Promise<string>
  /** update-initramfs -u (the hook copies the job file into the image). */
  rebuildInitramfs: () => Promise<void>
  /** The other steps of the first stage (crypttab, grub-config when /boot is separate). */
  runStep: (step: RootStep, j: RootJournal) => Promise<void>
  log: (line: string) => void
}

export interface StageResult {
  journal: string
  job: string
  resumed: boolean
}

/** Write the journal and the job, rebuild the initramfs. Idempotent for a staged plan. */
export async function stageRoot(o: StageOptions): Promise<StageResult> {
  const jpath = journalPath(o.stateDir, ROOT_NAME, 'root')
  const existing = loadJournal<RootJournal>(jpath)
  if (existing !== undefined && !existing.aborted) {
    if (existing.finished) throw new UnlockdError('conflict', `/ is already encrypted (${jpath})`)
    if (existing.completed.includes('stage')) {
      o.log(`a conversion of / is already staged (${jpath}); reboot to continue it`)
      return { journal: jpath, job: o.jobPath, resumed: true }
    }
  }
  const g = o.plan.geometry
  if (g === null || o.plan.refusals.length > 0)
    throw new TypeError('stageRoot needs an accepted plan')
  const steps = o.plan.stages.flatMap((s) => s.steps)
  const j: RootJournal = {
    version: 1,
    kind: 'root',
    name: ROOT_NAME,
    steps,
    completed: [],
    current: null,
    finished: false,
    startedAt: new Date().toISOString(),
    finishedAt: null,
    plan: o.plan,
    facts: o.record,
    partitionTable: '',
    tableBackupPath: join(o.stateDir, 'root.sfdisk'),
    sealedFallback: await sealFallback(o.fallback, o.keys),
    boots: [],
    aborted: false,
  }
  const mark = (s: RootStep): void => {
    j.current = null
    if (!j.completed.includes(s)) j.completed.push(s)
    saveJournal(jpath, j)
  }
  o.log(`journal ${jpath}`)
  for (const step of o.plan.stages[0]?.steps ?? []) {
    j.current = step
    saveJournal(jpath, j)
    if (step === 'partition-table-backup') {
      j.partitionTable = await o.dumpTable(g.disk)
      ensurePrivateDir(o.stateDir)
      writeFileAtomic(j.tableBackupPath, j.partitionTable, 0o600)
      o.log(`partition table of ${g.disk} saved in ${j.tableBackupPath}`)
    } else if (step === 'stage') {
      const job: RootJob = {
        version: 1,
        journal: jpath,
        luksUuid: o.plan.luksUuid,
        rootPartuuid: o.plan.root.partuuid,
        rootDevice: o.plan.root.device,
      }
      writeFileAtomic(o.jobPath, JSON.stringify(job, null, 2) + '\n', 0o600)
      await o.rebuildInitramfs()
    } else await o.runStep(step, j)
    mark(step)
  }
  return { journal: jpath, job: o.jobPath, resumed: false }
}

/** The staged job, when there is one. */
export function loadJob(path: string): RootJob | undefined {
  const raw = readFileIfExists(path)
  if (raw === undefined) return undefined
  const v = JSON.parse(raw.toString('utf8')) as Partial<RootJob>
  if (v.version !== 1 || typeof v.journal !== 'string' || typeof v.luksUuid !== 'string')
    throw new UnlockdError('config_invalid', `${path} is not an unlockd root-encryption job`)
  return v as RootJob
}
