/**
 * A loop-mounted ext4 image for fscrypt tests (root only): 64 MiB, with the 'encrypt' feature
 * unless told otherwise; unmounted (lazily if busy) and detached in teardown even on failure.
 */
import type { ExecutionContext } from 'ava'
import { mkdir, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { findMount } from '../../agent/volumes/fscrypt.ts'
import { mustRun, tool } from './root.ts'
import { tempDir } from './tmp.ts'

export const EXT4_NEEDS = { bins: ['mkfs.ext4', 'mount', 'umount', 'losetup'] }

export async function detach(img: string): Promise<void> {
  const r = await tool('losetup', ['-j', img])
  for (const line of r.stdout.split('\n')) {
    const dev = line.split(':')[0]
    if (dev !== undefined && dev.startsWith('/dev/loop')) await tool('losetup', ['-d', dev])
  }
}

export interface Fs {
  img: string
  mnt: string
  /** The loop device, as /proc/self/mountinfo shows it. */
  dev: string
}

/** A 64 MiB ext4 image (with the 'encrypt' feature unless told otherwise), loop-mounted. */
export async function mountExt4(
  t: ExecutionContext,
  opts: { encrypt: boolean } = { encrypt: true },
): Promise<Fs> {
  const dir = await tempDir(t)
  const img = join(dir, 'fs.img')
  const mnt = join(dir, 'mnt')
  await writeFile(img, '', { mode: 0o600 })
  await truncate(img, 64 * 1024 * 1024)
  await mustRun('mkfs.ext4', ['-q', '-F', ...(opts.encrypt ? ['-O', 'encrypt'] : []), img])
  await mkdir(mnt)
  await mustRun('mount', ['-o', 'loop', img, mnt])
  t.teardown(async () => {
    if ((await tool('umount', [mnt])).code !== 0) await tool('umount', ['-l', mnt])
    await detach(img) // mount -o loop autoclears, this is for a failed or lazy unmount
  })
  return { img, mnt, dev: (await findMount(mnt)).source }
}
