/**
 * agent/volumes/fscrypt.ts on real ext4 images, loop-mounted (root only). Each test makes and
 * mounts its own image; teardown unmounts it (lazily if something is still busy) and detaches
 * its loop device, even when the test fails.
 */
import test from 'ava'
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import {
  addKey,
  checkFilesystem,
  findMount,
  findMountpoint,
  getPolicy,
  keyStatus,
  removeKey,
  setPolicy,
} from '../../agent/volumes/fscrypt.ts'
import { rootTest } from '../helpers/root.ts'
import { mountExt4 } from '../helpers/ext4.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

const NEEDS = { bins: ['mkfs.ext4', 'mount', 'umount', 'losetup'] }

function key64(): Uint8Array {
  return new Uint8Array(randomBytes(64))
}

rootTest(
  'checkFilesystem accepts an empty directory on ext4 with encrypt',
  async (t) => {
    const fs = await mountExt4(t)
    const dir = join(fs.mnt, 'vault')
    await mkdir(dir)
    const target = await checkFilesystem(dir)
    t.deepEqual(target, {
      dir,
      mountpoint: fs.mnt,
      fstype: 'ext4',
      source: fs.dev,
      policy: undefined,
    })
    t.regex(fs.dev, /^\/dev\/loop\d+$/)
    t.is(await findMountpoint(join(dir, '.')), fs.mnt)
    t.is(await getPolicy(dir), undefined)
  },
  NEEDS,
)

rootTest(
  'a directory locks when its key is removed and reads back byte for byte when re-added',
  async (t) => {
    const fs = await mountExt4(t)
    const dir = join(fs.mnt, 'vault')
    await mkdir(dir)
    const key = key64()
    const keyCopy = Uint8Array.from(key)
    const id = await addKey(fs.mnt, key)
    t.regex(id, /^[0-9a-f]{32}$/)
    t.deepEqual(key, keyCopy, 'the caller keeps its key; only the internal copy is zeroed')
    t.is(await keyStatus(fs.mnt, id), 'present')
    await setPolicy(dir, id)
    t.is(await getPolicy(dir), id)

    const content = randomBytes(100_000)
    await writeFile(join(dir, 'secret.bin'), content)
    await mkdir(join(dir, 'sub'))
    t.is((await checkFilesystem(dir)).policy, id, 'an encrypted, non-empty directory is fine')

    t.is(await removeKey(fs.mnt, id), 'removed')
    t.is(await keyStatus(fs.mnt, id), 'absent')
    const names = await readdir(dir)
    t.is(names.length, 2)
    t.false(names.includes('secret.bin'), `names are ciphertext when locked: ${names.join(', ')}`)
    await t.throwsAsync(readFile(join(dir, 'secret.bin')), { code: 'ENOENT' })
    const create = await t.throwsAsync<NodeJS.ErrnoException>(writeFile(join(dir, 'new.txt'), 'x'))
    t.is(create?.errno, -126, 'ENOKEY: "Required key not available" (Node has no name for it)')

    // A wrong key has another identifier and opens nothing.
    const wrongId = await addKey(fs.mnt, key64())
    t.not(wrongId, id)
    await t.throwsAsync(readFile(join(dir, 'secret.bin')))
    t.is(await removeKey(fs.mnt, wrongId), 'removed')

    t.is(await addKey(fs.mnt, key), id, 'same key, same identifier')
    t.deepEqual((await readdir(dir)).sort(), ['secret.bin', 'sub'])
    t.true(content.equals(await readFile(join(dir, 'secret.bin'))))
    t.is(await removeKey(fs.mnt, id, { allUsers: true }), 'removed')
    t.is(await removeKey(fs.mnt, id), 'absent', 'removing twice is harmless')
  },
  NEEDS,
)

rootTest(
  'removing the key while a file is open is busy until it is closed',
  async (t) => {
    const fs = await mountExt4(t)
    const dir = join(fs.mnt, 'vault')
    await mkdir(dir)
    const id = await addKey(fs.mnt, key64())
    await setPolicy(dir, id)
    await writeFile(join(dir, 'held.txt'), 'held open')
    const fh = await open(join(dir, 'held.txt'), 'r')
    let closed = false
    t.teardown(async () => {
      if (!closed) await fh.close() // before the unmount, which runs after this (teardowns are LIFO)
    })
    t.is(await removeKey(fs.mnt, id), 'busy')
    t.is(await keyStatus(fs.mnt, id), 'incompletely_removed')
    t.is((await fh.readFile()).toString(), 'held open', 'an open file stays readable')
    await fh.close()
    closed = true
    t.is(await removeKey(fs.mnt, id), 'removed')
    t.is(await keyStatus(fs.mnt, id), 'absent')
  },
  NEEDS,
)

rootTest(
  'a non-empty directory cannot be encrypted, with a sentence that says what to do',
  async (t) => {
    const fs = await mountExt4(t)
    const dir = join(fs.mnt, 'full')
    await mkdir(dir)
    await writeFile(join(dir, 'a.txt'), 'a')
    const expected = `directory ${dir} is not empty; fscrypt can only encrypt an empty directory: move its files out, enroll, move them back`
    const check = await rejectsWithCode(t, checkFilesystem(dir), 'volume_invalid')
    t.is(check?.message, expected)
    const id = await addKey(fs.mnt, key64())
    const set = await rejectsWithCode(t, setPolicy(dir, id), 'volume_invalid')
    t.is(set?.message, expected)
  },
  NEEDS,
)

rootTest(
  'ext4 without the encrypt feature is fscrypt_unsupported with the tune2fs command',
  async (t) => {
    const fs = await mountExt4(t, { encrypt: false })
    const dir = join(fs.mnt, 'vault')
    await mkdir(dir)
    const err = await rejectsWithCode(t, checkFilesystem(dir), 'fscrypt_unsupported')
    t.is(
      err?.message,
      `${fs.mnt} (ext4 on ${fs.dev}) has no 'encrypt' feature; enable it with: tune2fs -O encrypt ${fs.dev} (unmounted)`,
    )
    await rejectsWithCode(t, addKey(fs.mnt, key64()), 'fscrypt_unsupported')
  },
  NEEDS,
)

rootTest(
  'tmpfs is fscrypt_unsupported',
  async (t) => {
    const dir = await mkdtemp('/dev/shm/unlockd-test-')
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const mount = await findMount(dir)
    t.is(mount.fstype, 'tmpfs')
    const err = await rejectsWithCode(t, checkFilesystem(dir), 'fscrypt_unsupported')
    t.regex(err?.message ?? '', /does not support fscrypt/)
  },
  NEEDS,
)

rootTest(
  'bad inputs: short key, bad identifier, missing directory',
  async (t) => {
    const fs = await mountExt4(t)
    await rejectsWithCode(t, addKey(fs.mnt, new Uint8Array(32)), 'fscrypt_failed')
    await t.throwsAsync(keyStatus(fs.mnt, 'xyz'), { instanceOf: TypeError })
    await t.throwsAsync(setPolicy(fs.mnt, 'ABCDEF'), { instanceOf: TypeError })
    await rejectsWithCode(t, checkFilesystem(join(fs.mnt, 'nope')), 'volume_invalid')
    const id = await addKey(fs.mnt, key64())
    await rejectsWithCode(t, setPolicy(join(fs.mnt, 'nope'), id), 'volume_invalid')
  },
  NEEDS,
)

test('findMount picks the longest mount point prefix', async (t) => {
  t.is(await findMountpoint('/'), '/')
  t.is(await findMountpoint('/proc/self'), '/proc')
  t.is((await findMount('/proc/self')).fstype, 'proc')
})
