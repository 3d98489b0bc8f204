/**
 * What the agent last did to each volume, for `unlockd status` and the journal's one-line
 * diagnostics: kept in a small JSON file under the runtime directory (tmpfs, gone at reboot).
 * No secrets in it.
 */
import { join } from 'node:path'
import { ensurePrivateDir, readFileIfExists, writeFileAtomic } from '../platform/atomic-file.ts'

export interface VolumeState {
  state: 'unlocked' | 'failed' | 'waiting' | 'shredded'
  at: number
  /** One line: why it failed or what it waits for. */
  reason: string | null
  code: string | null
}
export interface RunState {
  volumes: Record<string, VolumeState>
  lastError: { at: number; code: string; message: string } | null
}

export function runDir(env: Record<string, string | undefined> = process.env): string {
  return env['UNLOCKD_RUN_DIR'] ?? '/run/unlockd'
}

export function readRunState(dir = runDir()): RunState {
  const raw = readFileIfExists(join(dir, 'state.json'))
  if (!raw) return { volumes: {}, lastError: null }
  try {
    const s = JSON.parse(raw.toString('utf8')) as RunState
    if (typeof s === 'object' && s && typeof s.volumes === 'object') return s
  } catch {
    /* a torn or foreign file is just "no state" */
  }
  return { volumes: {}, lastError: null }
}

export function updateRunState(patch: (s: RunState) => void, dir = runDir()): void {
  try {
    ensurePrivateDir(dir, 0o755)
    const s = readRunState(dir)
    patch(s)
    writeFileAtomic(join(dir, 'state.json'), JSON.stringify(s, null, 2) + '\n', 0o644)
  } catch {
    /* status is best effort: never fail an unlock because /run is read-only */
  }
}
