/**
 * Crash-safe file writes for both deployables (server keystore, agent config and host keys):
 * write a temp file in the same directory with the final mode, fsync it, rename it over the
 * target, fsync the directory. A crash leaves either the old or the new file, never a torn one.
 * `platform/` holds the few Node-specific helpers that `server/` and `agent/` share; `shared/`
 * stays pure.
 */
import {
  closeSync,
  constants,
  fsyncSync,
  openSync,
  renameSync,
  unlinkSync,
  writeSync,
  mkdirSync,
  statSync,
  chmodSync,
  readFileSync,
  existsSync,
} from 'node:fs'
import { dirname, basename, join } from 'node:path'
import { randomBytes } from 'node:crypto'

export function writeFileAtomic(path: string, data: Uint8Array | string, mode = 0o600): void {
  const dir = dirname(path)
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`)
  writeExclusive(tmp, data, mode)
  chmodSync(tmp, mode) // umask may have narrowed it; never widen beyond `mode`
  renameSync(tmp, path)
  fsyncDir(dir)
}

/**
 * Create `path` (which must not exist: O_EXCL, plus `extraFlags`), write all of `data`, fsync.
 * On a write failure the partial file is removed. The one place that writes file bytes.
 */
export function writeExclusive(
  path: string,
  data: Uint8Array | string,
  mode: number,
  extraFlags = 0,
): void {
  const fd = openSync(
    path,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | extraFlags,
    mode,
  )
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data
    let off = 0
    while (off < buf.byteLength) off += writeSync(fd, buf, off)
    fsyncSync(fd)
  } catch (err) {
    closeSync(fd)
    unlinkSync(path)
    throw err
  }
  closeSync(fd)
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY)
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

/** Create a directory with `mode` (default 0700) or tighten an existing one we own. */
export function ensurePrivateDir(dir: string, mode = 0o700): void {
  mkdirSync(dir, { recursive: true, mode })
  const st = statSync(dir)
  if ((st.mode & 0o077) !== 0 && (mode & 0o077) === 0) chmodSync(dir, mode)
}

/** Overwrite a file's bytes with zeros, fsync, then unlink it (best effort on CoW filesystems). */
export function shredFile(path: string): void {
  if (!existsSync(path)) return
  try {
    const size = statSync(path).size
    const fd = openSync(path, constants.O_WRONLY)
    try {
      const zeros = Buffer.alloc(Math.min(size, 1 << 20))
      let off = 0
      while (off < size) off += writeSync(fd, zeros, 0, Math.min(zeros.byteLength, size - off), off)
      fsyncSync(fd)
    } finally {
      closeSync(fd)
    }
  } finally {
    unlinkSync(path)
    fsyncDir(dirname(path))
  }
}

export function readFileIfExists(path: string): Buffer | undefined {
  try {
    return readFileSync(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
}
