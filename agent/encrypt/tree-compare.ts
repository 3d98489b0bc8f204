/**
 * Walk two trees and compare what a copy must keep: type, mode, owner, size, mtime, symlink
 * target, hard-link groups and the SHA-256 of every regular file. Returns the first differences
 * (empty when the trees match). xattrs and ACLs are copied by `cp -a`; Node cannot read them, so
 * they are not compared here.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, readdir, readlink } from 'node:fs/promises'
import { join } from 'node:path'

interface Item {
  desc: string
  hash?: string
}

async function hashFile(p: string): Promise<string> {
  const h = createHash('sha256')
  for await (const c of createReadStream(p)) h.update(c as Buffer)
  return h.digest('hex')
}

async function describe(root: string, onBytes: (n: number) => void): Promise<Map<string, Item>> {
  const out = new Map<string, Item>()
  const inodes = new Map<number, string>()
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(join(root, rel))).sort()
    for (const name of names) {
      const r = rel === '' ? name : `${rel}/${name}`
      const p = join(root, r)
      const st = await lstat(p, { bigint: true })
      const kind = st.isFile()
        ? 'f'
        : st.isDirectory()
          ? 'd'
          : st.isSymbolicLink()
            ? 'l'
            : st.isFIFO()
              ? 'p'
              : st.isCharacterDevice()
                ? `c${st.rdev}`
                : st.isBlockDevice()
                  ? `b${st.rdev}`
                  : 's'
      let group = ''
      if (st.isFile() && st.nlink > 1n) {
        group = inodes.get(Number(st.ino)) ?? r
        inodes.set(Number(st.ino), group)
      }
      const target = st.isSymbolicLink() ? await readlink(p) : ''
      // Directory mtimes change while the tree is written; cp -a restores them at the end.
      const desc = `${kind} ${st.mode} ${st.uid}:${st.gid} ${kind === 'd' ? 0 : st.size} ${st.mtimeNs} ${target} ${group}`
      const item: Item = { desc }
      if (st.isFile()) {
        item.hash = await hashFile(p)
        onBytes(Number(st.size))
      }
      out.set(r, item)
      if (st.isDirectory()) await walk(r)
    }
  }
  await walk('')
  return out
}

export async function compareTrees(
  a: string,
  b: string,
  onBytes: (n: number) => void = () => {},
  limit = 10,
): Promise<string[]> {
  const [x, y] = [await describe(a, onBytes), await describe(b, onBytes)]
  const diffs: string[] = []
  for (const [k, v] of x) {
    const w = y.get(k)
    if (w === undefined) diffs.push(`${k}: missing from the copy`)
    else if (w.desc !== v.desc) diffs.push(`${k}: metadata differs (${v.desc} / ${w.desc})`)
    else if (w.hash !== v.hash) diffs.push(`${k}: content differs`)
    if (diffs.length >= limit) return diffs
  }
  for (const k of y.keys()) if (!x.has(k)) diffs.push(`${k}: only in the copy`)
  return diffs.slice(0, limit)
}

/** Total bytes of regular files under `root` (for progress). */
export async function treeBytes(root: string): Promise<number> {
  let n = 0
  await describeSizes(root, (s) => (n += s))
  return n
}

async function describeSizes(dir: string, add: (n: number) => void): Promise<void> {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) await describeSizes(p, add)
    else if (e.isFile()) add(Number((await lstat(p)).size))
  }
}
