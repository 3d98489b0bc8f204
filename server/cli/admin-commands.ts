/** Operator commands over the admin API: hosts, host suspend/resume/show/set, tokens, audit. */
import { UnlockdError } from '../../shared/errors.ts'
import {
  parseAuditPage,
  parseAuditHeadReply,
  parseAuditVerdict,
  parseCreatedToken,
  parseHostList,
  parseHostView,
  parseTokenList,
  parseTokenView,
} from '../../shared/protocol/admin-replies.ts'
import { parseAuditHead, type AuditEntry, type HostView } from '../../shared/protocol/messages.ts'
import { encryptionSummary } from '../../shared/protocol/encryption.ts'
import { parseMaxUnlocks, APPROVAL_RULE_RE } from '../../shared/protocol/policy.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import { parseCidr } from '../../shared/util/cidr.ts'
import { formatDuration, parseDuration } from '../../shared/util/duration.ts'
import type { AuditHead } from '../../shared/audit.ts'
import { readFileSync } from 'node:fs'
import { writeFileAtomic } from '../../platform/atomic-file.ts'
import { EXIT, fmtTime, formatTable, output, usage, type Command } from '../../platform/cli.ts'
import { CLIENT_OPTIONS, operatorClient } from './operator-client.ts'
import { hostArg } from './positionals.ts'
import { readTotpCode, withCodeIfAsked } from './totp-code.ts'

/** "data: encrypting data 43% (1.2 GiB of 2.8 GiB, ETA 5m)", one per reported conversion. */
function encryptionNotes(h: HostView, which: 'all' | 'unfinished'): string[] {
  return (h.encryption ?? [])
    .filter((e) => which === 'all' || e.state !== 'done')
    .map((e) => `${e.volume}: ${encryptionSummary(e)}`)
}

function policyLines(h: HostView): string {
  const p = h.policy
  const enc = encryptionNotes(h, 'all')
  return (
    [
      `host:        ${h.name} (${h.id})`,
      `state:       ${h.state}${h.stateReason ? ` (${h.stateReason})` : ''}`,
      `enrolled:    ${fmtTime(h.createdAt)}`,
      `last seen:   ${fmtTime(h.lastSeenAt)}`,
      `last unlock: ${fmtTime(h.lastUnlockAt)}`,
      `volumes:     ${h.volumes.map((v) => `${v.name} (${v.kind})`).join(', ') || '-'}`,
      `cidrs:       ${p.cidrs.join(', ') || 'any'}`,
      `approval:    ${p.approval} (approvers: ${p.approvers})`,
      `max unlocks: ${p.maxUnlocks ? `${p.maxUnlocks.count}/${formatDuration(p.maxUnlocks.periodSeconds)}` : 'unlimited'}`,
      `valid:       ${p.notBefore ? fmtTime(p.notBefore) : '-'} .. ${p.notAfter ? fmtTime(p.notAfter) : '-'}`,
      `idle suspend: ${p.idleSuspendSeconds ? formatDuration(p.idleSuspendSeconds) : 'off'}`,
      `clone check: ${p.cloneWindowSeconds ? formatDuration(p.cloneWindowSeconds) : 'off'}`,
      ...(enc.length > 0 ? [`encryption:  ${enc.join('\n             ')}`] : []),
    ].join('\n') + '\n'
  )
}

export const hostsList: Command = {
  name: 'hosts',
  summary: 'List enrolled hosts with their state.',
  usage: 'unlockd hosts [--json]',
  options: { ...CLIENT_OPTIONS },
  async run({ values, io }) {
    const { hosts } = await operatorClient(values, io).call('GET', '/hosts', parseHostList)
    // The ENCRYPTION column appears only while some conversion is running or has failed.
    const notes = hosts.map((h) => encryptionNotes(h, 'unfinished').join('; '))
    const withNotes = notes.some((n) => n !== '')
    output(io, values, hosts, () =>
      formatTable(
        ['NAME', 'STATE', 'VOLUMES', 'LAST UNLOCK', 'ID', ...(withNotes ? ['ENCRYPTION'] : [])],
        hosts.map((h, i) => [
          h.name,
          h.state,
          h.volumes.map((v) => v.name).join(','),
          fmtTime(h.lastUnlockAt),
          h.id,
          ...(withNotes ? [notes[i] || null] : []),
        ]),
      ),
    )
    return EXIT.ok
  },
}

export const hostShow: Command = {
  name: 'host show',
  summary: 'Show one host and its policy.',
  usage: 'unlockd host show NAME [--json]',
  options: { ...CLIENT_OPTIONS },
  positionals: true,
  async run({ values, positionals, io }) {
    const h = await operatorClient(values, io).call(
      'GET',
      `/hosts/${hostArg(positionals)}`,
      parseHostView,
    )
    output(io, values, h, () => policyLines(h))
    return EXIT.ok
  },
}

function stateCommand(state: 'suspend' | 'resume'): Command {
  return {
    name: `host ${state}`,
    summary:
      state === 'suspend'
        ? 'Suspend a host: every unlock is refused until it is resumed.'
        : 'Resume a suspended host (needs your TOTP code: a prompt, or the first line of stdin).',
    usage: `unlockd host ${state} NAME${state === 'suspend' ? ' [--reason TEXT]' : ''} [--json]`,
    options: {
      ...CLIENT_OPTIONS,
      ...(state === 'suspend' ? { reason: { type: 'string' as const } } : {}),
    },
    positionals: true,
    async run({ values, positionals, io }) {
      const name = hostArg(positionals)
      const body =
        state === 'suspend' && values['reason'] ? { reason: values['reason'] } : undefined
      const client = operatorClient(values, io)
      // Suspending only tightens; resuming lifts a control and needs your TOTP code.
      const totp = state === 'resume' ? await readTotpCode(io) : undefined
      const h = await client.call('POST', `/hosts/${name}/${state}`, parseHostView, body, {
        ...(totp ? { totp } : {}),
      })
      output(io, values, h, () => `${h.name}: ${h.state}\n`)
      return EXIT.ok
    },
  }
}
export const hostSuspend = stateCommand('suspend')
export const hostResume = stateCommand('resume')

export const hostSet: Command = {
  name: 'host set',
  summary: "Change a host's policy.",
  usage:
    'unlockd host set NAME [--approval RULE] [--approvers K] [--cidr CIDR ...] [--any-cidr] [--max-unlocks N/PERIOD|off] [--not-before ISO] [--not-after ISO] [--idle-suspend DURATION|off] [--clone-window DURATION|off] [--json]',
  description:
    'RULE is never | always | outside-cidrs | after-idle(DURATION), e.g. after-idle(7d). A change that loosens any control (fewer approvers, wider networks, a higher rate limit, later expiry...) needs your TOTP code, asked for when the server requires it (a prompt, or the first line of stdin); a stricter policy goes through at once.',
  examples: [
    'unlockd host set web-1 --approval always --approvers 2',
    'unlockd host set web-1 --cidr 203.0.113.0/24 --max-unlocks 5/1h',
  ],
  options: {
    ...CLIENT_OPTIONS,
    approval: { type: 'string' },
    approvers: { type: 'string' },
    cidr: { type: 'string', multiple: true },
    'any-cidr': { type: 'boolean' },
    'max-unlocks': { type: 'string' },
    'not-before': { type: 'string' },
    'not-after': { type: 'string' },
    'idle-suspend': { type: 'string' },
    'clone-window': { type: 'string' },
  },
  positionals: true,
  async run({ values, positionals, io }) {
    const name = hostArg(positionals)
    const patch: Record<string, unknown> = {}
    const approval = values['approval'] as string | undefined
    if (approval !== undefined) {
      if (!APPROVAL_RULE_RE.test(approval))
        usage('--approval must be never, always, outside-cidrs or after-idle(DURATION)')
      patch['approval'] = approval
    }
    if (values['approvers'] !== undefined) {
      const k = Number(values['approvers'])
      if (!Number.isInteger(k) || k < 1 || k > 16) usage('--approvers must be 1..16')
      patch['approvers'] = k
    }
    const cidrs = values['cidr'] as string[] | undefined
    if (cidrs) {
      for (const c of cidrs) if (!parseCidr(c)) usage(`--cidr ${c} is not a CIDR`)
      patch['cidrs'] = cidrs
    }
    if (values['any-cidr']) patch['cidrs'] = []
    const mu = values['max-unlocks'] as string | undefined
    if (mu !== undefined) {
      if (mu === 'off') patch['maxUnlocks'] = null
      else {
        const p = parseMaxUnlocks(mu)
        if (!p) usage('--max-unlocks must be N/PERIOD such as 5/1h, or off')
        patch['maxUnlocks'] = p
      }
    }
    for (const [flag, key] of [
      ['not-before', 'notBefore'],
      ['not-after', 'notAfter'],
    ] as const) {
      const x = values[flag] as string | undefined
      if (x === undefined) continue
      if (x === 'off') {
        patch[key] = null
        continue
      }
      const ms = Date.parse(x)
      if (Number.isNaN(ms))
        usage(`--${flag} must be an ISO date such as 2027-01-01T00:00:00Z, or off`)
      patch[key] = Math.floor(ms / 1000)
    }
    for (const [flag, key] of [
      ['idle-suspend', 'idleSuspendSeconds'],
      ['clone-window', 'cloneWindowSeconds'],
    ] as const) {
      const x = values[flag] as string | undefined
      if (x === undefined) continue
      if (x === 'off') {
        patch[key] = null
        continue
      }
      const d = parseDuration(x)
      if (d === undefined) usage(`--${flag} must be a duration such as 7d, or off`)
      patch[key] = d
    }
    if (Object.keys(patch).length === 0) usage('nothing to change: give at least one policy option')
    const client = operatorClient(values, io)
    const h = await withCodeIfAsked(io, (totp) =>
      client.call('PATCH', `/hosts/${name}/policy`, parseHostView, patch, {
        ...(totp ? { totp } : {}),
      }),
    )
    output(io, values, h, () => policyLines(h))
    return EXIT.ok
  },
}

export const tokenCreate: Command = {
  name: 'token create',
  summary:
    'Make a one-time enrollment token bound to a host name (and optionally source networks).',
  usage: 'unlockd token create --host NAME [--ttl 1h] [--cidr CIDR ...] [--json]',
  description:
    "The token is printed once. It expires after --ttl (default 1h, at most 30d), works once, and only from --cidr networks when given; those networks also become the host's unlock networks.",
  examples: ['unlockd token create --host web-1 --ttl 15m --cidr 203.0.113.7/32 --json'],
  options: {
    ...CLIENT_OPTIONS,
    host: { type: 'string' },
    ttl: { type: 'string' },
    cidr: { type: 'string', multiple: true },
  },
  async run({ values, io }) {
    const host = values['host'] as string | undefined
    if (!host || !NAME_RE.test(host)) usage('--host NAME is required (1-64 chars of a-z 0-9 _ . -)')
    const ttl = values['ttl'] === undefined ? 3600 : parseDuration(values['ttl'] as string)
    if (ttl === undefined) usage('--ttl must be a duration such as 15m or 1h')
    const cidrs = (values['cidr'] as string[] | undefined) ?? []
    for (const c of cidrs) if (!parseCidr(c)) usage(`--cidr ${c} is not a CIDR`)
    const r = await operatorClient(values, io).call('POST', '/tokens', parseCreatedToken, {
      host,
      ttlSeconds: ttl,
      cidrs,
    })
    output(io, values, r, () => `${r.token}\n`)
    if (!values['json'])
      io.stderr(`token ${r.id} for ${r.host}, expires ${fmtTime(r.expiresAt)}, single use\n`)
    return EXIT.ok
  },
}

export const tokenList: Command = {
  name: 'token list',
  summary: 'List enrollment tokens (never their secret values).',
  usage: 'unlockd token list [--json]',
  options: { ...CLIENT_OPTIONS },
  async run({ values, io }) {
    const { tokens } = await operatorClient(values, io).call('GET', '/tokens', parseTokenList)
    output(io, values, tokens, () =>
      formatTable(
        ['ID', 'HOST', 'STATE', 'EXPIRES', 'CIDRS'],
        tokens.map((t) => [
          t.id,
          t.host,
          t.state,
          fmtTime(t.expiresAt),
          t.cidrs.join(',') || 'any',
        ]),
      ),
    )
    return EXIT.ok
  },
}

export const tokenRevoke: Command = {
  name: 'token revoke',
  summary: 'Revoke an unused enrollment token.',
  usage: 'unlockd token revoke ID [--json]',
  options: { ...CLIENT_OPTIONS },
  positionals: true,
  async run({ values, positionals, io }) {
    const id = positionals[0]
    if (!id || positionals.length !== 1)
      usage('expected exactly one token ID (see `unlockd token list`)')
    const r = await operatorClient(values, io).call(
      'DELETE',
      `/tokens/${encodeURIComponent(id)}`,
      parseTokenView,
    )
    output(io, values, r, () => `${r.id}: ${r.state}\n`)
    return EXIT.ok
  },
}

async function fetchAll(
  values: Record<string, unknown>,
  io: Parameters<Command['run']>[0]['io'],
): Promise<AuditEntry[]> {
  const client = operatorClient(values as never, io)
  const all: AuditEntry[] = []
  for (let after = 0; ;) {
    const { entries } = await client.call('GET', `/audit?after=${after}&limit=5000`, parseAuditPage)
    all.push(...entries)
    if (entries.length < 5000) return all
    after = (entries[entries.length - 1] as AuditEntry).seq
  }
}

export const auditList: Command = {
  name: 'audit',
  summary:
    'Show the audit log (enrollments, releases, denials, admin actions). --json prints JSON lines.',
  usage: 'unlockd audit [--host NAME] [--json]',
  options: { ...CLIENT_OPTIONS, host: { type: 'string' } },
  async run({ values, io }) {
    let entries = await fetchAll(values, io)
    if (values['host']) entries = entries.filter((e) => e.host === values['host'])
    if (values['json'])
      io.stdout(entries.map((e) => JSON.stringify(e)).join('\n') + (entries.length ? '\n' : ''))
    else
      io.stdout(
        formatTable(
          ['SEQ', 'TIME', 'ACTOR', 'ACTION', 'HOST', 'DETAIL'],
          entries.map((e) => [
            e.seq,
            fmtTime(e.at),
            e.actor,
            e.action,
            e.host,
            JSON.stringify(e.detail),
          ]),
        ),
      )
    return EXIT.ok
  },
}

export const auditHead: Command = {
  name: 'audit head',
  summary:
    'Seal the audit chain and print its MAC-signed head; keep it off the server for `audit verify --head`.',
  usage: 'unlockd audit head [--out FILE]',
  options: { ...CLIENT_OPTIONS, out: { type: 'string' } },
  async run({ values, io }) {
    const { head } = await operatorClient(values, io).call(
      'GET',
      '/audit/head',
      parseAuditHeadReply,
    )
    if (!head) throw new UnlockdError('not_found', 'the audit log is empty: nothing to export yet')
    const text = JSON.stringify(head) + '\n'
    const out = values['out']
    if (typeof out === 'string') {
      writeFileAtomic(out, text, 0o644)
      io.stdout(`audit head: position ${head.pos}, entry ${head.seq} written to ${out}\n`)
    } else io.stdout(text)
    return EXIT.ok
  },
}

export const auditVerify: Command = {
  name: 'audit verify',
  summary:
    'Have the server check every audit MAC and link (and, with --head, that the chain still holds that head); name the first bad entry.',
  usage: 'unlockd audit verify [--head FILE] [--json]',
  options: { ...CLIENT_OPTIONS, head: { type: 'string' } },
  async run({ values, io }) {
    const file = values['head']
    let head: AuditHead | undefined
    if (typeof file === 'string') {
      let raw: unknown
      try {
        raw = JSON.parse(readFileSync(file, 'utf8'))
      } catch (cause) {
        throw new UnlockdError(
          'bad_request',
          `cannot read the head file ${file}: write it with \`unlockd audit head --out FILE\``,
          { cause },
        )
      }
      head = parseAuditHead(raw, file)
    }
    const v = await operatorClient(values, io).call(
      'POST',
      '/audit/verify',
      parseAuditVerdict,
      head ? { head } : {},
    )
    output(io, values, v, () =>
      v.ok
        ? `audit chain OK: ${v.count} entries, ${v.sealed} chained${v.head ? `, head position ${v.head.pos} (entry ${v.head.seq})` : ''}${head ? `, contains the head at position ${head.pos}` : ''}\n`
        : `audit chain BROKEN at entry ${v.badSeq}: ${v.reason}\n`,
    )
    if (!v.ok)
      throw new UnlockdError(
        'integrity_failed',
        `audit chain broken at entry ${v.badSeq}: ${v.reason}`,
      )
    return EXIT.ok
  },
}
