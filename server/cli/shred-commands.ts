/**
 * Shred and key-management verbs: `shred` (operator, TOTP), `kek rotate` and `kek status` (operator),
 * `escrow export` (operator) and `keystore passwd` (offline, on the server's data directory).
 */
import { join, resolve } from 'node:path'
import { UnlockdError } from '../../shared/errors.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import {
  parseEscrowExport,
  parseKekStatus,
  parseShredResult,
  type KekStatusView,
  type ShredResult,
} from '../../shared/protocol/shred.ts'
import {
  EXIT,
  confirm,
  fmtTime,
  output,
  readSecret,
  usage,
  type Command,
} from '../../platform/cli.ts'
import { writeNewPrivateFile } from '../../platform/private-file.ts'
import { Keystore, backupPathOf } from '../keys/keystore.ts'
import { KEYSTORE_FILE } from '../setup.ts'
import { ACTION_OPTION, CLIENT_OPTIONS, operatorClient } from './operator-client.ts'
import { DEFAULT_DATA_DIR } from './server-commands.ts'
import { readTotpCode } from './totp-code.ts'

// Shred re-wraps every survivor and VACUUMs the database: give it longer than a plain call.
const SLOW_CALL_MS = 10 * 60_000

function describeTargets(r: ShredResult, dry: boolean): string {
  if (r.targets.length === 0) return 'No hosts.\n'
  return r.targets
    .map((t) => {
      if (t.alreadyShredded)
        return `  ${t.host} (${t.id}): already shredded${t.volumes.length ? `; stray blobs: ${t.volumes.join(', ')}` : ', nothing left'}\n`
      const vols = t.volumes.length ? t.volumes.join(', ') : 'no volumes'
      return t.wholeHost
        ? `  ${t.host} (${t.id}): host ${dry ? 'would be marked' : 'marked'} shredded; escrow blobs: ${vols}\n`
        : `  ${t.host} (${t.id}): volumes ${vols}\n`
    })
    .join('')
}

function cannotText(r: ShredResult): string {
  return `\nWhat shred cannot do:\n${r.cannot.map((c) => `  - ${c}\n`).join('')}`
}

export const shredCommand: Command = {
  name: 'shred',
  summary:
    'Crypto-shred a host (or some of its volumes, or every host): destroy its escrowed keys for good.',
  usage:
    'unlockd shred (--host NAME [--volume V ...] | --all) [--dry-run] [--code CODE] [--yes] [--reason TEXT] [--json]',
  description: [
    'In one transaction the escrow blobs are deleted, the host is marked shredded (it can never enroll again with the same keys),',
    "the audit entry is written and a shred order is queued for the host's agent (its watch channel). Then the database is",
    'scrubbed (checkpoint + VACUUM) and the KEK is rotated: survivors are re-wrapped and every old KEK is destroyed in the',
    'keystore and its backup, so database backups from before the shred become unreadable. A crash at any point is finished at',
    'the next server start. Needs your TOTP code (a prompt, or the first line of stdin) and a confirmation (a prompt, or --yes).',
    '--dry-run lists what would be destroyed and changes nothing (no code needed).',
  ].join('\n'),
  examples: [
    'unlockd shred --host web-1 --dry-run',
    'unlockd shred --host web-1',
    'echo 123456 | unlockd shred --host db-1 --volume backups --yes',
    'unlockd shred --all',
  ],
  options: {
    ...CLIENT_OPTIONS,
    host: { type: 'string' },
    volume: { type: 'string', multiple: true },
    all: { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    yes: { type: 'boolean', short: 'y' },
    reason: { type: 'string' },
  },
  async run({ values, io }) {
    const host = values['host'] as string | undefined
    const all = Boolean(values['all'])
    const volumes = values['volume'] as string[] | undefined
    if ((host === undefined) === !all) usage('give either --host NAME or --all')
    if (host !== undefined && !NAME_RE.test(host))
      usage('--host NAME must be 1-64 chars of a-z 0-9 _ . -')
    if (volumes && !host) usage('--volume goes with --host')
    for (const v of volumes ?? []) if (!NAME_RE.test(v)) usage(`--volume ${v} is not a volume name`)
    const reason = values['reason'] as string | undefined
    const body = {
      ...(host ? { host } : { all: true }),
      ...(volumes ? { volumes } : {}),
      ...(reason ? { reason } : {}),
    }
    const client = operatorClient(values, io)

    const preview = await client.call('POST', '/shred', parseShredResult, { ...body, dryRun: true })
    if (values['dry-run']) {
      output(
        io,
        values,
        preview,
        () =>
          `Would destroy (dry run, nothing changed):\n${describeTargets(preview, true)}${cannotText(preview)}`,
      )
      return EXIT.ok
    }
    const live = preview.targets.filter((t) => !t.alreadyShredded)
    if (!values['json'])
      io.stderr(`This will destroy, for good:\n${describeTargets(preview, true)}`)
    if (live.length > 0) {
      const what = all
        ? `EVERY host (${live.length})`
        : volumes
          ? `volumes ${volumes.join(', ')} of ${host}`
          : `host ${host}`
      await confirm(
        io,
        `WARNING: shred ${what}? Data that only these keys open becomes unrecoverable.`,
        Boolean(values['yes']),
      )
    }
    const code = await readTotpCode(io)
    const r = await client.call(
      'POST',
      '/shred',
      parseShredResult,
      { ...body, code },
      { timeoutMs: SLOW_CALL_MS },
    )
    output(io, values, r, () => {
      const lines = [
        `Shredded:\n${describeTargets(r, false)}`,
        `Deleted ${r.deletedBlobs} escrow blob(s); the database was scrubbed (checkpoint + VACUUM).\n`,
      ]
      if (r.kek?.status === 'rotated')
        lines.push(
          `KEK rotated: every blob left is wrapped by KEK v${r.kek.current}; destroyed ${r.kek.destroyed.length ? r.kek.destroyed.map((v) => `v${v}`).join(', ') : 'the old KEKs (earlier run)'} in keystore.json and keystore.json.bak.\n`,
        )
      else if (r.kek?.status === 'pending')
        lines.push(
          `WARNING: the KEK rotation did not finish (${r.kek.error ?? 'see server logs'}). It is retried by the server's maintenance job and at its next start; until then an old KEK still exists. Check with \`unlockd kek status\`.\n`,
        )
      else lines.push('Nothing new was destroyed: the KEK was not rotated.\n')
      if (live.length > 0)
        lines.push(
          "Each host's agent receives the shred order on its watch channel (now, or at its next contact) and reports back: see `unlockd audit --host NAME`.\n",
        )
      lines.push(cannotText(r))
      return lines.join('')
    })
    return r.kek?.status === 'pending' ? EXIT.error : EXIT.ok
  },
}

function kekLines(s: KekStatusView): string {
  return (
    [
      `current KEK:   v${s.current}`,
      `KEKs held:     ${s.versions.map((v) => `v${v}`).join(', ')}`,
      `last rotated:  ${fmtTime(s.rotatedAt)}`,
      `next rotation: ${s.nextRotationAt === null ? 'off' : fmtTime(s.nextRotationAt)}`,
      `pending:       ${s.pending ? `yes, up to v${s.pending.upTo} (${s.pending.reasons.join(', ')}) since ${fmtTime(s.pending.since)}` : 'no'}`,
      `rows behind:   ${s.behind}`,
    ].join('\n') + '\n'
  )
}

export const kekStatusCommand: Command = {
  name: 'kek status',
  summary:
    'Show the server KEK: current version, versions held, last and next rotation, pending work.',
  usage: 'unlockd kek status [--json]',
  options: { ...CLIENT_OPTIONS },
  async run({ values, io }) {
    const s = await operatorClient(values, io).call('GET', '/kek', parseKekStatus)
    output(io, values, s, () => kekLines(s))
    return EXIT.ok
  },
}

export const kekRotateCommand: Command = {
  name: 'kek rotate',
  summary:
    'Rotate the server KEK now: re-wrap every blob and TOTP secret, then destroy the old KEK.',
  usage: 'unlockd kek rotate [--json]',
  description:
    'Not destructive (nothing is lost: survivors are re-wrapped before the old KEK goes), but it changes the key under every secret, so it needs your TOTP code (a prompt, or the first line of stdin). Database backups taken before the rotation can no longer be unwrapped with the server keystore.',
  options: { ...CLIENT_OPTIONS },
  async run({ values, io }) {
    const client = operatorClient(values, io)
    const totp = await readTotpCode(io)
    const s = await client.call(
      'POST',
      '/kek/rotate',
      parseKekStatus,
      {},
      { timeoutMs: SLOW_CALL_MS, totp },
    )
    output(
      io,
      values,
      s,
      () =>
        `KEK rotated to v${s.current}; destroyed ${s.rotated?.destroyed.map((v) => `v${v}`).join(', ') || '-'}; re-wrapped ${s.rotated?.rewrapped.volumes ?? 0} blob(s) and ${s.rotated?.rewrapped.totpSecrets ?? 0} TOTP secret(s).\n`,
    )
    return EXIT.ok
  },
}

export const escrowExportCommand: Command = {
  name: 'escrow export',
  summary:
    "Give the operator a host's escrow blobs, sealed only to the recovery key (KEK layer and host recipient removed).",
  usage: 'unlockd escrow export --host NAME [--out FILE] [--action ID] [--json]',
  description:
    'For `unlockd recover --blob FILE --recovery-key KEY` on another machine. Needs your TOTP code (a prompt, or the first line of stdin), and the quorum of the host when its policy needs k > 1 approvers: the command then opens an action, others approve it with `unlockd approve ID`, and you run it again with --action ID and a fresh code to receive the blobs (only you can). Audited. The file opens with the recovery key only (not with the host keys): keep it as carefully as the key, and destroy it when the host is shredded (shred cannot reach it).',
  examples: [
    'unlockd escrow export --host web-1 --out web-1.escrow.json',
    'unlockd escrow export --host web-1 --out web-1.escrow.json --action qa_1a2b3c4d5e6f7g8h9i0j1k',
  ],
  options: {
    ...CLIENT_OPTIONS,
    ...ACTION_OPTION,
    host: { type: 'string' },
    out: { type: 'string' },
  },
  async run({ values, io }) {
    const host = values['host'] as string | undefined
    if (!host || !NAME_RE.test(host)) usage('--host NAME is required')
    const client = operatorClient(values, io)
    const totp = await readTotpCode(io)
    const x = await client.call(
      'POST',
      `/hosts/${host}/escrow-export`,
      parseEscrowExport,
      {},
      { totp },
    )
    const text = JSON.stringify(x, null, 2) + '\n'
    const out = values['out'] as string | undefined
    if (out) {
      writeNewPrivateFile(out, text)
      output(
        io,
        values,
        { host: x.host, out, volumes: x.volumes.map((v) => v.name) },
        () => `wrote ${x.volumes.length} escrow blob(s) of ${x.host} to ${out} (mode 0600)\n`,
      )
    } else {
      io.stdout(text)
    }
    if (!values['json'] && x.notExported && x.notExported.length > 0) {
      io.stderr(
        `note: not exported (enrolled without a recovery key; only the host keys open them): ${x.notExported.join(', ')}\n`,
      )
    }
    return EXIT.ok
  },
}

export const keystorePasswdCommand: Command = {
  name: 'keystore passwd',
  summary: 'Re-seal the server keystore under a new passphrase (offline; the data is not touched).',
  usage:
    'unlockd keystore passwd [--data DIR] [--passphrase-file F] [--new-passphrase-file F] [--json]',
  description: [
    'Reads the current passphrase (--passphrase-file, UNLOCKD_PASSPHRASE, the systemd credential, or a prompt) and the new one',
    '(--new-passphrase-file or a prompt), and rewrites keystore.json and keystore.json.bak. Then restart the server with the new',
    'passphrase: a running server refuses to write the keystore once it changed under it. Copies of the keystore made',
    'earlier still open with the old passphrase.',
  ].join('\n'),
  examples: [
    'unlockd keystore passwd --data /var/lib/unlockd --passphrase-file /root/old --new-passphrase-file /root/new',
  ],
  options: {
    data: { type: 'string' },
    'passphrase-file': { type: 'string' },
    'new-passphrase-file': { type: 'string' },
  },
  async run({ values, io }) {
    const dataDir = resolve((values['data'] as string | undefined) ?? DEFAULT_DATA_DIR)
    const path = join(dataDir, KEYSTORE_FILE)
    const old = await readSecret({
      file: values['passphrase-file'] as string | undefined,
      envName: 'UNLOCKD_PASSPHRASE',
      io,
      prompt: 'Current keystore passphrase: ',
    })
    const ks = Keystore.open(path, old)
    try {
      const next = await readSecret({
        file: values['new-passphrase-file'] as string | undefined,
        io,
        prompt: 'New keystore passphrase: ',
        confirm: true,
      })
      if (next === old)
        throw new UnlockdError('usage', 'the new passphrase is the same as the current one')
      if (next.length < 8)
        throw new UnlockdError('usage', 'the new passphrase must be at least 8 characters')
      ks.changePassphrase(next)
    } finally {
      ks.close()
    }
    output(
      io,
      values,
      { keystore: path, backup: backupPathOf(path) },
      () =>
        `Re-sealed ${path} and ${backupPathOf(path)} under the new passphrase.\nRestart the server with it (update --passphrase-file, UNLOCKD_PASSPHRASE or the systemd credential).\n`,
    )
    return EXIT.ok
  },
}
