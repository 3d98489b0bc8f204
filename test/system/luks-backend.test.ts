/**
 * agent/volumes/luks.ts against real LUKS image files (no device-mapper needed: everything
 * but a real `open` works on a plain file). Every key is watched: no spawned process may carry
 * one in its argv or environment.
 */
import test, { type ExecutionContext } from 'ava'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { chmod, mkdir, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { observeSpawns, type SpawnEvent } from '../../agent/exec.ts'
import {
  FAST_TEST_PBKDF,
  PBKDF_ENV,
  addKeyslot,
  closeVolume,
  eraseLuks,
  exportToken,
  importToken,
  inspectLuks,
  killSlot,
  openVolume,
  removeToken,
  testKey,
} from '../../agent/volumes/luks.ts'
import { isUnlockdError } from '../../shared/errors.ts'
import { luksMetadata, makeLuksImage } from '../helpers/luks.ts'
import { findBin, mustRun, rootTest } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

const NEEDS = { bins: ['cryptsetup'] }

// Spy on every spawn of the exec layer, and on what the kernel actually got (/proc/PID).
interface Seen extends SpawnEvent {
  cmdline: Buffer | undefined
  environ: Buffer | undefined
}
const seen: Seen[] = []
const keys: Uint8Array[] = []
observeSpawns((e) => {
  const read = (f: string): Buffer | undefined => {
    try {
      return e.pid === undefined ? undefined : readFileSync(`/proc/${e.pid}/${f}`)
    } catch {
      return undefined // already exited
    }
  }
  seen.push({ ...e, cmdline: read('cmdline'), environ: read('environ') })
})

/** A passphrase-like key (printable, so a leak into argv would be found as text), remembered for the argv check. */
function newKey(): Uint8Array {
  const k = new Uint8Array(Buffer.from(randomBytes(33).toString('base64'), 'utf8'))
  keys.push(k)
  return k
}

/** A binary key with newlines inside and at the end: proves keys are read as binary, not lines. */
function binaryKey(): Uint8Array {
  const k = new Uint8Array(randomBytes(64))
  k[10] = 0x0a
  k[63] = 0x0a
  keys.push(k)
  return k
}

function leaks(haystack: Buffer, key: Uint8Array): boolean {
  const k = Buffer.from(key)
  return (
    haystack.includes(k) ||
    haystack.includes(k.toString('hex')) ||
    haystack.includes(k.toString('base64'))
  )
}

function assertNoKeyIn(
  t: ExecutionContext,
  events: readonly Seen[],
  ks: readonly Uint8Array[],
): void {
  for (const e of events) {
    const argv = Buffer.from([e.cmd, ...e.args].join('\0'), 'utf8')
    for (const k of ks) {
      t.false(leaks(argv, k), `key found in argv of ${e.cmd} ${e.args.join(' ')}`)
      if (e.cmdline !== undefined)
        t.false(leaks(e.cmdline, k), `key found in /proc/${e.pid}/cmdline`)
      if (e.environ !== undefined)
        t.false(leaks(e.environ, k), `key found in /proc/${e.pid}/environ`)
    }
  }
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(path))
    .digest('hex')
}

rootTest(
  'inspectLuks reads version, UUID, keyslots and tokens of a LUKS2 image',
  async (t) => {
    const dir = await tempDir(t)
    const img = await makeLuksImage(dir, newKey())
    const info = await inspectLuks(img)
    t.is(info.version, 2)
    t.is(info.uuid, (await mustRun('cryptsetup', ['luksUUID', img])).trim())
    t.deepEqual(info.keyslots, [0])
    t.deepEqual(info.tokens, [])
  },
  NEEDS,
)

rootTest(
  'addKeyslot adds a working key and the old key still works',
  async (t) => {
    const dir = await tempDir(t)
    const backups = await tempDir(t)
    const k1 = newKey()
    const k2 = binaryKey()
    const img = await makeLuksImage(dir, k1)
    const slot = await addKeyslot(img, k1, k2, { pbkdf: 'fast', backupDir: backups })
    t.is(slot, 1)
    t.deepEqual((await inspectLuks(img)).keyslots, [0, 1])
    t.true(await testKey(img, k2))
    t.true(await testKey(img, k2, 1))
    t.false(await testKey(img, k2, 0), 'the new key opens only its own slot')
    t.true(await testKey(img, k1))
    t.true(await testKey(img, k1, 0))
    // The fast PBKDF was used for the new slot.
    const meta = await luksMetadata(img)
    t.like(meta.keyslots['1'], { kdf: { type: 'pbkdf2', iterations: 1000 } })
    t.deepEqual(await readdir(backups), [], 'the header backup was shredded and removed')
    // The key bytes given by the caller are left intact (the caller owns them).
    t.is(k2[63], 0x0a)
  },
  NEEDS,
)

rootTest(
  'addKeyslot honours an explicit slot and refuses a used one',
  async (t) => {
    const dir = await tempDir(t)
    const k1 = newKey()
    const k3 = newKey()
    const img = await makeLuksImage(dir, k1)
    t.is(await addKeyslot(img, k1, k3, { pbkdf: 'fast', slot: 5, backupDir: dir }), 5)
    t.true(await testKey(img, k3, 5))
    await rejectsWithCode(t, addKeyslot(img, k1, newKey(), { pbkdf: 'fast', slot: 5 }), 'conflict')
  },
  NEEDS,
)

rootTest(
  'UNLOCKD_LUKS_PBKDF=fast selects the test PBKDF when no option is given',
  async (t) => {
    const dir = await tempDir(t)
    const k1 = newKey()
    const img = await makeLuksImage(dir, k1)
    const old = process.env[PBKDF_ENV]
    process.env[PBKDF_ENV] = 'fast'
    t.teardown(() => {
      if (old === undefined) delete process.env[PBKDF_ENV]
      else process.env[PBKDF_ENV] = old
    })
    const slot = await addKeyslot(img, k1, newKey())
    const meta = await luksMetadata(img)
    t.like(meta.keyslots[String(slot)], {
      kdf: { type: FAST_TEST_PBKDF[1], iterations: Number(FAST_TEST_PBKDF[3]) },
    })
  },
  { ...NEEDS, serial: true },
)

rootTest(
  'testKey is false for a wrong key',
  async (t) => {
    const dir = await tempDir(t)
    const img = await makeLuksImage(dir, newKey())
    t.false(await testKey(img, newKey()))
    t.false(await testKey(img, newKey(), 0))
    t.false(await testKey(img, newKey(), 7), 'an inactive slot opens with nothing')
  },
  NEEDS,
)

rootTest(
  'a LUKS1 image is volume_invalid with the convert command',
  async (t) => {
    const dir = await tempDir(t)
    const k = newKey()
    const img = await makeLuksImage(dir, k, { type: 'luks1' })
    const err = await rejectsWithCode(t, inspectLuks(img), 'volume_invalid')
    t.regex(err?.message ?? '', /is LUKS1/)
    t.regex(err?.message ?? '', new RegExp(`cryptsetup convert --type luks2 ${img}`))
    await rejectsWithCode(t, addKeyslot(img, k, newKey(), { pbkdf: 'fast' }), 'volume_invalid')
  },
  NEEDS,
)

rootTest(
  'a plain file or a missing path is volume_invalid',
  async (t) => {
    const dir = await tempDir(t)
    const plain = join(dir, 'plain.img')
    await writeFile(plain, '')
    await truncate(plain, 4 * 1024 * 1024)
    const err = await rejectsWithCode(t, inspectLuks(plain), 'volume_invalid')
    t.regex(err?.message ?? '', /is not a LUKS volume/)
    const missing = await rejectsWithCode(t, inspectLuks(join(dir, 'nope.img')), 'volume_invalid')
    t.regex(missing?.message ?? '', /does not exist/)
    await rejectsWithCode(t, testKey(plain, newKey()), 'volume_invalid')
    await t.throwsAsync(
      inspectLuks('--help'),
      { instanceOf: TypeError },
      'an option-looking device is a caller bug',
    )
  },
  NEEDS,
)

rootTest(
  'a wrong existing key is luks_failed and leaves the header unchanged',
  async (t) => {
    const dir = await tempDir(t)
    const img = await makeLuksImage(dir, newKey())
    const before = await sha256(img)
    const err = await rejectsWithCode(
      t,
      addKeyslot(img, newKey(), newKey(), { pbkdf: 'fast', backupDir: dir }),
      'luks_failed',
    )
    t.is(err?.message, `the existing key does not open ${img}`)
    t.is(await sha256(img), before)
    t.deepEqual((await readdir(dir)).sort(), ['disk.img'])
  },
  NEEDS,
)

rootTest(
  'eraseLuks wipes every keyslot',
  async (t) => {
    const dir = await tempDir(t)
    const k = newKey()
    const img = await makeLuksImage(dir, k)
    await addKeyslot(img, k, newKey(), { pbkdf: 'fast' })
    await eraseLuks(img)
    const meta = await luksMetadata(img)
    t.deepEqual(meta.keyslots, {})
    t.false(await testKey(img, k))
    const plain = join(dir, 'plain.img')
    await writeFile(plain, Buffer.alloc(1024 * 1024))
    await rejectsWithCode(t, eraseLuks(plain), 'volume_invalid')
  },
  NEEDS,
)

rootTest(
  'killSlot revokes one key, is idempotent, and guards the last slot',
  async (t) => {
    const dir = await tempDir(t)
    const k1 = newKey()
    const k2 = newKey()
    const img = await makeLuksImage(dir, k1)
    const slot = await addKeyslot(img, k1, k2, { pbkdf: 'fast' })
    t.true(await killSlot(img, slot))
    t.false(await testKey(img, k2))
    t.true(await testKey(img, k1))
    t.false(await killSlot(img, slot), 'an empty slot is already revoked')
    await rejectsWithCode(t, killSlot(img, 0), 'destructive_needs_force')
    t.true(await testKey(img, k1))
    t.true(await killSlot(img, 0, { force: true }))
    t.deepEqual((await inspectLuks(img)).keyslots, [])
  },
  NEEDS,
)

rootTest(
  'tokens: import, list, export, replace and remove',
  async (t) => {
    const dir = await tempDir(t)
    const img = await makeLuksImage(dir, newKey())
    const token = { type: 'unlockd', keyslots: ['0'], url: 'https://escrow.example/v1', v: 1 }
    t.is(await importToken(img, token), 0)
    t.is(await importToken(img, { type: 'other', keyslots: [] }), 1)
    const info = await inspectLuks(img)
    t.deepEqual(
      info.tokens.map((x) => [x.id, x.type, x.keyslots]),
      [
        [0, 'unlockd', [0]],
        [1, 'other', []],
      ],
    )
    t.deepEqual(await exportToken(img, 0), token)
    t.is(await exportToken(img, 9), undefined)
    await rejectsWithCode(t, importToken(img, token, { tokenId: 0 }), 'conflict')
    await importToken(img, { ...token, v: 2 }, { tokenId: 0, replace: true })
    t.like(await exportToken(img, 0), { v: 2 })
    t.true(await removeToken(img, 1))
    t.false(await removeToken(img, 1))
    t.deepEqual(
      (await inspectLuks(img)).tokens.map((x) => x.id),
      [0],
    )
  },
  NEEDS,
)

rootTest(
  'openVolume checks the key; a real open needs device-mapper',
  async (t) => {
    const dir = await tempDir(t)
    const k = newKey()
    const img = await makeLuksImage(dir, k)
    await openVolume(img, 'unlockd-test', k, { test: true })
    const wrong = await rejectsWithCode(
      t,
      openVolume(img, 'unlockd-test', newKey(), { test: true }),
      'luks_failed',
    )
    t.is(wrong?.message, `the key does not open ${img}`)
    const name = `unlockd-test-${process.pid}`
    // The kernel lists device-mapper in /proc/misc when dm is built in or loaded.
    if (readFileSync('/proc/misc', 'utf8').includes('device-mapper')) {
      t.teardown(() => closeVolume(name))
      await openVolume(img, name, k, { test: false })
      t.true(existsSync(`/dev/mapper/${name}`))
      await closeVolume(name)
      t.false(existsSync(`/dev/mapper/${name}`))
    } else {
      t.log('no device-mapper on this machine: checking the error of a real open instead')
      const err = await rejectsWithCode(t, openVolume(img, name, k, { test: false }), 'luks_failed')
      t.regex(err?.message ?? '', /device-mapper is not available/)
    }
  },
  NEEDS,
)

rootTest(
  'no key appears in the argv or environment of any cryptsetup run',
  async (t) => {
    const dir = await tempDir(t)
    const k1 = newKey()
    const k2 = binaryKey()
    const img = await makeLuksImage(dir, k1)
    const start = seen.length
    await addKeyslot(img, k1, k2, { pbkdf: 'fast' })
    await testKey(img, k2)
    await openVolume(img, 'argv-check', k1, { test: true })
    const mine = seen.slice(start).filter((e) => e.args.includes(img))
    t.true(mine.some((e) => e.args[0] === 'luksAddKey'))
    t.true(
      mine.some((e) => e.cmdline !== undefined),
      'at least one child was still running to be read from /proc',
    )
    assertNoKeyIn(t, mine, [k1, k2])
  },
  NEEDS,
)

// A fake cryptsetup in front of PATH makes luksAddKey corrupt the header and fail, to prove the
// backup is restored. Serial: it changes PATH for the whole process.
async function withFakeCryptsetup(
  t: ExecutionContext,
  dir: string,
  failRestore: boolean,
): Promise<void> {
  const real = findBin('cryptsetup')
  if (real === undefined) throw new Error('cryptsetup not found')
  const bin = join(dir, 'fake-bin')
  await mkdir(bin, { mode: 0o700 })
  const script = [
    '#!/bin/sh',
    '# test double: luksAddKey scribbles over the header and fails; everything else is real',
    'if [ "$1" = luksAddKey ]; then',
    '  for a; do prev=$last; last=$a; done',
    '  dd if=/dev/urandom of="$prev" bs=4096 count=2 conv=notrunc 2>/dev/null',
    '  echo "fake failure" >&2; exit 1',
    'fi',
    failRestore
      ? 'if [ "$1" = luksHeaderRestore ]; then echo "fake restore failure" >&2; exit 1; fi'
      : '',
    `exec ${real} "$@"`,
    '',
  ].join('\n')
  await writeFile(join(bin, 'cryptsetup'), script)
  await chmod(join(bin, 'cryptsetup'), 0o755)
  const oldPath = process.env['PATH']
  process.env['PATH'] = `${bin}:${oldPath ?? ''}`
  t.teardown(() => {
    process.env['PATH'] = oldPath
  })
}

rootTest(
  'a failed luksAddKey restores the header from the backup',
  async (t) => {
    const dir = await tempDir(t)
    const backups = await tempDir(t)
    const k1 = newKey()
    const img = await makeLuksImage(dir, k1)
    const before = await sha256(img)
    await withFakeCryptsetup(t, dir, false)
    const err = await rejectsWithCode(
      t,
      addKeyslot(img, k1, newKey(), { pbkdf: 'fast', backupDir: backups }),
      'luks_failed',
    )
    t.regex(err?.message ?? '', /fake failure/)
    t.is(await sha256(img), before, 'header restored byte for byte')
    t.true(await testKey(img, k1))
    t.deepEqual(await readdir(backups), [])
  },
  { ...NEEDS, serial: true },
)

rootTest(
  'when the restore fails too, the backup is kept and the error says how to restore',
  async (t) => {
    const dir = await tempDir(t)
    const backups = await tempDir(t)
    const k1 = newKey()
    const img = await makeLuksImage(dir, k1)
    await withFakeCryptsetup(t, dir, true)
    const err = await rejectsWithCode(
      t,
      addKeyslot(img, k1, newKey(), { pbkdf: 'fast', backupDir: backups }),
      'luks_failed',
    )
    const backup = isUnlockdError(err) ? err.details?.['backup'] : undefined
    t.is(typeof backup, 'string')
    t.true(existsSync(String(backup)))
    t.regex(err?.message ?? '', /cryptsetup luksHeaderRestore --header-backup-file/)
    await rm(join(String(backup), '..'), { recursive: true, force: true })
  },
  { ...NEEDS, serial: true },
)

rootTest(
  'a missing cryptsetup says which package to install',
  async (t) => {
    const oldPath = process.env['PATH']
    process.env['PATH'] = '/nonexistent'
    t.teardown(() => {
      process.env['PATH'] = oldPath
    })
    const err = await rejectsWithCode(t, inspectLuks('/dev/null'), 'luks_failed')
    t.regex(err?.message ?? '', /^cryptsetup not found: install cryptsetup-bin/)
  },
  { ...NEEDS, serial: true },
)

test.after('no key reached argv or the environment in any test of this file', (t) => {
  t.pass() // with --match or without root this file may have spawned nothing
  assertNoKeyIn(t, seen, keys)
})
