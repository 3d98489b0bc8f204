/** Migration of a non-empty directory into an fscrypt v2 directory (see encryptFscrypt). */
import { UnlockdError } from '../../shared/errors.ts'
import type { PublicOkpJwk } from '../../shared/crypto/keys.ts'
import type { Reporter } from './progress.ts'

export interface FscryptEncryptOptions {
  dir: string
  name: string
  units: string[]
  configDir?: string | undefined
  stateDir: string
  recoveryKey?: PublicOkpJwk | undefined
  dryRun: boolean
  enableEncryptFeature: boolean
  log: (line: string) => void
  progress: Reporter
}

export interface FscryptEncryptResult {
  name: string
  dir: string
  status: 'planned' | 'converted' | 'unchanged'
  resumed: boolean
  message: string
}

export function encryptFscrypt(o: FscryptEncryptOptions): Promise<FscryptEncryptResult> {
  return Promise.reject(
    new UnlockdError('internal', `fscrypt migration of ${o.dir} is not built yet`),
  )
}
