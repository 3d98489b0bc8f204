/** Positional arguments of operator commands: exactly one host, approval or operator name. */
import { ACTION_ID_RE } from '../../shared/protocol/actions.ts'
import { APPROVAL_ID_RE } from '../../shared/protocol/messages.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import { usage } from '../../platform/cli.ts'

function one(positionals: string[], what: string, re: RegExp, hint: string): string {
  const v = positionals[0]
  if (v === undefined || positionals.length !== 1) usage(`expected exactly one ${what}`)
  if (!re.test(v)) usage(`${what} ${hint}`)
  return v
}

export const hostArg = (p: string[]): string =>
  one(p, 'host NAME', NAME_RE, 'must be 1-64 chars of a-z 0-9 _ . -')

export const approvalArg = (p: string[]): string =>
  one(
    p,
    'approval ID',
    APPROVAL_ID_RE,
    'must look like ap_ followed by 22 characters (see `unlockd approvals`)',
  )

/** An unlock approval (ap_...) or a quorum action (qa_...). */
export const decisionArg = (p: string[]): string =>
  one(
    p,
    'approval or action ID',
    new RegExp(`${APPROVAL_ID_RE.source}|${ACTION_ID_RE.source}`),
    'must look like ap_ or qa_ followed by 22 characters (see `unlockd approvals`)',
  )

export const operatorArg = (p: string[]): string =>
  one(p, 'operator NAME', NAME_RE, 'must be 1-64 chars of a-z 0-9 _ . -')
