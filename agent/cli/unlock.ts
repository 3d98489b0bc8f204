/** `unlockd unlock` (one shot) and `unlockd status`. */
import { UnlockdError } from '../../shared/errors.ts'
import { parseDuration } from '../../shared/util/duration.ts'
import { zeroize } from '../../shared/crypto/bytes.ts'
import { EXIT, fmtTime, formatTable, output, usage, type Command } from '../../platform/cli.ts'
import { requireEnrolled } from '../config-dir.ts'
import { fetchVolumeKey, selectVolumes, unlockVolumes } from '../unlock.ts'
import { backendFor, isLuksVolume } from '../volumes/registry.ts'
import { readRunState } from '../run-state.ts'
import type { Progress } from '../escrow.ts'
import { DEFAULT_STATE_DIR } from '../encrypt/journal.ts'
import { conversionsInProgress } from '../encrypt/status.ts'
import { CONFIG_OPTION, cfgDir } from './common.ts'
import { refreshInitramfs } from '../initramfs-refresh.ts'

export const unlockCommand: Command = {
  name: 'unlock',
  summary: 'Fetch the keys from the escrow server and unlock the configured volumes (one shot).',
  usage:
    'unlockd unlock [--config DIR] [--volume NAME ...] [--test] [--key-stdout] [--wait DURATION] [--json]',
  description: [
    'LUKS volumes are opened as /dev/mapper/NAME (with --test: only checked with cryptsetup --test-passphrase, no device-mapper needed); fscrypt directories get their key added so they read in clear.',
    'When the server asks for a human approval, waits up to --wait (default: unlockWait in agent.json) and unlocks the moment it is approved.',
    '--key-stdout prints the LUKS passphrase of exactly one volume to stdout instead of opening it (for initramfs keyscripts and askpass); it refuses a terminal.',
  ].join('\n'),
  examples: [
    'unlockd unlock',
    'unlockd unlock --volume data --test',
    'unlockd unlock --volume root --key-stdout > /lib/cryptsetup/passfifo',
  ],
  options: {
    ...CONFIG_OPTION,
    volume: { type: 'string', multiple: true },
    test: { type: 'boolean' },
    'key-stdout': { type: 'boolean' },
    wait: { type: 'string' },
  },
  async run({ values, io }) {
    const c = cfgDir(values, io.env)
    const { config, keys } = requireEnrolled(c)
    const names = (values['volume'] as string[] | undefined) ?? []
    let waitSeconds: number | undefined
    if (values['wait'] !== undefined) {
      waitSeconds = parseDuration(values['wait'] as string)
      if (waitSeconds === undefined) usage('--wait must be a duration such as 30s or 5m')
    }
    const refreshes: Promise<unknown>[] = []
    const progress: Progress = (e) => {
      if (e.kind === 'approval')
        io.stderr(`waiting for approval ${e.approvalId} (rule ${e.rule}) at ${e.server}\n`)
      else if (e.kind === 'pinned') {
        io.stderr(`pinned the verdict key ${e.thumbprint} of ${e.server} (first use)\n`)
        refreshes.push(
          refreshInitramfs('agent.json changed (pinned server key)', (l) => io.stderr(`${l}\n`)),
        )
      } else io.stderr(`${e.server}: ${e.error.message}\n`)
    }
    if (values['key-stdout']) {
      if (names.length !== 1) usage('--key-stdout needs exactly one --volume')
      if (process.stdout.isTTY)
        usage('refusing to print a key to a terminal; redirect stdout to a pipe')
      const vol = selectVolumes(config, names)[0]
      if (!vol || !isLuksVolume(vol)) usage('--key-stdout works for LUKS volumes only')
      const key = await fetchVolumeKey(c, config, keys, vol, {
        ...(waitSeconds !== undefined ? { waitSeconds } : {}),
        progress,
      })
      try {
        await new Promise<void>((resolve, reject) =>
          process.stdout.write(key, (err) => (err ? reject(err) : resolve())),
        )
      } finally {
        zeroize(key)
      }
      await Promise.all(refreshes)
      return EXIT.ok
    }
    const r = await unlockVolumes(c, config, keys, {
      volumes: names,
      test: Boolean(values['test']),
      ...(waitSeconds !== undefined ? { waitSeconds } : {}),
      progress,
    })
    output(
      io,
      values,
      r,
      () =>
        `${r.unlocked.length ? `unlocked: ${r.unlocked.join(', ')}\n` : ''}${r.already.length ? `already unlocked: ${r.already.join(', ')}\n` : ''}${!r.unlocked.length && !r.already.length ? 'nothing to unlock\n' : ''}`,
    )
    await Promise.all(refreshes)
    return EXIT.ok
  },
}

export const statusCommand: Command = {
  name: 'status',
  summary:
    'Show each enrolled volume: locked or unlocked, last unlock, why the last attempt failed, and conversions (unlockd encrypt) in progress.',
  usage: 'unlockd status [--config DIR] [--state-dir DIR] [--json]',
  options: { ...CONFIG_OPTION, 'state-dir': { type: 'string' } },
  async run({ values, io }) {
    const c = cfgDir(values, io.env)
    const { config } = requireEnrolled(c)
    const state = readRunState()
    const rows = await Promise.all(
      config.volumes.map(async (v) => {
        const s = state.volumes[v.name]
        const backend = await backendFor(v)
        const unlocked = await backend.isUnlocked(v, { test: false }).catch(() => false)
        return {
          name: v.name,
          kind: v.kind,
          target: backend.target(v),
          state: unlocked ? 'unlocked' : s?.state === 'shredded' ? 'shredded' : 'locked',
          lastUnlock: s?.state === 'unlocked' ? s.at : null,
          lastResult: s ? s.state : null,
          reason: s?.reason ?? null,
          code: s?.code ?? null,
        }
      }),
    )
    const encrypting = conversionsInProgress(
      (values['state-dir'] as string | undefined) ?? DEFAULT_STATE_DIR,
    )
    const data = {
      host: config.name,
      hostId: config.hostId,
      servers: config.servers.map((s) => s.url),
      volumes: rows,
      encrypting,
      lastError: state.lastError,
    }
    output(
      io,
      values,
      data,
      () =>
        `host ${config.name} (${config.hostId}) → ${config.servers.map((s) => s.url).join(', ')}\n` +
        formatTable(
          ['VOLUME', 'KIND', 'STATE', 'LAST UNLOCK', 'TARGET', 'LAST PROBLEM'],
          rows.map((r) => [
            r.name,
            r.kind,
            r.state,
            fmtTime(r.lastUnlock),
            r.target,
            r.reason ? `${r.code}: ${r.reason}` : null,
          ]),
        ) +
        (encrypting.length === 0
          ? ''
          : '\nconversions in progress (run the same unlockd encrypt command to finish one):\n' +
            formatTable(
              ['NAME', 'KIND', 'PROGRESS'],
              encrypting.map((e) => [e.name, e.kind, e.summary]),
            )),
    )
    return EXIT.ok
  },
}

export { UnlockdError }
