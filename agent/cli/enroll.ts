/** `unlockd enroll`: bind LUKS2 volumes and fscrypt directories to the escrow server. */
import { copyFileSync, existsSync } from 'node:fs'
import { basename, join } from 'node:path'
import { UnlockdError } from '../../shared/errors.ts'
import { zeroize } from '../../shared/crypto/bytes.ts'
import { parseSealingPublicKey, publicOf } from '../../shared/crypto/keys.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import type { ServerEntry } from '../../shared/config/agent.ts'
import { EXIT, output, usage, type Command } from '../../platform/cli.ts'
import { ensurePrivateDir } from '../../platform/atomic-file.ts'
import { enrollHost } from '../enroll.ts'
import type { VolumeRequest } from '../volumes/backend.ts'
import { CONFIG_OPTION, cfgDir, defaultHostName, readKeyFile, readStdin } from './common.ts'

function splitSpec(spec: string, flag: string): { target: string; name: string } {
  const i = spec.lastIndexOf(':')
  const target = i > 0 ? spec.slice(0, i) : spec
  const name =
    i > 0
      ? spec.slice(i + 1)
      : basename(target)
          .toLowerCase()
          .replace(/[^a-z0-9_.-]/g, '-')
          .replace(/^[^a-z0-9]+/, '')
  if (!target.startsWith('/')) usage(`${flag} ${spec}: give an absolute path`)
  if (!NAME_RE.test(name))
    usage(`${flag} ${spec}: volume NAME must be 1-64 chars of a-z 0-9 _ . - (append :NAME)`)
  return { target, name }
}

export const enrollCommand: Command = {
  name: 'enroll',
  summary:
    'Enroll this host and bind LUKS2 volumes / fscrypt directories to the escrow server (idempotent).',
  usage:
    'unlockd enroll --server URL [--server URL ...] [--token-file F | --token -] [--name NAME] [--config DIR] [--ca FILE] (--luks DEVICE[:NAME] --existing-key-file F | --fscrypt DIR[:NAME]) ... [--recovery-key PUBLIC_JWK] [--json]',
  description: [
    'Makes the host keys (0600 in the config dir, default /etc/unlockd) on first use. Each LUKS2 volume gets a new random key in a new keyslot (its other keyslots keep working); each fscrypt directory (empty, on a filesystem with the encrypt feature) gets a v2 policy with a random 64-byte key.',
    'The enrollment token is read from --token-file, from stdin with --token -, or from UNLOCKD_ENROLL_TOKEN; it is never taken as an argument. Once enrolled, adding volumes needs no token.',
    'Running it again with the same volumes changes nothing; a failure half-way removes the key it added, so the volume keeps its old keys.',
  ].join('\n'),
  examples: [
    'unlockd enroll --server https://escrow.example:8443 --ca escrow-ca.pem --token-file /root/token --luks /dev/vdb:data --existing-key-file /root/data.key',
    'unlockd enroll --server https://escrow.example:8443 --fscrypt /srv/secrets:secrets',
  ],
  options: {
    ...CONFIG_OPTION,
    server: { type: 'string', multiple: true },
    'token-file': { type: 'string' },
    token: { type: 'string' },
    name: { type: 'string' },
    ca: { type: 'string' },
    luks: { type: 'string', multiple: true },
    'existing-key-file': { type: 'string', multiple: true },
    fscrypt: { type: 'string', multiple: true },
    'recovery-key': { type: 'string' },
  },
  async run({ values, io }) {
    const c = cfgDir(values, io.env)
    const tokenArg = values['token'] as string | undefined
    if (tokenArg !== undefined && tokenArg !== '-')
      usage(
        'refusing a token on the command line (it would show in ps and shell history): use --token-file F, --token - (stdin) or UNLOCKD_ENROLL_TOKEN',
      )
    let token: string | undefined
    if (values['token-file'])
      token = new TextDecoder()
        .decode(readKeyFile(values['token-file'] as string, 'token file'))
        .trim()
    else if (tokenArg === '-') token = await readStdin()
    else token = io.env['UNLOCKD_ENROLL_TOKEN']

    const name = (values['name'] as string | undefined) ?? defaultHostName()
    if (!NAME_RE.test(name)) usage('--name must be 1-64 chars of a-z 0-9 _ . -')

    // Pin the CA: copy it into the config dir so the initramfs and the service find it.
    let ca: string | null = null
    if (values['ca']) {
      ensurePrivateDir(c.dir)
      const dest = join(c.dir, 'ca.pem')
      if (!existsSync(values['ca'] as string)) usage(`--ca ${String(values['ca'])}: no such file`)
      copyFileSync(values['ca'] as string, dest)
      ca = 'ca.pem'
    }
    const servers: ServerEntry[] = ((values['server'] as string[] | undefined) ?? []).map((url) => {
      if (!/^https?:\/\/[^\s]+$/.test(url)) usage(`--server ${url}: must be an http(s) URL`)
      return { url, ca, spkiSha256: null }
    })

    const luks = (values['luks'] as string[] | undefined) ?? []
    const keyFiles = (values['existing-key-file'] as string[] | undefined) ?? []
    if (luks.length && keyFiles.length !== 1 && keyFiles.length !== luks.length)
      usage(
        'give one --existing-key-file for all --luks volumes, or one per --luks in the same order',
      )
    const requests: VolumeRequest[] = []
    // Every key read from a file, zeroed once enrollment is over.
    const secrets: Uint8Array[] = []
    for (const [i, spec] of luks.entries()) {
      const { target, name: vname } = splitSpec(spec, '--luks')
      const existingKey = readKeyFile((keyFiles[i] ?? keyFiles[0]) as string, 'existing key file')
      secrets.push(existingKey)
      requests.push({ kind: 'luks', device: target, name: vname, existingKey })
    }
    for (const spec of (values['fscrypt'] as string[] | undefined) ?? []) {
      const { target, name: vname } = splitSpec(spec, '--fscrypt')
      requests.push({ kind: 'fscrypt', path: target, name: vname })
    }
    let recoveryKey
    if (values['recovery-key']) {
      const text = new TextDecoder().decode(
        readKeyFile(values['recovery-key'] as string, 'recovery key'),
      )
      try {
        recoveryKey = publicOf(parseSealingPublicKey(JSON.parse(text)))
      } catch (cause) {
        throw new UnlockdError(
          'config_invalid',
          `${String(values['recovery-key'])} is not a public X25519 JWK (make one with \`unlockd recovery-key create\`)`,
          { cause },
        )
      }
      if ('d' in (JSON.parse(text) as object))
        io.stderr(
          'warning: the recovery key file holds the PRIVATE key; only the public part is used. Keep the private key offline.\n',
        )
    }
    try {
      const r = await enrollHost({
        configDir: c.dir,
        servers,
        token,
        name,
        volumes: requests,
        recoveryKey,
        log: (l) => io.stderr(`${l}\n`),
      })
      output(
        io,
        values,
        r,
        () =>
          `${r.changed ? 'enrolled' : 'unchanged'}: host ${r.name} (${r.hostId})${r.added.length ? `, added ${r.added.join(', ')}` : ''}${r.unchanged.length ? `, already enrolled ${r.unchanged.join(', ')}` : ''}\n`,
      )
      return EXIT.ok
    } finally {
      for (const key of secrets) zeroize(key)
    }
  },
}
