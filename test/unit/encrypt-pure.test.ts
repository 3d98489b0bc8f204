/** Pure parts of `unlockd encrypt`: DEVICE[:NAME] parsing, crypttab/fstab edits, progress lines. */
import test from 'ava'
import { parseTargetSpec } from '../../agent/encrypt/spec.ts'
import { withCrypttabLine, withFstabSource } from '../../agent/encrypt/system-files.ts'
import {
  parseProgressJson,
  parseProgressText,
  progressLine,
  progressReporter,
} from '../../agent/encrypt/progress.ts'

const none = (): boolean => false

test('DEVICE[:NAME]: a final :NAME is the name, colons inside the device path stay', (t) => {
  t.deepEqual(parseTargetSpec('/dev/vdb:data', '--luks', none), {
    target: '/dev/vdb',
    name: 'data',
  })
  t.deepEqual(parseTargetSpec('/dev/disk/by-path/pci-0000:00:05.0:data', '--luks', none), {
    target: '/dev/disk/by-path/pci-0000:00:05.0',
    name: 'data',
  })
  // The whole path exists: its ":0" tail is part of it, the name comes from the path.
  const byPath = '/dev/disk/by-path/pci-0000:00:05.0-scsi-0:0:1:0'
  t.deepEqual(
    parseTargetSpec(byPath, '--luks', (p) => p === byPath),
    {
      target: byPath,
      name: 'pci-0000-00-05.0-scsi-0-0-1-0',
    },
  )
  // A tail that is not a volume name (upper case, '/') is part of the path.
  t.is(parseTargetSpec('/srv/a:B', '--fscrypt', none).target, '/srv/a:B')
  t.is(parseTargetSpec('/dev/vdb', '--luks', none).name, 'vdb')
  t.throws(() => parseTargetSpec('vdb:data', '--luks', none), { message: /absolute path/ })
})

test('crypttab gets one line per name; fstab lines of the old filesystem mount the mapping', (t) => {
  const ct = withCrypttabLine('# comment\n', 'data', 'abcd-1234')
  t.is(ct, '# comment\ndata UUID=abcd-1234 none luks,discard\n')
  t.is(withCrypttabLine(ct, 'data', 'abcd-1234'), ct, 'idempotent')
  const fstab =
    '# /etc/fstab\nUUID=old-fs /srv ext4 defaults 0 2\n/dev/vdc /mnt ext4 defaults 0 2\n'
  t.is(
    withFstabSource(fstab, 'data', ['/dev/vdb', 'UUID=old-fs']),
    '# /etc/fstab\n/dev/mapper/data /srv ext4 defaults 0 2\n/dev/vdc /mnt ext4 defaults 0 2\n',
  )
})

test('cryptsetup progress: JSON and text lines', (t) => {
  const p = parseProgressJson(
    '{"device":"d.img","device_bytes":"134217728","device_size":"612368384","speed":"233040932","eta_ms":"2123","time_ms":"503"}',
    'encrypting',
  )
  t.like(p, { doneBytes: 134217728, totalBytes: 612368384, rate: 233040932, etaSeconds: 2.123 })
  t.is(parseProgressJson('not json', 'x'), undefined)
  const q = parseProgressText(
    'Progress:  25.0%, ETA 01:05, 100 MiB written, speed 50.0 MiB/s',
    'encrypting',
  )
  t.like(q, { doneBytes: 100 * 1048576, totalBytes: 400 * 1048576, etaSeconds: 65 })
  t.regex(
    progressLine(p as NonNullable<typeof p>),
    /^encrypting: 128\.0 MiB \/ 584\.0 MiB \(21\.9%\), 222\.2 MiB\/s, ETA 00:02$/,
  )
})

test('JSON progress: at most one line per second, and the last state at the end', (t) => {
  let now = 0
  const out: string[] = []
  const r = progressReporter(
    'json',
    (s) => out.push(s),
    () => now,
  )
  const at = (ms: number, done: number): void => {
    now = ms
    r.update({
      phase: 'copying',
      doneBytes: done,
      totalBytes: 10,
      rate: undefined,
      etaSeconds: undefined,
    })
  }
  at(0, 1)
  at(300, 2)
  at(900, 3)
  at(1000, 4)
  at(1500, 5)
  r.done()
  t.deepEqual(
    out.map((l) => JSON.parse(l).doneBytes),
    [1, 4, 5],
  )
})
