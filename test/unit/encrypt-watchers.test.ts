/**
 * The watchers of an encrypt run: progress goes to the local reporter, a progress file for
 * `unlockd status`, systemd STATUS= and the server (rate-limited); a server that fails never
 * stops the run; a run that never touched data reports nothing.
 */
import test from 'ava'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  runWatchers,
  progressFilePath,
  type EncryptionReport,
} from '../../agent/encrypt/watchers.ts'
import { conversionsInProgress } from '../../agent/encrypt/status.ts'
import type { Progress, Reporter } from '../../agent/encrypt/progress.ts'
import { encryptionSummary } from '../../shared/protocol/encryption.ts'

function dir(t: { teardown(fn: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'unlockd-watch-'))
  t.teardown(() => rmSync(d, { recursive: true, force: true }))
  return d
}

const quiet: Reporter = { update() {}, done() {} }
const p = (done: number, total = 1000): Progress => ({
  phase: 'encrypting',
  doneBytes: done,
  totalBytes: total,
  rate: 100,
  etaSeconds: (total - done) / 100,
})

test('reports start, rate-limited progress and done; status lines and progress file follow', async (t) => {
  const stateDir = dir(t)
  let clock = 0
  const sent: EncryptionReport[] = []
  const statuses: string[] = []
  const w = runWatchers({
    name: 'data',
    kind: 'luks',
    stateDir,
    local: quiet,
    send: async (r) => {
      sent.push(r)
    },
    status: async (s) => {
      statuses.push(s)
      return true
    },
    log: () => {},
    serverEveryMs: 5000,
    now: () => clock,
  })
  w.started(1000)
  for (let i = 1; i <= 20; i++) {
    clock += 1000
    w.reporter.update(p(i * 50))
    await new Promise((r) => setImmediate(r))
  }
  const file = JSON.parse(readFileSync(progressFilePath(stateDir, 'data', 'luks'), 'utf8'))
  t.is(file.state, 'running')
  t.is(file.doneBytes, 1000)
  t.is(statSync(progressFilePath(stateDir, 'data', 'luks')).mode & 0o777, 0o600)
  await w.finished()
  const events = sent.map((r) => r.event)
  t.is(events[0], 'started')
  t.is(events.at(-1), 'done')
  const progress = events.filter((e) => e === 'progress').length
  t.true(progress >= 2 && progress <= 4, `20 s of updates, one report per 5 s: ${progress}`)
  t.true(statuses.some((s) => s.startsWith('encrypting: ') && s.includes('%')))
  t.is(statuses.at(-1), 'encrypted data')
})

test('a failing server is logged once and never throws; failure is reported with its reason', async (t) => {
  const stateDir = dir(t)
  const logs: string[] = []
  let calls = 0
  const w = runWatchers({
    name: 'data',
    kind: 'fscrypt',
    stateDir,
    local: quiet,
    send: async () => {
      calls++
      throw new Error('connection refused')
    },
    log: (l) => logs.push(l),
    serverEveryMs: 0,
  })
  w.started(0)
  w.reporter.update(p(10))
  w.reporter.update(p(20))
  await w.failed(new Error('copy failed: disk full'))
  t.true(calls >= 2)
  t.is(logs.filter((l) => l.includes('could not report')).length, 1)
  const file = JSON.parse(readFileSync(progressFilePath(stateDir, 'data', 'fscrypt'), 'utf8'))
  t.is(file.state, 'failed')
  t.regex(file.message, /disk full/)
})

test('a run refused before it started reports nothing', async (t) => {
  const sent: EncryptionReport[] = []
  const w = runWatchers({
    name: 'data',
    kind: 'luks',
    stateDir: dir(t),
    local: quiet,
    send: async (r) => {
      sent.push(r)
    },
    log: () => {},
  })
  await w.failed(new Error('not ext4'))
  await w.finished()
  t.deepEqual(sent, [])
})

test('status lists unfinished journals with their last progress', (t) => {
  const stateDir = dir(t)
  const journal = (name: string, finished: boolean) => ({
    version: 1,
    name,
    steps: ['a', 'b', 'c'],
    completed: ['a'],
    current: 'b',
    finished,
    startedAt: 'x',
    finishedAt: null,
  })
  writeFileSync(join(stateDir, 'data.luks.json'), JSON.stringify(journal('data', false)))
  writeFileSync(join(stateDir, 'old.luks.json'), JSON.stringify(journal('old', true)))
  writeFileSync(
    progressFilePath(stateDir, 'data', 'luks'),
    JSON.stringify({
      state: 'running',
      phase: 'encrypting',
      doneBytes: 512,
      totalBytes: 1024,
      bytesPerSecond: null,
      etaSeconds: null,
    }),
  )
  const runs = conversionsInProgress(stateDir)
  t.deepEqual(
    runs.map((r) => [r.name, r.step, r.stepsDone]),
    [['data', 'b', 1]],
  )
  t.regex(runs[0]?.summary ?? '', /50\.0%.*step b \(2 of 3\)/)
  t.deepEqual(conversionsInProgress(join(stateDir, 'missing')), [])
})

test('the operator summary reads like a sentence', (t) => {
  const GiB = 1024 ** 3
  const view = {
    volume: 'data',
    kind: 'luks' as const,
    state: 'running' as const,
    phase: 'encrypting',
    doneBytes: Math.round(1.22 * GiB),
    totalBytes: Math.round(2.8 * GiB),
    bytesPerSecond: null,
    etaSeconds: 300,
    message: null,
    startedAt: 1,
    updatedAt: 2,
  }
  t.is(encryptionSummary(view), 'encrypting data 43% (1.2 GiB of 2.8 GiB, ETA 5m)')
  t.is(encryptionSummary({ ...view, state: 'done' }), 'encrypted')
  t.is(encryptionSummary({ ...view, state: 'failed', message: 'boom' }), 'encryption failed: boom')
})
