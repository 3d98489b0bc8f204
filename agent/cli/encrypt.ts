/** `unlockd encrypt`: encrypt data that already exists, in place, without losing it. */
import { statSync } from 'node:fs'
import { UnlockdError } from '../../shared/errors.ts'
import { parseSealingPublicKey, publicOf, type PublicOkpJwk } from '../../shared/crypto/keys.ts'
import { output, usage, EXIT, type Command } from '../../platform/cli.ts'
import { parseTargetSpec } from '../encrypt/spec.ts'
import { DEFAULT_STATE_DIR } from '../encrypt/journal.ts'
import { planText } from '../encrypt/plan.ts'
import { progressReporter, type ProgressMode } from '../encrypt/progress.ts'
import { runWatchers, type EncryptionReport, type RunWatchers } from '../encrypt/watchers.ts'
import { loadConfig, loadKeys, type ConfigDir } from '../config-dir.ts'
import { reportEncryptionTo } from '../escrow.ts'
import { status as sdStatus } from '../sd-notify.ts'
import { CONFIG_OPTION, cfgDir, readKeyFile } from './common.ts'

export function readFallback(path: string): Uint8Array {
  let mode: number
  try {
    mode = statSync(path).mode & 0o777
  } catch (cause) {
    throw new UnlockdError('config_invalid', `cannot read the fallback passphrase file ${path}`, {
      cause,
    })
  }
  if ((mode & 0o077) !== 0)
    throw new UnlockdError(
      'config_invalid',
      `${path} is readable by group/others (mode ${mode.toString(8)}); run: chmod 600 ${path}`,
    )
  const bytes = readKeyFile(path, 'fallback passphrase file')
  // One trailing newline is an editor's, not part of the passphrase.
  const end = bytes.at(-1) === 0x0a ? bytes.byteLength - 1 : bytes.byteLength
  if (end === 0) throw new UnlockdError('config_invalid', `${path} is empty`)
  return bytes.slice(0, end)
}

function readRecoveryKey(path: string): PublicOkpJwk {
  const text = new TextDecoder().decode(readKeyFile(path, 'recovery key'))
  try {
    return publicOf(parseSealingPublicKey(JSON.parse(text)))
  } catch (cause) {
    throw new UnlockdError(
      'config_invalid',
      `${path} is not a public X25519 JWK (make one with \`unlockd recovery-key create\`)`,
      { cause },
    )
  }
}

function progressMode(json: boolean): ProgressMode {
  if (json) return 'json'
  return process.stderr.isTTY ? 'tty' : 'quiet'
}

/** The signed reporter to the escrow server, when this host is enrolled. */
function serverSender(c: ConfigDir): ((r: EncryptionReport) => Promise<void>) | undefined {
  let config, keys
  try {
    config = loadConfig(c)
    keys = loadKeys(c)
  } catch {
    return undefined // the engine reports the broken configuration itself
  }
  if (config === undefined || keys === undefined) return undefined
  return (r) => reportEncryptionTo(c, config, keys, r)
}

/** Run `work` with `w` told how it ended; a report that fails never changes the outcome. */
async function watched<T extends { status: string }>(
  w: RunWatchers,
  work: () => Promise<T>,
): Promise<T> {
  let r: T
  try {
    r = await work()
  } catch (err) {
    await w.failed(err)
    throw err
  }
  if (r.status === 'converted') await w.finished()
  return r
}

export const FSCRYPT_FREED_BLOCKS_WARNING =
  'note: fscrypt encrypts the new copy only. The blocks the old plaintext copy occupied are freed, not overwritten: they may survive on the disk (and on SSDs in remapped cells) until reused, and backups or snapshots of the old tree are untouched. LUKS (unlockd encrypt --luks) encrypts the whole device and is the complete answer.'

export const encryptCommand: Command = {
  name: 'encrypt',
  summary:
    'Encrypt existing data in place: an ext4 volume to LUKS2 (--luks) or a directory to fscrypt (--fscrypt); resumable.',
  usage:
    'unlockd encrypt (--luks DEVICE_OR_IMAGE[:NAME] | --fscrypt DIR[:NAME]) [--stop UNIT ...] (--recovery-key PUBLIC_JWK | --fallback-passphrase-file F) [--dry-run] [--config DIR] [--state-dir DIR] [--enable-encrypt-feature] [--json]\n       unlockd encrypt --root [--fallback-passphrase-file F] [--dry-run [--facts RECORD]] [--reboot] [--config DIR] [--state-dir DIR] [--json]',
  description: [
    '--luks shrinks the ext4 filesystem by 32 MiB (resize2fs, with an undo file), then converts the device to LUKS2 in place (cryptsetup reencrypt --encrypt --reduce-device-size 32M), adds the fallback passphrase as its own keyslot and escrows a new key like `enroll`. Without device-mapper the data moves offline; with it, the volume is reopened and back in use (crypttab/fstab updated, units restarted) while the data moves, and if the command dies then (crash, reboot) the agent service unlocks the volume from escrow and finishes the data conversion in the background.',
    '--fscrypt copies a non-empty directory into an encrypted sibling on the same filesystem, verifies every file, swaps the two with one atomic rename and removes the plaintext copy.',
    'Every step is journaled (0600, in --state-dir, default /var/lib/unlockd/encrypt): if the run is killed, run the same command again and it finishes. Running it on a converted volume changes nothing.',
    'A second way in is required before any data is touched: the recovery key (sealed copy of the escrowed key) or a fallback passphrase keyslot.',
    '--dry-run prints the plan (filesystem, sizes, mounts and their users, device-mapper) and what would be refused.',
    '--root encrypts the root filesystem (ext4 on a GPT or MBR partition, booted by GRUB for BIOS or UEFI) in place, from the initramfs: when /boot is on the root filesystem, the first boot shrinks it and its partition and gives /boot a plaintext partition of its own, the system then reinstalls GRUB for it; the next boot initializes LUKS2 (cryptsetup reencrypt --encrypt --init-only --reduce-device-size 32M) with a key sealed to this host and the fallback passphrase (prompted, or a 0600 file) as its own keyslot, and boots from the mapping while the data is encrypted online, resuming after every reboot. It needs an enrolled host. Nothing changes until the next boot; --dry-run prints the boots and steps, each with its rollback, or the reason the layout is refused (LVM, btrfs, XFS, a whole disk, too little free space, no GRUB, already encrypted). --facts RECORD plans from a recorded layout instead of this machine. --reboot reboots once the conversion is staged. --boot-stage is what the initramfs script runs before / is mounted.',
    'Progress: one updating line on a terminal; with --json, one JSON line per second on stderr; STATUS= for systemd when run by a unit; `unlockd status` shows runs in progress. An enrolled host also reports start, progress (every few seconds), completion and failure to the escrow server (signed); a report that fails never stops the conversion.',
  ].join('\n'),
  examples: [
    'unlockd encrypt --luks /dev/vdb:data --stop postgresql.service --fallback-passphrase-file /root/fallback --dry-run',
    'unlockd encrypt --luks /dev/disk/by-path/pci-0000:00:05.0:data --recovery-key /root/recovery.pub.jwk',
    'unlockd encrypt --fscrypt /srv/secrets:secrets --recovery-key /root/recovery.pub.jwk',
    'unlockd encrypt --root --dry-run',
    'unlockd encrypt --root --fallback-passphrase-file /root/fallback --reboot',
  ],
  options: {
    ...CONFIG_OPTION,
    luks: { type: 'string' },
    fscrypt: { type: 'string' },
    stop: { type: 'string', multiple: true },
    'dry-run': { type: 'boolean' },
    'state-dir': { type: 'string' },
    'recovery-key': { type: 'string' },
    'fallback-passphrase-file': { type: 'string' },
    'enable-encrypt-feature': { type: 'boolean' },
    root: { type: 'boolean' },
    facts: { type: 'string' },
    reboot: { type: 'boolean' },
    'boot-stage': { type: 'boolean' },
  },
  async run({ values, io }) {
    const json = values['json'] === true
    const luksSpec = values['luks'] as string | undefined
    const fscryptSpec = values['fscrypt'] as string | undefined
    if (values['root'] === true) {
      if (luksSpec !== undefined || fscryptSpec !== undefined)
        usage('--root converts the root filesystem; give it without --luks or --fscrypt')
      const { runEncryptRoot } = await import('./encrypt-root.ts')
      return runEncryptRoot(values, io, { readFallback })
    }
    if ((luksSpec === undefined) === (fscryptSpec === undefined))
      usage('give exactly one of --luks DEVICE[:NAME] or --fscrypt DIR[:NAME]')
    const c = cfgDir(values, io.env)
    const stateDir = (values['state-dir'] as string | undefined) ?? DEFAULT_STATE_DIR
    const units = (values['stop'] as string[] | undefined) ?? []
    const recoveryKey = values['recovery-key']
      ? readRecoveryKey(values['recovery-key'] as string)
      : undefined
    const fallback = values['fallback-passphrase-file']
      ? readFallback(values['fallback-passphrase-file'] as string)
      : undefined
    const local = progressReporter(progressMode(json), (s) => io.stderr(s))
    const log = (l: string): void => io.stderr(`${l}\n`)
    const dryRun = values['dry-run'] === true
    const watchersFor = (name: string, kind: 'luks' | 'fscrypt'): RunWatchers =>
      runWatchers({
        name,
        kind,
        stateDir,
        local,
        send: dryRun ? undefined : serverSender(c),
        status: sdStatus,
        log,
      })

    try {
      if (luksSpec !== undefined) {
        const { target, name } = parseTargetSpec(luksSpec, '--luks')
        const { encryptLuks } = await import('../encrypt/luks-inplace.ts')
        const w = watchersFor(name, 'luks')
        const r = await watched(w, () =>
          encryptLuks({
            device: target,
            name,
            units,
            configDir: c.dir,
            stateDir,
            recoveryKey,
            fallbackPassphrase: fallback,
            dryRun,
            log,
            progress: w.reporter,
            onStart: (total) => w.started(total),
          }),
        )
        output(io, values, r, () =>
          r.status === 'planned'
            ? r.plan === null
              ? `a conversion of ${r.device} is in progress; run without --dry-run to finish it\n`
              : planText(r.plan)
            : r.status === 'unchanged'
              ? `unchanged: ${r.device} is already LUKS2 (${r.name})\n`
              : `converted: ${r.device} is LUKS2 volume ${r.name}${r.resumed ? ' (resumed)' : ''}; its key is escrowed\n`,
        )
        if (dryRun && r.plan !== null && r.plan.refusals.length > 0) {
          const first = r.plan.refusals[0]
          if (first !== undefined) {
            io.stderr(`[REFUSED] ${first.message} (${first.code}, ${first.reason})\n`)
            return EXIT.error
          }
        }
        return EXIT.ok
      }
      const { target, name } = parseTargetSpec(fscryptSpec as string, '--fscrypt')
      const { encryptFscrypt } = await import('../encrypt/fscrypt-migrate.ts')
      const w = watchersFor(name, 'fscrypt')
      const r = await watched(w, () =>
        encryptFscrypt({
          dir: target,
          name,
          units,
          configDir: c.dir,
          stateDir,
          recoveryKey,
          dryRun,
          enableEncryptFeature: values['enable-encrypt-feature'] === true,
          log,
          progress: w.reporter,
          onStart: (total) => w.started(total),
        }),
      )
      if (r.status === 'converted') io.stderr(`${FSCRYPT_FREED_BLOCKS_WARNING}\n`)
      output(io, values, r, () =>
        r.status === 'planned'
          ? `plan: ${r.message}\n`
          : r.status === 'unchanged'
            ? `unchanged: ${r.dir} is already an fscrypt directory (${r.name})\n`
            : `converted: ${r.dir} is fscrypt directory ${r.name}${r.resumed ? ' (resumed)' : ''}; its key is escrowed\n`,
      )
      return EXIT.ok
    } finally {
      fallback?.fill(0)
    }
  },
}
