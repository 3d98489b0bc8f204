/** Staging a root conversion: journal, partition-table backup, sealed secrets, the job file. */
import test from 'ava'
import { readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { tempDir } from '../helpers/tmp.ts'
import { generateHostKeys } from '../../shared/crypto/keys.ts'
import { loadJournal } from '../../agent/encrypt/journal.ts'
import { factsFromRecord } from '../../agent/encrypt/root-facts.ts'
import { planRoot } from '../../agent/encrypt/root-plan.ts'
import {
  loadJob,
  openFallback,
  stageRoot,
  type RootJournal,
  type StageOptions,
} from '../../agent/encrypt/root-stage.ts'
import {
  grubDefaults,
  withBootFstab,
  withRootCrypttab,
  withoutRootCrypttab,
} from '../../agent/encrypt/root-system.ts'

const FIX = join(import.meta.dirname, '..', 'fixtures', 'root-layouts')

function planOf(name: string) {
  const record = JSON.parse(readFileSync(join(FIX, `${name}.json`), 'utf8')) as Record<
    string,
    unknown
  >
  const plan = planRoot({
    facts: factsFromRecord(record),
    enrolled: true,
    hasFallback: true,
    luksUuid: '11111111-2222-4333-8444-555555555555',
    bootFsUuid: '66666666-7777-4888-9999-aaaaaaaaaaaa',
  })
  return { record, plan }
}

test('staging writes a 0600 journal with the table backup and secrets sealed to the host', async (t) => {
  const dir = await tempDir(t)
  const keys = await generateHostKeys()
  const { record, plan } = planOf('debian-12-genericcloud-bios')
  const calls: string[] = []
  const o: StageOptions = {
    plan,
    record,
    keys,
    fallback: new TextEncoder().encode('correct horse'),
    stateDir: join(dir, 'state'),
    jobPath: join(dir, 'root-encrypt.json'),
    dumpTable: async (disk) => {
      calls.push(`dump ${disk}`)
      return `label: gpt\ndevice: ${disk}\n`
    },
    rebuildInitramfs: async () => {
      calls.push('initramfs')
    },
    runStep: async (s) => {
      calls.push(`step ${s}`)
    },
    log: () => {},
  }
  const r = await stageRoot(o)
  t.false(r.resumed)
  t.deepEqual(calls, ['dump /dev/vda', 'initramfs'])
  t.is(statSync(r.journal).mode & 0o777, 0o600)
  const j = loadJournal<RootJournal>(r.journal)
  if (!j || !j.sealedFallback) return t.fail('no journal')
  t.deepEqual(j.completed, ['partition-table-backup', 'stage'])
  t.is(j.steps.length, plan.stages.flatMap((s) => s.steps).length)
  t.is(readFileSync(j.tableBackupPath, 'utf8'), 'label: gpt\ndevice: /dev/vda\n')
  t.is(new TextDecoder().decode(await openFallback(j.sealedFallback, keys)), 'correct horse')
  t.false(readFileSync(r.journal, 'utf8').includes('correct horse'))
  const job = loadJob(r.job)
  t.is(job?.luksUuid, plan.luksUuid)
  t.is(job?.journal, r.journal)
  // Again: already staged, nothing is redone.
  calls.length = 0
  t.true((await stageRoot(o)).resumed)
  t.deepEqual(calls, [])
})

test('separate /boot: crypttab and GRUB defaults are written at staging', async (t) => {
  const dir = await tempDir(t)
  const { record, plan } = planOf('ubuntu-24.04-cloud')
  const calls: string[] = []
  await stageRoot({
    plan,
    record,
    keys: await generateHostKeys(),
    fallback: new TextEncoder().encode('x'),
    stateDir: join(dir, 'state'),
    jobPath: join(dir, 'job.json'),
    dumpTable: async () => 'label: gpt\n',
    rebuildInitramfs: async () => {
      calls.push('initramfs')
    },
    runStep: async (s) => {
      calls.push(s)
    },
    log: () => {},
  })
  t.deepEqual(calls, ['crypttab', 'grub-config', 'initramfs'])
})

test('crypttab, fstab and GRUB text for the root volume', (t) => {
  const ct = withRootCrypttab('# <target> <source>\ndata UUID=d none luks\n', 'L')
  t.is(ct, '# <target> <source>\ndata UUID=d none luks\nroot UUID=L none luks,discard,initramfs\n')
  t.is(withRootCrypttab(ct, 'L'), ct, 'idempotent')
  t.is(withoutRootCrypttab(ct, 'L'), '# <target> <source>\ndata UUID=d none luks\n')
  const fstab = 'PARTUUID=p / ext4 rw 0 1\nUUID=E /boot/efi vfat umask=0077 0 1\n'
  const nf = withBootFstab(fstab, 'B')
  t.is(nf, `${fstab}UUID=B /boot ext4 defaults,nodev,nosuid 0 2\n`)
  t.is(withBootFstab(nf, 'B'), nf)
  t.regex(grubDefaults(), /^GRUB_DISABLE_LINUX_PARTUUID=true$/m)
  t.regex(grubDefaults(), /^GRUB_FORCE_PARTUUID=$/m)
})
