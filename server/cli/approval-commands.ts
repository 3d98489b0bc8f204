/**
 * Operator commands for human approval: `approvals`, `approve`, `deny`, and operator
 * management (`operator add|list|remove|totp`; `operator enroll` is ./operator-enroll-command.ts). TOTP codes are one-time 6-digit values, read by
 * ./totp-code.ts from a prompt or stdin (never argv); API tokens never go in argv (UNLOCKD_TOKEN / UNLOCKD_TOKEN_FILE).
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { resolve } from 'node:path'
import { writeFileAtomic } from '../../platform/atomic-file.ts'
import {
  parseApprovalList,
  parseApprovalView,
  parseOperatorEnrollment,
  parseOperatorList,
  parseOperatorSecrets,
  type ApprovalView,
  type OperatorEnrollment,
  type OperatorSecrets,
} from '../../shared/protocol/messages.ts'
import { parseRemovedOperator } from '../../shared/protocol/admin-replies.ts'
import { formatDuration } from '../../shared/util/duration.ts'
import {
  EXIT,
  fmtTime,
  formatTable,
  output,
  usage,
  type CliIo,
  type Command,
  type Values,
} from '../../platform/cli.ts'
import { parseActionList, parseActionView, type ActionView } from '../../shared/protocol/actions.ts'
import { ACTION_OPTION, CLIENT_OPTIONS, operatorClient } from './operator-client.ts'
import { decisionArg, operatorArg } from './positionals.ts'
import { readTotpCode } from './totp-code.ts'

/** Your own reset answers with secrets; another operator's with an enrollment code. */
function parseFactorReset(x: unknown): OperatorSecrets | OperatorEnrollment {
  return typeof x === 'object' && x !== null && 'enrollment' in x
    ? parseOperatorEnrollment(x)
    : parseOperatorSecrets(x)
}

function describe(a: ApprovalView): string {
  switch (a.state) {
    case 'pending':
      return `${a.id}: pending, ${a.approvedBy.length} of ${a.required} approvals (${a.approvedBy.join(', ') || 'none'})\n`
    case 'approved':
      return `${a.id}: approved by ${a.approvedBy.join(', ')}; ${a.host} unlocks at its next poll\n`
    case 'denied':
      return `${a.id}: denied${a.reason ? ` (${a.reason})` : ''}; ${a.host} will not unlock\n`
    default:
      return `${a.id}: ${a.state}\n`
  }
}

function describeAction(a: ActionView): string {
  switch (a.state) {
    case 'pending':
      return `${a.id}: ${a.summary}: pending, ${a.approvedBy.length} of ${a.required} approvals (${a.approvedBy.join(', ')})\n`
    case 'approved':
      return `${a.id}: ${a.summary}: approved by ${a.approvedBy.join(', ')}; ${a.requestedBy} collects the result with --action ${a.id}\n`
    case 'done':
      return `${a.id}: ${a.summary}: done, approved by ${a.approvedBy.join(', ')}\n`
    case 'failed':
      return `${a.id}: ${a.summary}: approved by ${a.approvedBy.join(', ')} but failed: ${a.reason ?? 'unknown error'}\n`
    case 'denied':
      return `${a.id}: ${a.summary}: denied${a.reason ? ` (${a.reason})` : ''}\n`
    default:
      return `${a.id}: ${a.summary}: ${a.state}\n`
  }
}

const isAction = (id: string): boolean => id.startsWith('qa_')

export const approvalsList: Command = {
  name: 'approvals',
  summary:
    'List what waits for approval: unlock requests, and loosening actions that need a quorum.',
  usage: 'unlockd approvals [--all] [--json]',
  description:
    'Pending unlock requests (ap_...: host, volumes, source, boot id, rule) and pending quorum actions (qa_...: a policy relaxation, resume, escrow export, operator or key change that needs k operators), oldest first; both are approved with `unlockd approve ID`. --all adds decided and expired ones. --json prints one array: unlock requests, then actions (which carry a `kind`).',
  examples: ['unlockd approvals', 'unlockd approvals --all --json'],
  options: { ...CLIENT_OPTIONS, all: { type: 'boolean' } },
  async run({ values, io }) {
    const client = operatorClient(values, io)
    const q = values['all'] ? '?all=1' : ''
    const { approvals } = await client.call('GET', `/approvals${q}`, parseApprovalList)
    const { actions } = await client.call('GET', `/actions${q}`, parseActionList)
    const unlocks = (): string =>
      approvals.length === 0
        ? values['all']
          ? ''
          : 'no pending approval requests\n'
        : formatTable(
            ['ID', 'HOST', 'VOLUMES', 'SOURCE', 'BOOT ID', 'RULE', 'VOTES', 'AGE', 'STATE'],
            approvals.map((a) => [
              a.id,
              a.host,
              a.volumes.join(',') || 'all',
              a.source,
              a.bootId,
              a.rule,
              `${a.approvedBy.length}/${a.required}`,
              formatDuration(a.ageSeconds),
              a.state,
            ]),
          )
    const pending = (): string =>
      actions.length === 0
        ? values['all']
          ? ''
          : 'no pending actions\n'
        : formatTable(
            ['ID', 'ACTION', 'REQUESTED BY', 'VOTES', 'APPROVED BY', 'AGE', 'STATE'],
            actions.map((a) => [
              a.id,
              a.summary,
              a.requestedBy,
              `${a.approvedBy.length}/${a.required}`,
              a.approvedBy.join(','),
              formatDuration(a.ageSeconds),
              a.state,
            ]),
          )
    output(io, values, [...approvals, ...actions], () => {
      const u = unlocks()
      const p = pending()
      return u + (u && p ? '\n' : '') + p
    })
    return EXIT.ok
  },
}

export const approveCommand: Command = {
  name: 'approve',
  summary: 'Approve a pending unlock request or quorum action with your TOTP code.',
  usage: 'unlockd approve ID [--json]',
  description:
    'Your API token says who you are; the code proves you hold your authenticator. A code works once; it is asked for on the terminal, or read from the first line of stdin (never an argument). When the host policy needs k approvers, the request stays pending until k distinct operators approve. An action (qa_...) runs at its k-th approval; only operators who held a second factor when it was opened can approve it, and votes of operators removed since do not count.',
  examples: [
    'unlockd approve ap_1a2b3c4d5e6f7g8h9i0j1k',
    'echo 123456 | unlockd approve ap_1a2b3c4d5e6f7g8h9i0j1k',
    'unlockd approve qa_1a2b3c4d5e6f7g8h9i0j1k',
  ],
  options: { ...CLIENT_OPTIONS },
  positionals: true,
  async run({ values, positionals, io }) {
    const id = decisionArg(positionals)
    const code = await readTotpCode(io)
    if (isAction(id)) {
      const a = await operatorClient(values, io).call(
        'POST',
        `/actions/${id}/approve`,
        parseActionView,
        { code },
      )
      output(io, values, a, () => describeAction(a))
      return a.state === 'failed' ? EXIT.error : EXIT.ok
    }
    const a = await operatorClient(values, io).call(
      'POST',
      `/approvals/${id}/approve`,
      parseApprovalView,
      { code },
    )
    output(io, values, a, () => describe(a))
    return EXIT.ok
  },
}

export const denyCommand: Command = {
  name: 'deny',
  summary: 'Deny a pending unlock request (the waiting host gives up) or quorum action.',
  usage: 'unlockd deny ID [--reason TEXT] [--json]',
  description:
    'The reason (at most 200 characters) is recorded in the audit log and shown to the host.',
  examples: ['unlockd deny ap_1a2b3c4d5e6f7g8h9i0j1k --reason "unexpected reboot"'],
  options: { ...CLIENT_OPTIONS, reason: { type: 'string' } },
  positionals: true,
  async run({ values, positionals, io }) {
    const id = decisionArg(positionals)
    const reason = values['reason'] as string | undefined
    if (reason !== undefined && reason.length > 200)
      usage('--reason must be at most 200 characters')
    const body = reason ? { reason } : {}
    if (isAction(id)) {
      const a = await operatorClient(values, io).call(
        'POST',
        `/actions/${id}/deny`,
        parseActionView,
        body,
      )
      output(io, values, a, () => describeAction(a))
      return EXIT.ok
    }
    const a = await operatorClient(values, io).call(
      'POST',
      `/approvals/${id}/deny`,
      parseApprovalView,
      body,
    )
    output(io, values, a, () => describe(a))
    return EXIT.ok
  },
}

type QrTerminal = {
  generate(text: string, opts: { small: boolean }, cb: (qr: string) => void): void
}

/** The otpauth URI as a terminal QR code (qrcode-terminal, loaded only when shown). */
function qrOf(text: string): string {
  const qr = createRequire(import.meta.url)('qrcode-terminal') as QrTerminal
  let out = ''
  qr.generate(text, { small: true }, (s) => {
    out = s
  })
  return out
}

export function showSecrets(io: CliIo, values: Values, r: OperatorSecrets, what: string): void {
  output(io, values, r, () => {
    const lines = [`${what} ${r.operator.name}.`, '']
    if (r.token)
      lines.push(
        'Your API token (shown once; store it in a 0600 file and point UNLOCKD_TOKEN_FILE at it):',
        `  ${r.token}`,
        '',
      )
    lines.push(
      'Your TOTP secret (shown once): add it to your authenticator app by scanning the code or pasting the URI.',
      `  ${r.otpauthUri}`,
      '',
    )
    if (!values['no-qr']) lines.push(qrOf(r.otpauthUri), '')
    return lines.join('\n') + '\n'
  })
}

/**
 * Show (or, with --out, write to a new 0600 file) a one-time enrollment code for another
 * operator. The code is that operator's to redeem; it is never a secret of theirs.
 */
function showEnrollment(io: CliIo, values: Values, r: OperatorEnrollment): void {
  const out = values['out'] as string | undefined
  const { code, ...rest } = r.enrollment
  if (out !== undefined) writeFileAtomic(resolve(out), `${code}\n`, 0o600)
  const shown = out === undefined ? r : { ...r, enrollment: { ...rest, file: out } }
  const name = r.operator.name
  output(io, values, shown, () => {
    const lines: string[] = []
    if (r.voidedVotes && r.voidedVotes.length > 0)
      lines.push(`Voided ${name}'s votes on ${r.voidedVotes.join(', ')}.`)
    lines.push(
      r.enrollment.kind === 'add'
        ? `${name} holds no token or factor yet. Give ${name} this one-time enrollment code (valid until ${fmtTime(r.enrollment.expiresAt)}); ${name} runs \`unlockd operator enroll\` and types it in:`
        : `${name}'s factor was cleared. Give ${name} this one-time code (valid until ${fmtTime(r.enrollment.expiresAt)}); ${name} runs \`unlockd operator enroll\` with ${name}'s own API token and types it in:`,
    )
    lines.push(out === undefined ? `  ${code}` : `  written to ${out} (0600)`)
    return lines.join('\n') + '\n'
  })
}

const outOption = { out: { type: 'string' } } as const

function refuseExistingOut(values: Values): void {
  const out = values['out'] as string | undefined
  if (out !== undefined && existsSync(out))
    usage(`--out ${out} already exists; give a path for a new file`)
}

export const operatorAdd: Command = {
  name: 'operator add',
  summary: 'Add an operator: prints only a one-time enrollment code for them to redeem.',
  usage: 'unlockd operator add NAME [--out FILE] [--action ID] [--json]',
  description:
    "The new operator holds nothing until they run `unlockd operator enroll` with the code: that gives them, and only them, their API token and TOTP secret. You never see either. The code works once and expires after 24 hours; with --out it is written to that new 0600 file instead of shown. Needs your own current TOTP code (a prompt, or the first line of stdin), so a stolen API token alone cannot mint operators. When a host needs k > 1 approvers and k operators hold a factor, adding needs k operators: the command opens an action (exit status 'pending'), others approve it, and you run the command again with --action ID to get the code. While fewer than k operators hold a factor, adding is the one change that still works (it needs all of those who do).",
  examples: [
    'unlockd operator add alice',
    'echo 123456 | unlockd operator add bob --out bob.code',
    'unlockd operator add bob --action qa_1a2b3c4d5e6f7g8h9i0j1k',
  ],
  options: { ...CLIENT_OPTIONS, ...ACTION_OPTION, ...outOption },
  positionals: true,
  async run({ values, positionals, io }) {
    const name = operatorArg(positionals)
    refuseExistingOut(values)
    const client = operatorClient(values, io)
    const code = await readTotpCode(io)
    const r = await client.call('POST', '/operators', parseOperatorEnrollment, { name, code })
    showEnrollment(io, values, r)
    return EXIT.ok
  },
}

export const operatorTotp: Command = {
  name: 'operator totp',
  summary:
    "Reset an operator's second factor: yours shows a new secret; another's opens an enrollment.",
  usage: 'unlockd operator totp NAME [--out FILE] [--no-qr] [--action ID] [--json]',
  description:
    "Needs your own current TOTP code (a prompt, or the first line of stdin), and the fleet's quorum when a host needs k > 1 approvers (collect the result with --action ID once approved). For yourself, the new secret is shown once. For another operator, no secret is shown to you: their TOTP and passkeys are cleared, their votes on pending requests are voided, and you get a one-time code (or, with --out, a new 0600 file) that they redeem with `unlockd operator enroll` and their own API token.",
  examples: ['unlockd operator totp alice', 'unlockd operator totp bob --out bob.code'],
  options: { ...CLIENT_OPTIONS, ...ACTION_OPTION, ...outOption, 'no-qr': { type: 'boolean' } },
  positionals: true,
  async run({ values, positionals, io }) {
    const name = operatorArg(positionals)
    refuseExistingOut(values)
    const client = operatorClient(values, io)
    const code = await readTotpCode(io)
    const r = await client.call('POST', `/operators/${name}/totp`, parseFactorReset, { code })
    if ('enrollment' in r) showEnrollment(io, values, r)
    else showSecrets(io, values, r, 'New TOTP secret for')
    return EXIT.ok
  },
}

export const operatorList: Command = {
  name: 'operator list',
  summary: 'List operators, whether each has TOTP enrolled, and open enrollments.',
  usage: 'unlockd operator list [--json]',
  options: { ...CLIENT_OPTIONS },
  async run({ values, io }) {
    const { operators } = await operatorClient(values, io).call(
      'GET',
      '/operators',
      parseOperatorList,
    )
    output(io, values, operators, () =>
      formatTable(
        ['NAME', 'TOTP', 'ENROLLMENT', 'CREATED'],
        operators.map((o) => [
          o.name,
          o.totp ? 'yes' : 'no',
          o.enrollmentExpiresAt ? `open until ${fmtTime(o.enrollmentExpiresAt)}` : '-',
          fmtTime(o.createdAt),
        ]),
      ),
    )
    return EXIT.ok
  },
}

export const operatorRemove: Command = {
  name: 'operator remove',
  summary: 'Remove an operator: its API token and TOTP secret stop working.',
  usage: 'unlockd operator remove NAME [--json]',
  description:
    'The last operator cannot be removed. Needs your own current TOTP code (a prompt, or the first line of stdin), and the fleet quorum when a host needs k > 1 approvers: the removal then runs at the k-th `unlockd approve`.',
  examples: ['unlockd operator remove bob'],
  options: { ...CLIENT_OPTIONS },
  positionals: true,
  async run({ values, positionals, io }) {
    const name = operatorArg(positionals)
    const client = operatorClient(values, io)
    const code = await readTotpCode(io)
    const r = await client.call('POST', `/operators/${name}/remove`, parseRemovedOperator, { code })
    output(io, values, r, () => `removed operator ${name}\n`)
    return EXIT.ok
  },
}
