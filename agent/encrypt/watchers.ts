/**
 * Everyone who watches an `unlockd encrypt` run, fed from the engine's one progress stream:
 * the terminal or `--json` reporter, systemd (`STATUS=` through sd-notify, when run by a unit),
 * a 0600 progress file beside the journal that `unlockd status` reads, and the escrow server
 * (signed start, progress at most every `serverEveryMs`, done and failed reports).
 *
 * Reporting never stops the conversion: a failed send is logged once and the run goes on.
 */
import { join } from 'node:path'
import type { EncryptionEvent, EncryptionPayload } from '../../shared/protocol/encryption.ts'
import { describeError } from '../../shared/errors.ts'
import { ensurePrivateDir, writeFileAtomic } from '../../platform/atomic-file.ts'
import { progressLine, type Progress, type Reporter } from './progress.ts'

export type EncryptionReport = Omit<EncryptionPayload, 'v' | 'host' | 'nonce' | 'iat'>

/** What `unlockd status` reads: the last progress of a run, rewritten every second or so. */
export interface ProgressFile {
  name: string
  kind: 'luks' | 'fscrypt'
  state: 'running' | 'done' | 'failed'
  phase: string
  doneBytes: number
  totalBytes: number
  bytesPerSecond: number | null
  etaSeconds: number | null
  message: string | null
  updatedAt: string
}

export function progressFilePath(stateDir: string, name: string, kind: 'luks' | 'fscrypt'): string {
  return join(stateDir, `${name}.${kind}.progress.json`)
}

export interface WatcherOptions {
  name: string
  kind: 'luks' | 'fscrypt'
  stateDir: string
  /** The terminal / JSON reporter. */
  local: Reporter
  /** Sends one report to the escrow server; undefined when the host is not enrolled. */
  send?: ((r: EncryptionReport) => Promise<void>) | undefined
  /** sd-notify STATUS= (no-op outside systemd). */
  status?: ((text: string) => Promise<boolean>) | undefined
  log: (line: string) => void
  serverEveryMs?: number
  now?: () => number
}

export interface RunWatchers {
  /** The reporter to give the engine. */
  reporter: Reporter
  /** The engine is about to touch data (first run or a resume). */
  started(totalBytes: number): void
  /** The run finished; waits for the last report. */
  finished(): Promise<void>
  /** The run failed with `err`; waits for the report. */
  failed(err: unknown): Promise<void>
}

export function runWatchers(o: WatcherOptions): RunWatchers {
  const now = o.now ?? Date.now
  const every = o.serverEveryMs ?? 5000
  const file = progressFilePath(o.stateDir, o.name, o.kind)
  let last: Progress = {
    phase: 'starting',
    doneBytes: 0,
    totalBytes: 0,
    rate: undefined,
    etaSeconds: undefined,
  }
  let started = false
  let lastLocalAt = -Infinity
  let lastServerAt = -Infinity
  let inFlight: Promise<void> = Promise.resolve()
  let busy = false
  let warned = false

  const report = (event: EncryptionEvent, message: string | null): EncryptionReport => ({
    volume: o.name,
    kind: o.kind,
    event,
    phase: last.phase.slice(0, 40),
    doneBytes: Math.max(0, Math.floor(last.doneBytes)),
    totalBytes: Math.max(0, Math.floor(last.totalBytes)),
    bytesPerSecond: last.rate === undefined ? null : Math.max(0, last.rate),
    etaSeconds: last.etaSeconds === undefined ? null : Math.min(1e9, Math.max(0, last.etaSeconds)),
    message,
  })

  const send = (r: EncryptionReport): void => {
    const s = o.send
    if (s === undefined) return
    busy = true
    // One at a time, in order: a slow server delays reports, never the conversion.
    inFlight = inFlight
      .then(() => s(r))
      .catch((err: unknown) => {
        if (!warned)
          o.log(`warning: could not report progress to the server: ${describeError(err)}`)
        warned = true
      })
      .finally(() => {
        busy = false
      })
  }

  const writeFile = (state: ProgressFile['state'], message: string | null): void => {
    const doc: ProgressFile = {
      name: o.name,
      kind: o.kind,
      state,
      phase: last.phase,
      doneBytes: last.doneBytes,
      totalBytes: last.totalBytes,
      bytesPerSecond: last.rate ?? null,
      etaSeconds: last.etaSeconds ?? null,
      message,
      updatedAt: new Date(now()).toISOString(),
    }
    try {
      ensurePrivateDir(o.stateDir)
      writeFileAtomic(file, JSON.stringify(doc) + '\n', 0o600)
    } catch {
      /* status is informative; the journal is what matters */
    }
  }

  const start = (): void => {
    if (started) return
    started = true
    lastServerAt = now()
    writeFile('running', null)
    void o.status?.(`encrypting ${o.name}: starting`)
    send(report('started', null))
  }

  return {
    reporter: {
      update(p) {
        o.local.update(p)
        last = p
        start()
        const t = now()
        if (t - lastLocalAt >= 1000) {
          lastLocalAt = t
          writeFile('running', null)
          void o.status?.(progressLine(p))
        }
        if (t - lastServerAt >= every && !busy) {
          lastServerAt = t
          send(report('progress', null))
        }
      },
      done() {
        o.local.done()
      },
    },
    started(totalBytes) {
      if (!started && totalBytes > 0) last = { ...last, totalBytes }
      start()
    },
    async finished() {
      if (!started) return
      last = { ...last, doneBytes: last.totalBytes, etaSeconds: 0 }
      writeFile('done', null)
      void o.status?.(`encrypted ${o.name}`)
      send(report('done', null))
      await inFlight
    },
    async failed(err) {
      if (!started) return
      const message = describeError(err).slice(0, 500)
      writeFile('failed', message)
      void o.status?.(`encrypting ${o.name} failed: ${message}`)
      send(report('failed', message))
      await inFlight
    },
  }
}
