/**
 * `unlockd agent`: the long-running host service.
 *  1. Unlock every configured volume, waiting for the network and the server with capped
 *     exponential backoff and jitter; every wait is visible in sd-notify STATUS= and the log.
 *  2. READY=1 once the volumes are unlocked (so mounts ordered after us find them).
 *  3. Keep running: answer systemd ask-password requests for our LUKS volumes, hold the
 *     watch connection on which the server delivers shred orders (kill switch), and finish
 *     online `unlockd encrypt` conversions whose command died in the data phase
 *     (encrypt/background.ts).
 */
import { UnlockdError } from '../shared/errors.ts'
import { zeroize } from '../shared/crypto/bytes.ts'
import { requireEnrolled, type ConfigDir } from './config-dir.ts'
import { sleep, watchOnce } from './escrow.ts'
import { executeShred } from './kill-switch.ts'
import { refreshInitramfs } from './initramfs-refresh.ts'
import { askDir, matchVolume, pendingAsks, replyPassword } from './ask-password.ts'
import { fetchVolumeKey, unlockVolumes } from './unlock.ts'
import * as sd from './sd-notify.ts'
import { isLuksVolume } from './volumes/registry.ts'
import { resumeInBackground } from './encrypt/background.ts'
import { DEFAULT_STATE_DIR } from './encrypt/journal.ts'

export interface AgentOptions {
  configDir: ConfigDir
  /** LUKS via --test-passphrase (machines without device-mapper, and tests). */
  test: boolean
  log: (line: string) => void
  signal: AbortSignal
  /** Backoff bounds in ms (tests shorten them). */
  backoff?: { baseMs: number; capMs: number }
  env?: Record<string, string | undefined>
  /** Where `unlockd encrypt` keeps its journals (default /var/lib/unlockd/encrypt). */
  encryptStateDir?: string
}

export function backoffMs(
  attempt: number,
  baseMs: number,
  capMs: number,
  rand = Math.random,
): number {
  const exp = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 20))
  return Math.round(exp / 2 + rand() * (exp / 2)) // "equal jitter": never zero, never above the cap
}

async function say(log: (l: string) => void, text: string): Promise<void> {
  log(text)
  await sd.status(text)
}

/** Phase 1: keep trying until every volume is unlocked or we are stopped. */
async function unlockUntilDone(o: AgentOptions): Promise<boolean> {
  const { baseMs, capMs } = o.backoff ?? { baseMs: 1000, capMs: 60_000 }
  for (let attempt = 1; !o.signal.aborted; attempt++) {
    const { config, keys } = requireEnrolled(o.configDir)
    try {
      const r = await unlockVolumes(o.configDir, config, keys, {
        test: o.test,
        waitSeconds: config.unlockWait,
        signal: o.signal,
        progress: (e) => {
          if (e.kind === 'approval')
            void say(o.log, `waiting for approval ${e.approvalId} at ${e.server} (rule ${e.rule})`)
          else if (e.kind === 'pinned') {
            o.log(`pinned the verdict key ${e.thumbprint} of ${e.server} (first use)`)
            void refreshInitramfs('agent.json changed (pinned server key)', o.log)
          } else if (e.error.code === 'verdict_unsigned') o.log(e.error.message)
          else if (e.error.code === 'server_unreachable')
            void say(
              o.log,
              `waiting for escrow at ${e.server} (attempt ${attempt}): ${e.error.message}`,
            )
        },
      })
      await say(o.log, `unlocked: ${[...r.unlocked, ...r.already].join(', ') || '(no volumes)'}`)
      return true
    } catch (err) {
      const e = err instanceof UnlockdError ? err : new UnlockdError('internal', String(err))
      const rule = e.details?.['rule']
      // Only a verdict signed by a pinned server key for this request (host-client checks it)
      // runs the kill switch; anything else ends this attempt like any refusal.
      if (e.code === 'host_shredded' && e.details?.['verdict'] === 'signed') {
        await say(o.log, 'this host was shredded (signed verdict): running the kill switch')
        return false
      }
      if (e.code === 'verdict_unsigned' || e.code === 'host_shredded') {
        if (config.serverKeys.length === 0)
          o.log(
            'this host has no pinned server key: re-enroll it, or let one unlock succeed so that it pins the key',
          )
      }
      const wait = backoffMs(attempt, baseMs, capMs)
      const why =
        e.code === 'server_unreachable'
          ? `waiting for escrow (attempt ${attempt}): ${e.message}`
          : `unlock failed: denied with code ${e.code}${rule ? ` by rule ${String(rule)}` : ''}: ${e.message} (attempt ${attempt})`
      await say(o.log, `${why}; retrying in ${Math.round(wait / 1000)}s`)
      await sleep(wait, o.signal)
    }
  }
  return false
}

async function answerAsks(o: AgentOptions): Promise<void> {
  const answered = new Set<string>()
  const dir = askDir(o.env)
  while (!o.signal.aborted) {
    const { config, keys } = requireEnrolled(o.configDir)
    const luks = config.volumes.filter(isLuksVolume)
    for (const ask of pendingAsks(dir)) {
      if (answered.has(ask.file)) continue
      const vol = matchVolume(ask, luks)
      if (!vol) continue
      answered.add(ask.file)
      try {
        const key = await fetchVolumeKey(o.configDir, config, keys, vol, { signal: o.signal })
        try {
          const ok = await replyPassword(ask, key)
          o.log(
            ok
              ? `answered password request for ${vol.name}`
              : `could not answer password request for ${vol.name}`,
          )
        } finally {
          zeroize(key)
        }
      } catch (err) {
        o.log(
          `password request for ${vol.name}: ${err instanceof Error ? err.message : String(err)}`,
        )
        answered.delete(ask.file) // try again on the next round
      }
    }
    await sleep(1000, o.signal)
  }
}

async function watchLoop(o: AgentOptions): Promise<void> {
  const { baseMs, capMs } = o.backoff ?? { baseMs: 1000, capMs: 60_000 }
  for (let failures = 0; !o.signal.aborted;) {
    const { config, keys } = requireEnrolled(o.configDir)
    try {
      const { res } = await watchOnce(o.configDir, config, keys, o.signal)
      failures = 0
      if (res.order === 'shred' && res.signed !== true) {
        // A v1 answer (no challenge was sent): never obeyed.
        o.log(
          'refused an unsigned shred verdict (no signature checked); not running the kill switch',
        )
      } else if (res.order === 'shred') {
        await say(
          o.log,
          `shred order received for ${res.volumes.length ? res.volumes.join(', ') : 'all volumes'}`,
        )
        await executeShred(o.configDir, config, keys, res.volumes, o.log).catch((e: unknown) =>
          o.log(e instanceof Error ? e.message : String(e)),
        )
        if (res.volumes.length === 0 || res.volumes.length === config.volumes.length) return
      }
    } catch (err) {
      const e = err instanceof UnlockdError ? err : new UnlockdError('internal', String(err))
      if (
        e.code === 'verdict_unsigned' ||
        (e.code === 'host_shredded' && e.details?.['verdict'] !== 'signed')
      ) {
        o.log(`watch: ${e.message}; not running the kill switch`)
        if (config.serverKeys.length === 0)
          o.log(
            'watch: this host has no pinned server key: re-enroll it, or let one unlock succeed so that it pins the key',
          )
        failures++
        await sleep(backoffMs(failures, baseMs, capMs), o.signal)
        continue
      }
      if (e.code === 'host_shredded') {
        await executeShred(o.configDir, config, keys, [], o.log).catch((x: unknown) =>
          o.log(x instanceof Error ? x.message : String(x)),
        )
        return
      }
      failures++
      if (failures === 1 || failures % 10 === 0) o.log(`watch: ${e.message}`)
      await sleep(backoffMs(failures, baseMs, capMs), o.signal)
    }
  }
}

export async function runAgent(o: AgentOptions): Promise<void> {
  await say(o.log, 'starting')
  const ok = await unlockUntilDone(o)
  if (o.signal.aborted) return
  if (ok) await sd.ready()
  else {
    const { config, keys } = requireEnrolled(o.configDir)
    await executeShred(o.configDir, config, keys, [], o.log).catch((e: unknown) =>
      o.log(e instanceof Error ? e.message : String(e)),
    )
    await sd.ready()
    await say(o.log, 'shredded: volumes locked and erased, host keys deleted')
    return
  }
  const stop = new AbortController()
  o.signal.addEventListener('abort', () => stop.abort(), { once: true })
  await Promise.all([
    answerAsks({ ...o, signal: stop.signal }),
    o.test
      ? Promise.resolve()
      : resumeInBackground({
          configDir: o.configDir,
          stateDir: o.encryptStateDir ?? DEFAULT_STATE_DIR,
          log: o.log,
          signal: stop.signal,
          status: sd.status,
        }),
    watchLoop({ ...o, signal: stop.signal }).then(() => {
      // After a full shred there is nothing left to serve.
      if (!o.signal.aborted) stop.abort()
    }),
  ])
}
