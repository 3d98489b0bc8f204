/**
 * CLI plumbing shared by the server-side and host-side commands: argument parsing (node:util
 * parseArgs, strict), help text, `--json` output, and the error edge that turns an
 * UnlockdError into `[ERROR] unlockd VERB: message` plus a remedy and a documented exit code.
 *
 * Exit codes: 0 ok · 1 runtime error · 2 usage error · 3 refused by the server (policy, auth,
 * approval denied) · 4 server unreachable or TLS failure · 5 still waiting (approval pending).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { readFileSync } from 'node:fs'
import { UnlockdError, type UnlockdErrorCode } from '../shared/errors.ts'

export interface CliIo {
  stdout: (text: string) => void
  stderr: (text: string) => void
  env: Record<string, string | undefined>
  /** True when stdin is an interactive terminal (prompts allowed). */
  interactive: boolean
}

export const processIo: CliIo = {
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  env: process.env,
  interactive: Boolean(process.stdin.isTTY),
}

export type Options = NonNullable<ParseArgsConfig['options']>
export type Values = Record<string, string | boolean | string[] | undefined>

export interface Command {
  name: string
  summary: string
  usage: string
  description?: string
  examples?: string[]
  options: Options
  /** Accept positional arguments (count checked by the command). */
  positionals?: boolean
  run(ctx: { values: Values; positionals: string[]; io: CliIo }): Promise<number | void>
}

export const EXIT = { ok: 0, error: 1, usage: 2, refused: 3, unreachable: 4, pending: 5 } as const

const COMMON: Options = { help: { type: 'boolean', short: 'h' }, json: { type: 'boolean' } }

export function helpText(cmd: Command): string {
  const lines = [`Usage: ${cmd.usage}`, '', cmd.summary]
  if (cmd.description) lines.push('', cmd.description)
  const opts = Object.entries(cmd.options)
  if (opts.length) {
    lines.push('', 'Options:')
    for (const [k, o] of opts)
      lines.push(
        `  --${k}${o.type === 'string' ? ' VALUE' : ''}${o.multiple ? ' (repeatable)' : ''}`,
      )
    lines.push('  --json          machine-readable output', '  -h, --help      this help')
  }
  if (cmd.examples?.length) lines.push('', 'Examples:', ...cmd.examples.map((e) => `  ${e}`))
  return lines.join('\n') + '\n'
}

export class UsageError extends Error {}

export function usage(message: string): never {
  throw new UsageError(message)
}

/** Remedies for the errors users meet most (fscrypt-style suggestions). */
export function suggestionFor(code: UnlockdErrorCode): string | undefined {
  switch (code) {
    case 'server_unreachable':
      return 'Check the server URL, that `unlockd server start` is running, and the network path (firewall, ip= on the kernel command line).'
    case 'tls_pin_mismatch':
      return 'The server certificate does not match the pinned CA/key: re-copy the CA with --ca, or re-enroll if the server key was replaced on purpose.'
    case 'unauthorized':
      return 'Set UNLOCKD_TOKEN (or UNLOCKD_TOKEN_FILE) to an operator API token printed by `unlockd server init` or `unlockd operator add`.'
    case 'token_used':
    case 'token_expired':
    case 'token_revoked':
    case 'token_invalid':
      return 'Create a fresh one-time token: `unlockd token create --host NAME`.'
    case 'host_suspended':
      return 'An operator can run `unlockd host resume NAME` after checking why it was suspended.'
    case 'host_shredded':
      return 'This host was crypto-shredded; its data cannot be unlocked. Re-provision it and enroll new keys.'
    case 'keystore_locked':
      return 'Give the keystore passphrase with --passphrase-file, UNLOCKD_PASSPHRASE, or a systemd credential named unlockd-passphrase.'
    case 'fscrypt_unsupported':
      return 'Enable the feature on the unmounted filesystem: tune2fs -O encrypt /dev/DEVICE'
    case 'not_enrolled':
      return 'Run `unlockd enroll --server URL --token TOKEN ...` first.'
    case 'iat_skew':
      return 'Fix the clock on this host (systemd-timesyncd or chrony).'
    case 'destructive_needs_force':
      return 'Re-run interactively, or add --yes to confirm.'
    default:
      return undefined
  }
}

export function exitCodeFor(code: UnlockdErrorCode): number {
  if (code === 'server_unreachable' || code === 'tls_pin_mismatch') return EXIT.unreachable
  if (code === 'approval_pending') return EXIT.pending
  if (code === 'usage') return EXIT.usage
  const refused: UnlockdErrorCode[] = [
    'unauthorized',
    'forbidden',
    'token_invalid',
    'token_used',
    'token_expired',
    'token_revoked',
    'host_unknown',
    'bad_signature',
    'nonce_reused',
    'cidr_denied',
    'rate_limited',
    'not_yet_valid',
    'expired',
    'host_suspended',
    'host_shredded',
    'approval_denied',
    'approval_expired',
    'totp_invalid',
    'totp_replayed',
    'totp_locked',
    'clone_suspected',
  ]
  return refused.includes(code) ? EXIT.refused : EXIT.error
}

export async function runCommand(
  prog: string,
  cmd: Command,
  argv: string[],
  io: CliIo,
): Promise<number> {
  let parsed: { values: Values; positionals: string[] }
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...COMMON, ...cmd.options },
      strict: true,
      allowPositionals: cmd.positionals ?? false,
    }) as { values: Values; positionals: string[] }
  } catch (e) {
    io.stderr(
      `[ERROR] ${prog} ${cmd.name}: ${e instanceof Error ? e.message : String(e)}\n\n${helpText(cmd)}`,
    )
    return EXIT.usage
  }
  if (parsed.values['help']) {
    io.stdout(helpText(cmd))
    return EXIT.ok
  }
  try {
    return (
      (await cmd.run({ values: parsed.values, positionals: parsed.positionals, io })) ?? EXIT.ok
    )
  } catch (e) {
    return reportError(prog, cmd, e, io, Boolean(parsed.values['json']))
  }
}

export function reportError(
  prog: string,
  cmd: Command,
  e: unknown,
  io: CliIo,
  json: boolean,
): number {
  if (e instanceof UsageError) {
    io.stderr(`[ERROR] ${prog} ${cmd.name}: ${e.message}\n\n${helpText(cmd)}`)
    return EXIT.usage
  }
  if (e instanceof UnlockdError) {
    if (e.code === 'usage') {
      io.stderr(`[ERROR] ${prog} ${cmd.name}: ${e.message}\n`)
      return EXIT.usage
    }
    if (json)
      io.stdout(JSON.stringify({ error: e.code, message: e.message, ...(e.details ?? {}) }) + '\n')
    const rule = e.details?.['rule']
    io.stderr(
      `[ERROR] ${prog} ${cmd.name}: ${e.message} (${e.code}${rule ? `, rule ${String(rule)}` : ''})\n`,
    )
    const hint = suggestionFor(e.code)
    if (hint) io.stderr(`${hint}\n`)
    return exitCodeFor(e.code)
  }
  io.stderr(
    `[ERROR] ${prog} ${cmd.name}: internal error: ${e instanceof Error ? e.message : String(e)}\n`,
  )
  return EXIT.error
}

/** Print `--json` output or a table. */
export function output(io: CliIo, values: Values, data: unknown, table: () => string): void {
  io.stdout(values['json'] ? JSON.stringify(data, null, 2) + '\n' : table())
}

export function formatTable(
  headers: string[],
  rows: (string | number | null | undefined)[][],
): string {
  const cells = [
    headers,
    ...rows.map((r) => r.map((c) => (c === null || c === undefined ? '-' : String(c)))),
  ]
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)))
  return (
    cells
      .map((r) =>
        r
          .map((c, i) => (i === r.length - 1 ? c : (c ?? '').padEnd(widths[i] as number)))
          .join('  '),
      )
      .join('\n') + '\n'
  )
}

export function fmtTime(sec: number | null | undefined): string {
  return sec === null || sec === undefined
    ? '-'
    : new Date(sec * 1000).toISOString().replace('.000Z', 'Z')
}

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

async function promptHidden(question: string): Promise<string> {
  const { createInterface } = await import('node:readline')
  process.stderr.write(question)
  const rl = createInterface({ input: process.stdin, terminal: true })
  const rlOut = rl as unknown as { _writeToOutput?: (s: string) => void }
  rlOut._writeToOutput = () => {} // no echo
  return new Promise((resolve) =>
    rl.question('', (a) => {
      rl.close()
      process.stderr.write('\n')
      resolve(a)
    }),
  )
}

/** Ask one question on the terminal (prompt on stderr) and return the trimmed answer. */
export async function ask(question: string): Promise<string> {
  const { createInterface } = await import('node:readline')
  const rl = createInterface({ input: process.stdin, output: process.stderr })
  return new Promise<string>((resolve) =>
    rl.question(question, (x) => {
      rl.close()
      resolve(x.trim())
    }),
  )
}

/** Default-no confirmation for destructive commands (fscrypt prompt.go). */
export async function confirm(io: CliIo, question: string, yes: boolean): Promise<void> {
  if (yes) return
  if (!io.interactive)
    throw new UnlockdError(
      'destructive_needs_force',
      'refusing a destructive action without a terminal; add --yes to confirm',
    )
  if (!/^y(es)?$/i.test(await ask(`${question} [y/N] `)))
    throw new UnlockdError('destructive_needs_force', 'cancelled')
}
