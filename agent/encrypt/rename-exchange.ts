/**
 * renameat2(2) with RENAME_EXCHANGE through koffi (libc), the way agent/volumes/fscrypt.ts calls
 * ioctl: swaps two paths on one filesystem in one atomic step, so at every moment each name
 * holds one complete tree.
 */
import type Koffi from 'koffi'
import { UnlockdError } from '../../shared/errors.ts'

const AT_FDCWD = -100
const RENAME_EXCHANGE = 2

type Fn = (oldPath: string, newPath: string) => { rc: number; errno: number }
let fn: Promise<Fn> | undefined

async function load(): Promise<Fn> {
  const koffi: typeof Koffi = (await import('koffi')).default
  let lib: ReturnType<typeof koffi.load>
  try {
    lib = koffi.load('libc.so.6')
  } catch {
    lib = koffi.load('libc.so')
  }
  const renameat2 = lib.func(
    'int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)',
  )
  return (a, b) => {
    const rc = renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) as number
    return { rc, errno: rc < 0 ? koffi.errno() : 0 }
  }
}

export async function exchangePaths(a: string, b: string): Promise<void> {
  fn ??= load()
  const r = (await fn)(a, b)
  if (r.rc < 0)
    throw new UnlockdError(
      'fscrypt_failed',
      `renameat2(RENAME_EXCHANGE) of ${a} and ${b} failed: errno ${r.errno} (needs Linux 3.15+ and both paths on one filesystem)`,
    )
}
