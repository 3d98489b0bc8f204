/**
 * The one way operator commands read a TOTP code: from a terminal prompt, or the first line of
 * stdin when there is no terminal (`echo 123456 | unlockd approve ID`). `--code` still works for
 * now; a code is one-time and short-lived, but argv is visible to other users of the machine.
 */
import { TOTP_CODE_RE } from '../../shared/protocol/messages.ts'
import { ask, readStdinLine, usage, type CliIo, type Values } from '../../platform/cli.ts'

function checked(code: string): string {
  if (!TOTP_CODE_RE.test(code))
    usage('the TOTP code must be the 6 digits from your authenticator app')
  return code
}

/** A code the command cannot go without (approve, shred): asked for when not given. */
export async function readTotpCode(values: Values, io: CliIo): Promise<string> {
  const given = values['code'] as string | undefined
  if (given !== undefined) return checked(given)
  const code = io.interactive ? await ask('TOTP code: ') : await readStdinLine()
  if (code === '')
    usage(
      'a TOTP code is required: type the 6-digit code from your authenticator app at the prompt, or give it on stdin',
    )
  return checked(code)
}

/**
 * A code only some callers need (deny, operator changes: once you have TOTP yourself). Taken
 * from --code when given; never asked for, since an operator without TOTP has none to give.
 */
export function optionalTotpCode(values: Values): string | undefined {
  const given = values['code'] as string | undefined
  return given === undefined ? undefined : checked(given)
}
