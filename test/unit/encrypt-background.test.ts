/** The run lock of an encryption journal, and which runs the agent finishes in the background. */
import test, { type ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { acquireRunLock, runLockHolder, saveJournal } from '../../agent/encrypt/journal.ts'
import { backgroundRuns } from '../../agent/encrypt/background.ts'
import { OFFLINE_STEPS, ONLINE_STEPS, type LuksStep } from '../../agent/encrypt/plan.ts'
import type { LuksJournal } from '../../agent/encrypt/luks-inplace.ts'
import { bootId } from '../../agent/boot-id.ts'
import { throwsWithCode } from '../helpers/errors.ts'

function journal(name: string, over: Partial<LuksJournal>): LuksJournal {
  return {
    version: 1,
    kind: 'luks',
    name,
    device: `/dev/${name}`,
    isBlockDevice: true,
    mode: 'online',
    originalSize: 1 << 30,
    blockSize: 4096,
    targetBlocks: 1000,
    fsUuid: null,
    mountpoints: [],
    units: [],
    sealedKey: null,
    convSlot: null,
    luksUuid: null,
    steps: ONLINE_STEPS,
    completed: [],
    current: null,
    finished: false,
    startedAt: new Date().toISOString(),
    finishedAt: null,
    ...over,
  }
}

const upTo = (steps: LuksStep[], last: LuksStep): LuksStep[] =>
  steps.slice(0, steps.indexOf(last) + 1)

function liveChild(t: ExecutionContext): number {
  const c = spawn('sleep', ['60'], { stdio: 'ignore' })
  t.teardown(() => void c.kill('SIGKILL'))
  if (c.pid === undefined) throw new Error('no child')
  return c.pid
}

test('the online steps escrow the key and write crypttab before the volume goes back to work', (t) => {
  const at = (s: LuksStep): number => ONLINE_STEPS.indexOf(s)
  t.true(at('reencrypt-init') < at('enroll'))
  t.true(at('enroll') < at('start-units'))
  t.true(at('system-files') < at('remount'))
  t.true(at('start-units') < at('reencrypt-data'))
  t.true(at('reencrypt-data') < at('fallback-key'), 'no keyslot can be added during reencryption')
  t.false(ONLINE_STEPS.includes('drop-conversion-key'), 'the escrowed key is the conversion key')
  t.true(OFFLINE_STEPS.includes('drop-conversion-key'))
})

test('the run lock refuses a live holder of this boot and takes over a stale one', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'unlockd-lock-'))
  const j = join(dir, 'data.luks.json')
  const release = acquireRunLock(j)
  t.true(existsSync(`${j}.lock`))
  t.is(readFileSync(`${j}.lock`, 'utf8'), `${process.pid} ${bootId()}\n`)
  release()
  t.false(existsSync(`${j}.lock`))

  const pid = liveChild(t)
  writeFileSync(`${j}.lock`, `${pid} ${bootId()}\n`)
  t.is(runLockHolder(j), pid)
  throwsWithCode(t, () => acquireRunLock(j), 'conflict')

  writeFileSync(`${j}.lock`, `${pid} 00000000-0000-0000-0000-000000000000\n`)
  t.is(runLockHolder(j), undefined, 'a lock of an earlier boot is stale')
  acquireRunLock(j)()

  writeFileSync(`${j}.lock`, `999999999 ${bootId()}\n`)
  t.is(runLockHolder(j), undefined, 'a lock of a dead process is stale')
  const again = acquireRunLock(j)
  t.is(readFileSync(`${j}.lock`, 'utf8'), `${process.pid} ${bootId()}\n`)
  again()
})

test('the agent finishes only online runs past start-units that nobody holds', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'unlockd-bg-'))
  const save = (j: LuksJournal): void => saveJournal(join(dir, `${j.name}.luks.json`), j)
  save(
    journal('ready', { completed: upTo(ONLINE_STEPS, 'start-units'), current: 'reencrypt-data' }),
  )
  save(journal('early', { completed: upTo(ONLINE_STEPS, 'grow'), current: 'remount' }))
  save(
    journal('offline', {
      mode: 'offline',
      steps: OFFLINE_STEPS,
      completed: upTo(OFFLINE_STEPS, 'header-backup'),
    }),
  )
  save(journal('done', { completed: ONLINE_STEPS, finished: true }))
  save(journal('held', { completed: upTo(ONLINE_STEPS, 'start-units') }))
  writeFileSync(join(dir, 'held.luks.json.lock'), `${liveChild(t)} ${bootId()}\n`)
  writeFileSync(join(dir, 'ready.luks.progress.json'), '{}\n')
  t.deepEqual(
    backgroundRuns(dir).map((j) => j.name),
    ['ready'],
  )
})
