/**
 * A dataset for "nothing lost" tests of in-place encryption: a few hundred small files in nested
 * directories, a sparse file, hard links, symlinks (one dangling), xattrs, a fifo, and one large
 * file (100 MiB by default). `snapshot` records, per path, the type, mode, owner, size, mtime,
 * content hash, link target, xattrs and hard-link group, so two trees can be compared exactly.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import {
  chown,
  link,
  lstat,
  mkdir,
  open,
  readdir,
  readlink,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises'
import { join, relative } from 'node:path'
import { mustRun, tool } from './root.ts'

export interface SeedOptions {
  smallFiles?: number
  bigMiB?: number
}

function pseudoRandom(seed: number, n: number): Buffer {
  const out = Buffer.alloc(n)
  let x = seed >>> 0 || 1
  for (let i = 0; i < n; i++) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    out[i] = x & 0xff
  }
  return out
}

export async function seedDataset(root: string, o: SeedOptions = {}): Promise<void> {
  const n = o.smallFiles ?? 300
  for (let i = 0; i < n; i++) {
    const d = join(root, `d${i % 7}`, `s${i % 3}`)
    await mkdir(d, { recursive: true })
    const f = join(d, `f${i}.dat`)
    await writeFile(f, pseudoRandom(i + 1, (i * 397) % 9000), { mode: i % 2 ? 0o640 : 0o600 })
    if (i % 50 === 0) await chown(f, 1000 + i, 1000 + (i % 4))
  }
  // A sparse file: 64 MiB long, 3 small extents.
  const sparse = await open(join(root, 'sparse.img'), 'w', 0o644)
  for (const off of [0, 20 * 1024 * 1024, 64 * 1024 * 1024 - 4096])
    await sparse.write(pseudoRandom(off + 7, 4096), 0, 4096, off)
  await sparse.close()
  // The large file, written in 1 MiB chunks.
  const big = await open(join(root, 'big.bin'), 'w', 0o600)
  for (let i = 0; i < (o.bigMiB ?? 100); i++) await big.write(pseudoRandom(0x9e37 + i, 1 << 20))
  await big.close()
  await link(join(root, 'd0', 's0', 'f0.dat'), join(root, 'hardlink-a'))
  await link(join(root, 'd0', 's0', 'f0.dat'), join(root, 'd1', 'hardlink-b'))
  await symlink('d2/s2/f2.dat', join(root, 'symlink-rel'))
  await symlink('/nonexistent/target', join(root, 'symlink-dangling'))
  await mustRun('mkfifo', ['-m', '0620', join(root, 'fifo')])
  await mustRun('setfattr', ['-n', 'user.purpose', '-v', 'encrypt-test', join(root, 'big.bin')])
  await mustRun('setfattr', ['-n', 'user.empty', '-v', '', join(root, 'd3')])
  await utimes(join(root, 'd4'), new Date('2001-02-03T04:05:06Z'), new Date('2001-02-03T04:05:06Z'))
}

export interface Entry {
  type: string
  mode: number
  uid: number
  gid: number
  size: number
  mtimeMs: number
  sha256: string | null
  target: string | null
  xattrs: string
  /** Index of the first path with the same inode (hard links), or null. */
  linkGroup: string | null
  /** Allocated 512-byte blocks, for the sparse file. */
  blocks: number
}

async function hashFile(path: string): Promise<string> {
  const h = createHash('sha256')
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer)
  return h.digest('hex')
}

async function xattrsOf(path: string): Promise<string> {
  const r = await tool('getfattr', ['-h', '-d', '-m', '-', '--absolute-names', path])
  return r.stdout
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'))
    .sort()
    .join('\n')
}

/** Every path under `root` (not `root` itself unless `withRoot`) and its metadata. */
export async function snapshot(
  root: string,
  exclude: string[] = ['lost+found'],
): Promise<Record<string, Entry>> {
  const out: Record<string, Entry> = {}
  const inodes = new Map<number, string>()
  const walk = async (dir: string): Promise<void> => {
    for (const name of (await readdir(dir)).sort()) {
      const p = join(dir, name)
      const rel = relative(root, p)
      if (exclude.includes(rel)) continue
      const st = await lstat(p)
      const type = st.isFile()
        ? 'file'
        : st.isDirectory()
          ? 'dir'
          : st.isSymbolicLink()
            ? 'symlink'
            : st.isFIFO()
              ? 'fifo'
              : 'other'
      let linkGroup: string | null = null
      if (st.isFile() && st.nlink > 1) {
        linkGroup = inodes.get(st.ino) ?? rel
        inodes.set(st.ino, linkGroup)
      }
      out[rel] = {
        type,
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        size: type === 'dir' ? 0 : st.size,
        mtimeMs: Math.floor(st.mtimeMs),
        sha256: st.isFile() ? await hashFile(p) : null,
        target: st.isSymbolicLink() ? await readlink(p) : null,
        xattrs: type === 'symlink' ? '' : (await xattrsOf(p)).replace(/^# file:.*$/m, ''),
        linkGroup,
        blocks: name === 'sparse.img' ? st.blocks : 0,
      }
      if (st.isDirectory()) await walk(p)
    }
  }
  await walk(root)
  return out
}

export const DATASET_NEEDS = ['setfattr', 'getfattr', 'mkfifo']
