/** Operator commands for Tang hosts: `host add NAME --tang`, `host rotate-tang NAME`. */
import { parseTangHostView } from '../../shared/protocol/admin-replies.ts'
import type { TangHostView } from '../../shared/protocol/tang.ts'
import { parseCidr } from '../../shared/util/cidr.ts'
import {
  confirm,
  EXIT,
  fmtTime,
  formatTable,
  output,
  usage,
  type Command,
} from '../../platform/cli.ts'
import { CLIENT_OPTIONS, operatorClient } from './operator-client.ts'
import { readTotpCode } from './totp-code.ts'
import { hostArg } from './positionals.ts'

function keysTable(v: TangHostView): string {
  return formatTable(
    ['ROW', 'STATE', 'EXCHANGE KEY (kid)', 'SIGNING KEY (thp)', 'CREATED'],
    v.keys.map((k) => [k.row, k.state, k.exchange, k.signing, fmtTime(k.createdAt)]),
  )
}

function clevisUrl(serverUrl: string, v: TangHostView): string {
  return `${serverUrl.replace(/\/+$/, '')}${v.path}`
}

export const hostAdd: Command = {
  name: 'host add',
  summary: 'Add a host that stock clevis unlocks through the Tang endpoints (no agent).',
  usage: 'unlockd host add NAME --tang [--cidr CIDR ...] [--json]',
  description:
    "The server makes the host's Tang keys (ES512 signing, ECMR P-521 exchange) and keeps them wrapped with its KEK. " +
    'Bind a client with the printed URL, e.g. `clevis luks bind -d /dev/sda2 tang \'{"url":"URL"}\'` (pin the signing key with "thp"). ' +
    "Every /rec is a release under the host's policy (networks, suspension, max unlocks, approval) and is audited; " +
    '`unlockd shred --host NAME` destroys the keys, after which the bindings can never be decrypted. ' +
    'Agent hosts are not added here: they enroll with a token (`unlockd token create`).',
  examples: [
    'unlockd host add nas-1 --tang --cidr 192.0.2.0/24',
    'clevis luks bind -d /dev/sda2 tang \'{"url":"https://escrow:8443/tang/nas-1","thp":"<signing key>"}\'',
  ],
  options: {
    ...CLIENT_OPTIONS,
    tang: { type: 'boolean' },
    cidr: { type: 'string', multiple: true },
  },
  positionals: true,
  async run({ values, positionals, io }) {
    const name = hostArg(positionals)
    if (!values['tang'])
      usage(
        'only Tang hosts are added by an operator: give --tang (agent hosts enroll with `unlockd token create` + `unlockd enroll`)',
      )
    const cidrs = (values['cidr'] as string[] | undefined) ?? []
    for (const c of cidrs) if (!parseCidr(c)) usage(`--cidr ${c} is not a CIDR`)
    const client = operatorClient(values, io)
    const totp = await readTotpCode(io)
    const v = await client.call(
      'POST',
      '/hosts',
      parseTangHostView,
      { name, tang: true, cidrs },
      { totp },
    )
    const url = clevisUrl(client.url, v)
    const key = v.keys.find((k) => k.state === 'advertised')
    output(
      io,
      values,
      { ...v, url },
      () =>
        `Tang host ${v.host.name} added (${v.host.id}); networks: ${v.host.policy.cidrs.join(', ') || 'any'}.\n` +
        `clevis config: {"url":"${url}"${key ? `,"thp":"${key.signing}"` : ''}}\n\n${keysTable(v)}`,
    )
    return EXIT.ok
  },
}

export const hostRotateTang: Command = {
  name: 'host rotate-tang',
  summary:
    "Rotate a Tang host's keys (old ones keep answering /rec); --purge deletes retired keys.",
  usage: 'unlockd host rotate-tang NAME [--purge [--yes]] [--json]',
  description:
    'Without --purge: a new key pair is advertised; the previous ones are retired: no longer advertised, still used to ' +
    'recover existing bindings (like tangd-rotate-keys). Rebind clients (`clevis luks regen`), then run with --purge to ' +
    'delete the retired pairs; bindings still made to them can then never be decrypted.',
  examples: ['unlockd host rotate-tang nas-1', 'unlockd host rotate-tang nas-1 --purge --yes'],
  options: { ...CLIENT_OPTIONS, purge: { type: 'boolean' }, yes: { type: 'boolean' } },
  positionals: true,
  async run({ values, positionals, io }) {
    const name = hostArg(positionals)
    const purge = Boolean(values['purge'])
    if (values['yes'] && !purge) usage('--yes goes with --purge')
    const client = operatorClient(values, io)
    if (purge)
      await confirm(
        io,
        `WARNING: delete the retired Tang keys of ${name}? Bindings made to them can never be decrypted again.`,
        Boolean(values['yes']),
      )
    const totp = await readTotpCode(io)
    const v = await client.call(
      'POST',
      `/hosts/${name}/tang/rotate`,
      parseTangHostView,
      { purge },
      { totp },
    )
    output(
      io,
      values,
      { ...v, url: clevisUrl(client.url, v) },
      () =>
        `${purge ? `purged ${v.purged.length} retired key pair(s) of ${name}` : `rotated the Tang keys of ${name}`}\n\n${keysTable(v)}`,
    )
    return EXIT.ok
  },
}
