/**
 * The one way operator commands read a TOTP code: from a terminal prompt, or the first line of
 * stdin when there is no terminal (`echo 123456 | unlockd approve ID`). Never from argv: the
 * process list shows arguments to every user of the machine.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { TOTP_CODE_RE } from '../../shared/protocol/messages.ts'
import { ask, readStdinLine, usage, type CliIo } from '../../platform/cli.ts'

/** Read the operator's current code (prompt or first line of stdin) and check its shape. */
export async function readTotpCode(io: CliIo): Promise<string> {
  const code = io.interactive ? await ask('TOTP code: ') : await readStdinLine()
  if (code === '')
    usage(
      'a TOTP code is required: type the 6-digit code from your authenticator app at the prompt, or give it on stdin',
    )
  if (!TOTP_CODE_RE.test(code))
    usage('the TOTP code must be the 6 digits from your authenticator app')
  return code
}

/**
 * Make a call that may need a code (a policy change is only asked for one when it loosens):
 * first without, and when the server answers `totp_required`, again with the code read here.
 */
export async function withCodeIfAsked<T>(
  io: CliIo,
  call: (totp?: string) => Promise<T>,
): Promise<T> {
  try {
    return await call()
  } catch (e) {
    if (!(e instanceof UnlockdError) || e.code !== 'totp_required') throw e
    if (io.interactive) io.stderr(`${e.message}\n`)
    return call(await readTotpCode(io))
  }
}
