/**
 * Writing a new secret file (a recovered volume key, a recovery private key, an escrow export):
 * created exclusively with mode 0600, so an existing file is never overwritten and the bytes are
 * never readable by others, even for a moment; fsynced before returning.
 */
import { constants } from 'node:fs'
import { UnlockdError } from '../shared/errors.ts'
import { writeExclusive } from './atomic-file.ts'

export function writeNewPrivateFile(path: string, data: Uint8Array | string): void {
  try {
    writeExclusive(path, data, 0o600, constants.O_NOFOLLOW)
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code
    if (code === 'EEXIST')
      throw new UnlockdError(
        'conflict',
        `${path} already exists; choose a new file name (it is never overwritten)`,
        { cause },
      )
    throw new UnlockdError('config_invalid', `cannot create ${path}: ${code ?? 'error'}`, { cause })
  }
}
