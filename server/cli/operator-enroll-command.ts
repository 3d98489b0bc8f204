/**
 * `unlockd operator enroll`: redeem a one-time enrollment code and receive your own API token
 * and TOTP secret (a new operator), or your new TOTP secret (after a reset by another operator,
 * which also needs your own API token from UNLOCKD_TOKEN / UNLOCKD_TOKEN_FILE). The code is
 * read from a prompt or the first line of stdin, never argv.
 */
import { existsSync } from 'node:fs'
import { resolve } from 'node:path'
import { writeFileAtomic } from '../../platform/atomic-file.ts'
import { ask, EXIT, output, readStdinLine, usage, type Command } from '../../platform/cli.ts'
import { errorFromResponse } from '../../shared/client/transport.ts'
import { OPERATOR_ENROLL_CODE_RE, parseOperatorSecrets } from '../../shared/protocol/messages.ts'
import { showSecrets } from './approval-commands.ts'
import { CLIENT_OPTIONS, serverTarget } from './operator-client.ts'

const FILE_OPTIONS = ['token-out', 'totp-out'] as const

export const operatorEnroll: Command = {
  name: 'operator enroll',
  summary: 'Redeem a one-time enrollment code: your own API token and TOTP secret, shown once.',
  usage: 'unlockd operator enroll [--token-out FILE] [--totp-out FILE] [--no-qr] [--json]',
  description:
    'The code (oe_…) comes from the operator who ran `operator add` or `operator totp` for you; it is asked for on the terminal, or read from the first line of stdin (never an argument). A new operator needs only the code and gets an API token and a TOTP secret. After a reset by another operator, run it with your own API token configured (UNLOCKD_TOKEN_FILE): you get a new TOTP secret. --token-out and --totp-out write them to new 0600 files instead of showing them, for automation. Then register a passkey with `unlockd operator passkey NAME`.',
  examples: [
    'unlockd operator enroll --url https://escrow.example:8443',
    'unlockd operator enroll --token-out ~/.config/unlockd/token < alice.code',
  ],
  options: {
    ...CLIENT_OPTIONS,
    'token-out': { type: 'string' },
    'totp-out': { type: 'string' },
    'no-qr': { type: 'boolean' },
  },
  async run({ values, io }) {
    for (const o of FILE_OPTIONS) {
      const f = values[o] as string | undefined
      if (f !== undefined && existsSync(f)) usage(`--${o} ${f} already exists; give a new path`)
    }
    const target = serverTarget(values, io)
    const code = (io.interactive ? await ask('Enrollment code: ') : await readStdinLine()).trim()
    if (!OPERATOR_ENROLL_CODE_RE.test(code))
      usage('the enrollment code must be the oe_… code you were given (at the prompt or on stdin)')
    const res = await target.transport({
      method: 'POST',
      path: '/v1/operator/enroll',
      body: { code },
      ...(target.token ? { bearer: target.token } : {}),
    })
    if (res.status !== 201) throw errorFromResponse(res, 'POST /operator/enroll')
    const r = parseOperatorSecrets(res.body)
    const tokenOut = values['token-out'] as string | undefined
    const totpOut = values['totp-out'] as string | undefined
    if (tokenOut !== undefined && r.token) writeFileAtomic(resolve(tokenOut), `${r.token}\n`, 0o600)
    if (totpOut !== undefined) writeFileAtomic(resolve(totpOut), `${r.otpauthUri}\n`, 0o600)
    if (tokenOut === undefined && totpOut === undefined) {
      showSecrets(io, values, r, 'Enrolled operator')
      return EXIT.ok
    }
    const { token, otpauthUri, ...rest } = r
    const shown = {
      ...rest,
      ...(token === undefined ? {} : tokenOut === undefined ? { token } : { tokenFile: tokenOut }),
      ...(totpOut === undefined ? { otpauthUri } : { totpFile: totpOut }),
    }
    output(io, values, shown, () => {
      const lines = [`Enrolled operator ${r.operator.name}.`]
      if (token !== undefined)
        lines.push(
          tokenOut === undefined
            ? `API token: ${token}`
            : `API token written to ${tokenOut} (0600).`,
        )
      lines.push(
        totpOut === undefined
          ? `TOTP secret: ${otpauthUri}`
          : `TOTP secret written to ${totpOut} (0600); import it into your authenticator app, then delete the file.`,
      )
      return lines.join('\n') + '\n'
    })
    return EXIT.ok
  },
}
