/**
 * The journal of one `unlockd encrypt` run: a 0600 JSON file per volume, rewritten atomically
 * (platform/atomic-file.ts) before and after every step, so a run killed at any moment (SIGKILL,
 * power loss) is resumed by running the same command again. A step is recorded as `current`
 * before it starts and moved to `completed` once it has finished; a step found in `current` on
 * the next run was interrupted, and its resume logic knows how to finish or undo it.
 */
import { readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { UnlockdError } from '../../shared/errors.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import {
  ensurePrivateDir,
  readFileIfExists,
  writeExclusive,
  writeFileAtomic,
} from '../../platform/atomic-file.ts'
import { bootId } from '../boot-id.ts'

export const DEFAULT_STATE_DIR = '/var/lib/unlockd/encrypt'

export interface JournalBase<Step extends string> {
  version: 1
  name: string
  /** Every step of this run, in order (fixed when the journal is created). */
  steps: Step[]
  completed: Step[]
  /** The step that was started and has not finished yet. */
  current: Step | null
  finished: boolean
  startedAt: string
  finishedAt: string | null
}

export function journalPath(
  stateDir: string,
  name: string,
  kind: 'luks' | 'fscrypt' | 'root',
): string {
  if (!NAME_RE.test(name)) throw new TypeError('journal name must be a volume name')
  return join(stateDir, `${name}.${kind}.json`)
}

export function loadJournal<J extends JournalBase<string>>(path: string): J | undefined {
  const raw = readFileIfExists(path)
  if (raw === undefined) return undefined
  let doc: unknown
  try {
    doc = JSON.parse(raw.toString('utf8'))
  } catch (cause) {
    throw new UnlockdError(
      'config_invalid',
      `the encryption journal ${path} is not valid JSON; it is written atomically, so it was changed by hand: restore it or inspect the volume before removing it`,
      { cause },
    )
  }
  const j = doc as Partial<JournalBase<string>>
  if (
    typeof doc !== 'object' ||
    doc === null ||
    j.version !== 1 ||
    !Array.isArray(j.steps) ||
    !Array.isArray(j.completed)
  )
    throw new UnlockdError('config_invalid', `the encryption journal ${path} has an unknown format`)
  return doc as J
}

export function saveJournal(path: string, j: JournalBase<string>): void {
  ensurePrivateDir(join(path, '..'))
  writeFileAtomic(path, JSON.stringify(j, null, 2) + '\n', 0o600)
}

/** Read a journal file as text (tests and `--dry-run` show it). */
export function journalText(path: string): string {
  return readFileSync(path, 'utf8')
}

/**
 * Run the steps of `j` that have not completed, in order, saving the journal around each.
 * `run(step, interrupted)` gets `interrupted = true` when the previous run died inside it.
 */
export async function runSteps<Step extends string, J extends JournalBase<Step>>(
  path: string,
  j: J,
  run: (step: Step, interrupted: boolean) => Promise<void>,
  log: (line: string) => void,
): Promise<void> {
  for (const step of j.steps) {
    if (j.completed.includes(step)) continue
    const interrupted = j.current === step
    if (interrupted) log(`resuming step ${step} (the previous run stopped inside it)`)
    j.current = step
    saveJournal(path, j)
    await run(step, interrupted)
    j.completed.push(step)
    j.current = null
    saveJournal(path, j)
  }
  j.finished = true
  j.finishedAt = new Date().toISOString()
  saveJournal(path, j)
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The pid holding the run lock of `journal`, when a live process of this boot holds it. */
export function runLockHolder(journal: string): number | undefined {
  const [pid, boot] = (readFileIfExists(`${journal}.lock`)?.toString('utf8') ?? '')
    .trim()
    .split(' ')
  const n = Number(pid)
  if (!Number.isInteger(n) || n <= 0 || boot !== bootId()) return undefined
  return n !== process.pid && alive(n) ? n : undefined
}

/**
 * Only one process runs the steps of a journal: the `unlockd encrypt` command, or the agent that
 * resumes a conversion in the background. The lock file beside the journal holds the pid and the
 * boot id; one left by a dead process or an earlier boot is taken over. Returns the release.
 */
export function acquireRunLock(journal: string): () => void {
  const path = `${journal}.lock`
  const mine = `${process.pid} ${bootId()}\n`
  ensurePrivateDir(join(journal, '..'))
  for (let attempt = 0; ; attempt++) {
    try {
      writeExclusive(path, mine, 0o600)
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err
      const holder = runLockHolder(journal)
      if (holder !== undefined)
        throw new UnlockdError(
          'conflict',
          `another process (pid ${holder}) is running this conversion: wait for it (\`unlockd status\` shows its progress)`,
          { details: { pid: holder } },
        )
      rmSync(path, { force: true })
    }
  }
  return () => {
    if (readFileIfExists(path)?.toString('utf8') === mine) rmSync(path, { force: true })
  }
}
