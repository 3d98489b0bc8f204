/** Reading a secret (passphrase) from a file, a systemd credential, the environment, or a prompt. */
import { readFileSync } from 'node:fs'
import { UnlockdError } from '../../shared/errors.ts'
import type { CliIo } from './io.ts'
import { promptHidden } from './prompt.ts'

/** Read a secret: from a file (trailing newline trimmed), an env var, or an interactive prompt. */
export async function readSecret(o: {
  file?: string | undefined
  envName?: string
  io: CliIo
  prompt?: string
  confirm?: boolean
}): Promise<string> {
  if (o.file) {
    try {
      return readFileSync(o.file, 'utf8').replace(/\r?\n$/, '')
    } catch (cause) {
      throw new UnlockdError('config_invalid', `cannot read ${o.file}`, { cause })
    }
  }
  const credDir = o.io.env['CREDENTIALS_DIRECTORY']
  if (credDir && o.envName === 'UNLOCKD_PASSPHRASE') {
    try {
      return readFileSync(`${credDir}/unlockd-passphrase`, 'utf8').replace(/\r?\n$/, '')
    } catch {
      /* no credential: fall through */
    }
  }
  const fromEnv = o.envName ? o.io.env[o.envName] : undefined
  if (fromEnv) return fromEnv
  if (!o.io.interactive || !o.prompt)
    throw new UnlockdError(
      'keystore_locked',
      `no ${o.prompt ?? 'secret'} given (use a file option${o.envName ? ` or ${o.envName}` : ''})`,
    )
  const a = await promptHidden(o.prompt)
  if (o.confirm && (await promptHidden('Repeat: ')) !== a)
    throw new UnlockdError('usage', 'the two entries differ')
  return a
}
