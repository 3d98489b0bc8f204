/**
 * `unlockd operator passkey NAME`: a one-time link for registering your own passkey on the
 * phone page. Needs your own API token and your current TOTP code, read from the terminal
 * prompt or stdin (never argv, where other users of the machine could see it).
 */
import * as v from 'valibot'
import {
  EXIT,
  ask,
  fmtTime,
  output,
  readStdinLine,
  usage,
  type Command,
} from '../../platform/cli.ts'
import { TOTP_CODE_RE } from '../../shared/protocol/messages.ts'
import { parseWith } from '../../shared/protocol/validate.ts'
import { CLIENT_OPTIONS, operatorClient } from './operator-client.ts'
import { operatorArg } from './positionals.ts'

const PasskeyLinkSchema = v.object({
  operator: v.string(),
  url: v.pipe(v.string(), v.url()),
  expiresAt: v.number(),
})
const parsePasskeyLink = (x: unknown): v.InferOutput<typeof PasskeyLinkSchema> =>
  parseWith(PasskeyLinkSchema, x, 'passkey link', 'protocol_invalid')

export const operatorPasskey: Command = {
  name: 'operator passkey',
  summary: 'Print a one-time link that registers your passkey for the phone approval page.',
  usage: 'unlockd operator passkey NAME [--json]  (TOTP code on the prompt or stdin)',
  description:
    'Open the link on your phone (it works once and for ten minutes) and create the passkey there. Only your own operator: the command needs your API token and your current TOTP code, which is asked for on the terminal or read from stdin. The server needs publicUrl set; the passkey works only on that origin.',
  examples: ['unlockd operator passkey alice', 'echo 123456 | unlockd operator passkey alice'],
  options: { ...CLIENT_OPTIONS },
  positionals: true,
  async run({ values, positionals, io }) {
    const name = operatorArg(positionals)
    const code = (io.interactive ? await ask('TOTP code: ') : await readStdinLine()).trim()
    if (!TOTP_CODE_RE.test(code))
      usage('type the 6-digit code from your authenticator app at the prompt, or give it on stdin')
    const r = await operatorClient(values, io).call(
      'POST',
      `/operators/${name}/passkey`,
      parsePasskeyLink,
      { code },
    )
    output(io, values, r, () =>
      [
        `Passkey registration link for ${r.operator} (works once, until ${fmtTime(r.expiresAt)}):`,
        '',
        `  ${r.url}`,
        '',
        'Open it on your phone and tap "Create passkey".',
      ].join('\n'),
    )
    return EXIT.ok
  },
}
