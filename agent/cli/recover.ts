/**
 * Offline recovery with the operator's recovery key (no server, no network):
 * `unlockd recovery-key create` makes the key pair, whose public half hosts seal their escrow
 * blobs to at enrollment; `unlockd recover` opens a blob from `unlockd escrow export` (or a bare
 * JWE) with the private half and writes the volume key, for example to move a LUKS volume to a
 * new machine: `cryptsetup open --key-file vk.bin /dev/sdX data`.
 */
import { readFileSync } from 'node:fs'
import { UnlockdError } from '../../shared/errors.ts'
import { openEscrowBlob, parseEscrowBlob, type EscrowBlob } from '../../shared/crypto/blob.ts'
import { zeroize } from '../../shared/crypto/bytes.ts'
import {
  generateRecoveryKey,
  parsePrivateKey,
  publicOf,
  thumbprint,
} from '../../shared/crypto/keys.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import { parseEscrowExport } from '../../shared/protocol/shred.ts'
import { EXIT, output, usage, type Command } from '../../platform/cli.ts'
import { writeNewPrivateFile } from '../../platform/private-file.ts'

function readJson(path: string, what: string): unknown {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (cause) {
    throw new UnlockdError('config_invalid', `cannot read ${what} ${path}`, { cause })
  }
  try {
    return JSON.parse(text) as unknown
  } catch (cause) {
    throw new UnlockdError('config_invalid', `${what} ${path} is not JSON`, { cause })
  }
}

/** The blob to open: a bare JWE, or one volume of an escrow export. */
function pickBlob(
  doc: unknown,
  volume: string | undefined,
  path: string,
): { name: string | null; blob: EscrowBlob } {
  const isExport =
    typeof doc === 'object' &&
    doc !== null &&
    (doc as Record<string, unknown>)['format'] !== undefined
  if (!isExport) {
    if (volume !== undefined) usage('--volume applies to an escrow export file, not to a bare blob')
    return { name: null, blob: parseEscrowBlob(doc) }
  }
  const x = parseEscrowExport(doc)
  const pick =
    volume === undefined
      ? x.volumes.length === 1
        ? x.volumes[0]
        : undefined
      : x.volumes.find((v) => v.name === volume)
  if (!pick) {
    const names = x.volumes.map((v) => v.name).join(', ') || 'none'
    if (volume === undefined)
      usage(`${path} holds several volumes (${names}): choose one with --volume`)
    throw new UnlockdError('volume_unknown', `${path} has no volume ${volume} (it has: ${names})`)
  }
  return { name: pick.name, blob: pick.blob }
}

export const recoverCommand: Command = {
  name: 'recover',
  summary: 'Open an escrow blob with the recovery key (offline) and write the volume key.',
  usage: 'unlockd recover --blob FILE --recovery-key FILE [--volume NAME] [--out FILE] [--json]',
  description: [
    'FILE is the output of `unlockd escrow export` (pick the volume with --volume when it holds several) or a bare blob.',
    'The raw volume key goes to --out (created with mode 0600, never overwritten) or to stdout when stdout is not a',
    'terminal (a pipe). Destroy the key file once the volume has a new binding.',
  ].join('\n'),
  examples: [
    'unlockd recover --blob web-1.escrow.json --volume data --recovery-key /secure/recovery.jwk --out /run/vk.bin',
    'unlockd recover --blob web-1.escrow.json --recovery-key /secure/recovery.jwk | cryptsetup open --key-file - /dev/vdb data',
  ],
  options: {
    blob: { type: 'string' },
    'recovery-key': { type: 'string' },
    volume: { type: 'string' },
    out: { type: 'string' },
  },
  async run({ values, io }) {
    const blobPath = values['blob'] as string | undefined
    const keyPath = values['recovery-key'] as string | undefined
    const volume = values['volume'] as string | undefined
    const out = values['out'] as string | undefined
    if (!blobPath || !keyPath) usage('--blob FILE and --recovery-key FILE are required')
    if (volume !== undefined && !NAME_RE.test(volume)) usage('--volume must be a volume name')
    if (out === undefined && process.stdout.isTTY)
      usage('refusing to print a volume key on a terminal: give --out FILE or pipe stdout')
    if (out === undefined && values['json'])
      usage('--json needs --out FILE (stdout carries the key)')
    const { name, blob } = pickBlob(readJson(blobPath, 'blob file'), volume, blobPath)
    const key = parsePrivateKey(readJson(keyPath, 'recovery key'), 'sealing')
    const vk = await openEscrowBlob(blob, key)
    try {
      if (out !== undefined) {
        writeNewPrivateFile(out, vk)
        output(
          io,
          values,
          { volume: name, out, bytes: vk.byteLength },
          () =>
            `wrote the ${vk.byteLength}-byte volume key${name ? ` of ${name}` : ''} to ${out} (mode 0600); destroy it after use\n`,
        )
      } else {
        await new Promise<void>((resolve, reject) =>
          process.stdout.write(Buffer.from(vk), (err) => (err ? reject(err) : resolve())),
        )
      }
    } finally {
      zeroize(vk)
    }
    return EXIT.ok
  },
}

export const recoveryKeyCreateCommand: Command = {
  name: 'recovery-key create',
  summary:
    "Make the operator's offline recovery key: the private JWK goes to --out (0600), the public JWK is printed.",
  usage: 'unlockd recovery-key create --out FILE [--json]',
  description:
    'Give the printed public key to hosts at enrollment so their escrow blobs are also sealed to it. Keep the private file offline: with it and an escrow export, `unlockd recover` opens any of those blobs without the server.',
  examples: ['unlockd recovery-key create --out /secure/recovery.jwk > recovery.pub.jwk'],
  options: { out: { type: 'string' } },
  async run({ values, io }) {
    const out = values['out'] as string | undefined
    if (!out) usage('--out FILE is required (the private key is never printed)')
    const priv = await generateRecoveryKey()
    writeNewPrivateFile(out, JSON.stringify(priv) + '\n')
    const pub = publicOf(priv)
    const kid = await thumbprint(pub)
    priv.d = ''
    output(io, values, { publicKey: pub, kid, out }, () => `${JSON.stringify(pub)}\n`)
    if (!values['json'])
      io.stderr(`private recovery key written to ${out} (mode 0600), kid ${kid}; keep it offline\n`)
    return EXIT.ok
  },
}
