/** `unlockd agent`: the systemd service (Type=notify). */
import { EXIT, type Command } from '../../platform/cli.ts'
import { runAgent } from '../daemon.ts'
import { stopping } from '../sd-notify.ts'
import { CONFIG_OPTION, cfgDir } from './common.ts'
import { requireEnrolled } from '../config-dir.ts'

export const agentCommand: Command = {
  name: 'agent',
  summary:
    'Run the host service: unlock at start (waiting for the server), answer ask-password, obey shred orders.',
  usage: 'unlockd agent [--config DIR] [--test]',
  description:
    'Logs one line per event to stderr (the journal) and reports progress through sd-notify STATUS=. --test opens LUKS volumes with --test-passphrase only (for machines without device-mapper).',
  options: { ...CONFIG_OPTION, test: { type: 'boolean' } },
  async run({ values, io }) {
    const c = cfgDir(values, io.env)
    requireEnrolled(c) // fail fast with a clear message if not enrolled
    const ac = new AbortController()
    const onSignal = (): void => {
      void stopping()
      ac.abort()
    }
    process.once('SIGTERM', onSignal)
    process.once('SIGINT', onSignal)
    await runAgent({
      configDir: c,
      test: Boolean(values['test']) || io.env['UNLOCKD_AGENT_TEST'] === '1',
      log: (l) => io.stderr(`unlockd-agent: ${l}\n`),
      signal: ac.signal,
      env: io.env,
      ...(io.env['UNLOCKD_BACKOFF_MS']
        ? {
            backoff: {
              baseMs: Number(io.env['UNLOCKD_BACKOFF_MS']),
              capMs: Number(io.env['UNLOCKD_BACKOFF_MS']) * 8,
            },
          }
        : {}),
    })
    return EXIT.ok
  },
}
