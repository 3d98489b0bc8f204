/**
 * Writing a new secret file (a recovered volume key, a recovery private key, an escrow export):
 * created exclusively with mode 0600, so an existing file is never overwritten and the bytes are
 * never readable by others, even for a moment; fsynced before returning.
 */
import { closeSync, constants, fsyncSync, openSync, unlinkSync, writeSync } from 'node:fs'
import { UnlockdError } from '../shared/errors.ts'

export function writeNewPrivateFile(path: string, data: Uint8Array | string): void {
  let fd: number
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code
    if (code === 'EEXIST') throw new UnlockdError('conflict', `${path} already exists; choose a new file name (it is never overwritten)`, { cause })
    throw new UnlockdError('config_invalid', `cannot create ${path}: ${code ?? 'error'}`, { cause })
  }
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
