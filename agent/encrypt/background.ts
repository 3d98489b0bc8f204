/**
 * The agent's part of an online LUKS2 conversion: once `unlockd encrypt` has put the volume back
 * to work (its journal has passed `start-units`), the data phase needs nobody. If the command
 * dies there (killed, crash, reboot), the agent service finishes the run: at start, right after
 * it unlocked the volume from escrow, and every `everyMs` while it runs. A run held by a live
 * process (the command itself) is left alone; a failed run is retried with a growing pause.
 * Progress goes where the command sends it: STATUS=, the progress file, the escrow server.
 */
import { readdirSync } from 'node:fs'
import { join } from 'node:path'
import { describeError } from '../../shared/errors.ts'
import { loadConfig, loadKeys, type ConfigDir } from '../config-dir.ts'
import { reportEncryptionTo, sleep } from '../escrow.ts'
import { loadJournal, runLockHolder } from './journal.ts'
import type { LuksJournal } from './luks-inplace.ts'
import { progressReporter } from './progress.ts'
import { runWatchers } from './watchers.ts'

/** Online runs whose remaining steps are the background ones, not held by a live process. */
export function backgroundRuns(stateDir: string): LuksJournal[] {
  let names: string[]
  try {
    names = readdirSync(stateDir)
  } catch {
    return []
  }
  const out: LuksJournal[] = []
  for (const f of names.sort()) {
    if (!f.endsWith('.luks.json')) continue
    const path = join(stateDir, f)
    let j: LuksJournal | undefined
    try {
      j = loadJournal<LuksJournal>(path)
    } catch {
      continue
    }
    if (j === undefined || j.finished || j.kind !== 'luks' || j.mode !== 'online') continue
    if (!j.completed.includes('start-units')) continue
    if (runLockHolder(path) !== undefined) continue
    out.push(j)
  }
  return out
}

export interface BackgroundOptions {
  configDir: ConfigDir
  stateDir: string
  log: (line: string) => void
  signal: AbortSignal
  status?: (text: string) => Promise<boolean>
  /** How often to look for runs to finish (default 30 s). */
  everyMs?: number
}

/** Finish one run; true when it completed. */
async function finishRun(o: BackgroundOptions, j: LuksJournal): Promise<boolean> {
  const config = loadConfig(o.configDir)
  const keys = loadKeys(o.configDir)
  const send =
    config !== undefined && keys !== undefined
      ? (r: Parameters<typeof reportEncryptionTo>[3]) =>
          reportEncryptionTo(o.configDir, config, keys, r)
      : undefined
  const w = runWatchers({
    name: j.name,
    kind: 'luks',
    stateDir: o.stateDir,
    local: progressReporter('quiet', () => {}),
    send,
    status: o.status,
    log: o.log,
  })
  const { encryptLuks } = await import('./luks-inplace.ts')
  o.log(`finishing the online conversion of ${j.device} (${j.name}) in the background`)
  try {
    const r = await encryptLuks({
      device: j.device,
      name: j.name,
      units: j.units,
      configDir: o.configDir.dir,
      stateDir: o.stateDir,
      dryRun: false,
      log: (l) => o.log(`${j.name}: ${l}`),
      progress: w.reporter,
      onStart: (total) => w.started(total),
    })
    if (r.status === 'converted') {
      await w.finished()
      o.log(`${j.device} is LUKS2 volume ${j.name}: the data is encrypted`)
    }
    return true
  } catch (err) {
    await w.failed(err)
    o.log(`the conversion of ${j.name} stopped: ${describeError(err)}; trying again later`)
    return false
  }
}

export async function resumeInBackground(o: BackgroundOptions): Promise<void> {
  const every = o.everyMs ?? 30_000
  const failures = new Map<string, { count: number; next: number }>()
  while (!o.signal.aborted) {
    for (const j of backgroundRuns(o.stateDir)) {
      if (o.signal.aborted) return
      const f = failures.get(j.name)
      if (f !== undefined && Date.now() < f.next) continue
      if (await finishRun(o, j)) failures.delete(j.name)
      else {
        const count = (f?.count ?? 0) + 1
        failures.set(j.name, {
          count,
          next: Date.now() + Math.min(3_600_000, every * 2 ** count),
        })
      }
    }
    await sleep(every, o.signal)
  }
}
