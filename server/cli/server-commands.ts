/** `unlockd server init` and `unlockd server start`. */
import { existsSync } from 'node:fs'
import { resolve } from 'node:path'
import { writeFileAtomic } from '../../platform/atomic-file.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import { EXIT, output, readSecret, usage, type Command } from '../../platform/cli.ts'
import { jsonLogger } from '../log.ts'
import { initDataDir, loadServerConfig, openDeps } from '../setup.ts'
import { startServer } from '../main.ts'

export const DEFAULT_DATA_DIR = '/var/lib/unlockd'

const passOpts = { 'passphrase-file': { type: 'string' } } as const

export const serverInit: Command = {
  name: 'server init',
  summary:
    'Create the keystore, the database and the first operator; print its API token and TOTP secret once.',
  usage:
    'unlockd server init [--data DIR] [--operator NAME] [--db postgres://...] [--passphrase-file F] [--totp-file F] [--json]',
  description:
    "The keystore passphrase comes from --passphrase-file, UNLOCKD_PASSPHRASE, a systemd credential named unlockd-passphrase, or a prompt. The operator token is shown once and stored only as a hash. The operator's TOTP secret is made at once and shown once as an otpauth:// URI (add it to an authenticator app); with --totp-file it is written to that new 0600 file instead, for automation.",
  examples: ['unlockd server init --data /var/lib/unlockd --passphrase-file /root/ks-pass --json'],
  options: {
    data: { type: 'string' },
    operator: { type: 'string' },
    db: { type: 'string' },
    'totp-file': { type: 'string' },
    ...passOpts,
  },
  async run({ values, io }) {
    const totpFile = values['totp-file'] as string | undefined
    if (totpFile !== undefined && existsSync(totpFile))
      usage(`--totp-file ${totpFile} already exists; give a path for a new file`)
    const dataDir = resolve((values['data'] as string | undefined) ?? DEFAULT_DATA_DIR)
    const operator = (values['operator'] as string | undefined) ?? 'admin'
    if (!NAME_RE.test(operator)) usage('--operator must be 1-64 chars of a-z 0-9 _ . -')
    const passphrase = await readSecret({
      file: values['passphrase-file'] as string | undefined,
      envName: 'UNLOCKD_PASSPHRASE',
      io,
      prompt: 'New keystore passphrase: ',
      confirm: true,
    })
    const r = await initDataDir(dataDir, passphrase, {
      operator,
      db: values['db'] as string | undefined,
      log: jsonLogger(),
    })
    if (totpFile !== undefined) writeFileAtomic(resolve(totpFile), `${r.otpauthUri}\n`, 0o600)
    const shown = totpFile === undefined ? { otpauthUri: r.otpauthUri } : { totpFile }
    output(
      io,
      values,
      { operator: r.operator, token: r.token, ...shown, dataDir: r.dataDir, store: r.store },
      () =>
        `Initialized ${r.dataDir} (${r.store} store).\nOperator: ${r.operator}\nAPI token (shown once, keep it in a 0600 file): ${r.token}\n` +
        (totpFile === undefined
          ? `TOTP secret (shown once; add it to your authenticator app, every loosening action asks for its code):\n  ${r.otpauthUri}\n`
          : `TOTP secret written to ${totpFile} (0600); import it into your authenticator app, then delete the file.\n`),
    )
    return EXIT.ok
  },
}

export const serverStart: Command = {
  name: 'server start',
  summary:
    'Serve the escrow API. Plain HTTP only on loopback; otherwise give --tls-cert and --tls-key.',
  usage:
    'unlockd server start [--data DIR] [--listen HOST:PORT] [--tls-cert F --tls-key F] [--db URL] [--passphrase-file F]',
  examples: [
    'unlockd server start --data /var/lib/unlockd --listen 127.0.0.1:8443',
    'unlockd server start --listen 0.0.0.0:8443 --tls-cert /etc/unlockd/tls.crt --tls-key /etc/unlockd/tls.key',
  ],
  options: {
    data: { type: 'string' },
    listen: { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    db: { type: 'string' },
    ...passOpts,
  },
  async run({ values, io }) {
    const dataDir = resolve((values['data'] as string | undefined) ?? DEFAULT_DATA_DIR)
    const cfg = loadServerConfig(dataDir)
    const passphrase = await readSecret({
      file: values['passphrase-file'] as string | undefined,
      envName: 'UNLOCKD_PASSPHRASE',
      io,
      prompt: 'Keystore passphrase: ',
    })
    const log = jsonLogger()
    const deps = await openDeps(dataDir, passphrase, log, {
      db: values['db'] as string | undefined,
    })
    if (cfg.webhook) {
      const { readFileSync } = await import('node:fs')
      deps.settings.webhook = {
        url: cfg.webhook.url,
        secret: cfg.webhook.secretFile ? readFileSync(cfg.webhook.secretFile, 'utf8').trim() : null,
      }
    }
    const listen = (values['listen'] as string | undefined) ?? cfg.listen ?? '127.0.0.1:8443'
    const srv = await startServer(deps, {
      listen,
      tlsCert: (values['tls-cert'] as string | undefined) ?? cfg.tlsCert,
      tlsKey: (values['tls-key'] as string | undefined) ?? cfg.tlsKey,
      tang: cfg.tangListener,
    })
    io.stderr(`unlockd server listening on ${srv.url}\n`)
    if (srv.tangUrl !== undefined)
      io.stderr(`unlockd Tang listener (plain HTTP, Tang routes only) on ${srv.tangUrl}\n`)
    await new Promise<void>((resolveStop) => {
      const stop = (sig: string): void => {
        log.log('info', 'signal', { signal: sig })
        void srv.close().then(() => resolveStop())
      }
      process.once('SIGTERM', () => stop('SIGTERM'))
      process.once('SIGINT', () => stop('SIGINT'))
    })
    return EXIT.ok
  },
}
