/**
 * Conversions in progress on this host, for `unlockd status`: every unfinished journal in the
 * encrypt state directory, with the last progress the run wrote beside it (./watchers.ts).
 */
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { readFileIfExists } from '../../platform/atomic-file.ts'
import { loadJournal, type JournalBase } from './journal.ts'
import { progressFilePath, type ProgressFile } from './watchers.ts'
import { progressLine } from './progress.ts'

export interface RunStatus {
  name: string
  kind: 'luks' | 'fscrypt'
  /** The step running (or interrupted), else the next one. */
  step: string | null
  stepsDone: number
  steps: number
  /** The last progress line written by the run, or null before the data moves. */
  progress: ProgressFile | null
  /** "encrypting: 1.2 GiB / 2.8 GiB (43.0%) ..." or "step shrink (3 of 12)". */
  summary: string
  journal: string
}

function readProgress(path: string): ProgressFile | null {
  const raw = readFileIfExists(path)
  if (raw === undefined) return null
  try {
    return JSON.parse(raw.toString('utf8')) as ProgressFile
  } catch {
    return null
  }
}

export function conversionsInProgress(stateDir: string): RunStatus[] {
  let names: string[]
  try {
    names = readdirSync(stateDir)
  } catch {
    return []
  }
  const out: RunStatus[] = []
  for (const f of names.sort()) {
    const m = /^(.+)\.(luks|fscrypt)\.json$/.exec(f)
    if (!m || f.endsWith('.progress.json')) continue
    const [, name, kind] = m as unknown as [string, string, 'luks' | 'fscrypt']
    const path = join(stateDir, f)
    let j: JournalBase<string> | undefined
    try {
      j = loadJournal<JournalBase<string>>(path)
    } catch {
      continue
    }
    if (j === undefined || j.finished) continue
    const step = j.current ?? j.steps.find((s) => !j.completed.includes(s)) ?? null
    const progress = readProgress(progressFilePath(stateDir, name, kind))
    const at = `step ${step ?? '-'} (${j.completed.length + 1} of ${j.steps.length})`
    const moving =
      progress !== null && progress.state === 'running' && progress.totalBytes > 0
        ? `${progressLine({
            phase: progress.phase,
            doneBytes: progress.doneBytes,
            totalBytes: progress.totalBytes,
            rate: progress.bytesPerSecond ?? undefined,
            etaSeconds: progress.etaSeconds ?? undefined,
          })}; `
        : progress?.state === 'failed'
          ? `failed: ${progress.message ?? '?'}; `
          : ''
    out.push({
      name,
      kind,
      step,
      stepsDone: j.completed.length,
      steps: j.steps.length,
      progress,
      summary: `${moving}${at}`,
      journal: path,
    })
  }
  return out
}
