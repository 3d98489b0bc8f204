/**
 * One unlock pass: ask the escrow servers for the configured volumes (skipping those already
 * unlocked), apply each released key, and record a one-line reason per volume for `status`.
 */
import { UnlockdError } from '../shared/errors.ts'
import type { AgentConfig, VolumeConfig } from '../shared/config/agent.ts'
import type { HostKeys } from '../shared/crypto/keys.ts'
import type { ConfigDir } from './config-dir.ts'
import { obtainRelease, type Progress } from './escrow.ts'
import { applyRelease, volumeKeyFrom } from './apply.ts'
import { backendFor } from './volumes/registry.ts'
import { updateRunState } from './run-state.ts'

export interface UnlockOptions {
  volumes?: string[]
  /** LUKS: check the key with --test-passphrase instead of mapping (no device-mapper needed). */
  test?: boolean
  waitSeconds?: number
  progress?: Progress
  signal?: AbortSignal
}

export interface UnlockOutcome {
  unlocked: string[]
  already: string[]
}

export function selectVolumes(config: AgentConfig, names: string[] | undefined): VolumeConfig[] {
  if (!names || names.length === 0) return config.volumes
  return names.map((n) => {
    const v = config.volumes.find((x) => x.name === n)
    if (!v)
      throw new UnlockdError(
        'usage',
        `no volume named ${n} in agent.json (known: ${config.volumes.map((x) => x.name).join(', ') || 'none'})`,
      )
    return v
  })
}

const now = (): number => Math.floor(Date.now() / 1000)

/** Fetch the key of exactly one volume and return it (for --key-stdout / askpass). Caller zeroes. */
export async function fetchVolumeKey(
  c: ConfigDir,
  config: AgentConfig,
  keys: HostKeys,
  vol: VolumeConfig,
  o: UnlockOptions = {},
): Promise<Uint8Array> {
  const released = await obtainRelease(
    c,
    config,
    keys,
    [vol.name],
    o.waitSeconds ?? config.unlockWait,
    o.progress,
    o.signal,
  )
  const rel = released.find((r) => r.name === vol.name)
  if (!rel) throw new UnlockdError('volume_unknown', `the server released no key for ${vol.name}`)
  return volumeKeyFrom(rel, vol, keys)
}

export async function unlockVolumes(
  c: ConfigDir,
  config: AgentConfig,
  keys: HostKeys,
  o: UnlockOptions = {},
): Promise<UnlockOutcome> {
  const wanted = selectVolumes(config, o.volumes)
  const already: VolumeConfig[] = []
  const todo: VolumeConfig[] = []
  for (const v of wanted) {
    if (await (await backendFor(v)).isUnlocked(v, { test: o.test ?? false })) already.push(v)
    else todo.push(v)
  }
  if (todo.length === 0) return { unlocked: [], already: already.map((v) => v.name) }
  let released
  try {
    released = await obtainRelease(
      c,
      config,
      keys,
      todo.map((v) => v.name),
      o.waitSeconds ?? config.unlockWait,
      o.progress,
      o.signal,
    )
  } catch (err) {
    const e = err instanceof UnlockdError ? err : new UnlockdError('internal', String(err))
    const rule = e.details?.['rule']
    updateRunState((s) => {
      for (const v of todo)
        s.volumes[v.name] = {
          state: e.code === 'approval_pending' ? 'waiting' : 'failed',
          at: now(),
          code: e.code,
          reason: `${e.message}${rule ? ` (rule ${String(rule)})` : ''}`,
        }
      s.lastError = { at: now(), code: e.code, message: e.message }
    })
    throw e
  }
  const unlocked: string[] = []
  const failures: UnlockdError[] = []
  for (const v of todo) {
    const rel = released.find((r) => r.name === v.name)
    try {
      if (!rel) throw new UnlockdError('volume_unknown', `the server released no key for ${v.name}`)
      await applyRelease(rel, v, keys, o.test ?? false)
      unlocked.push(v.name)
      updateRunState((s) => {
        s.volumes[v.name] = { state: 'unlocked', at: now(), code: null, reason: null }
      })
    } catch (err) {
      const e = err instanceof UnlockdError ? err : new UnlockdError('internal', String(err))
      failures.push(e)
      updateRunState((s) => {
        s.volumes[v.name] = { state: 'failed', at: now(), code: e.code, reason: e.message }
        s.lastError = { at: now(), code: e.code, message: e.message }
      })
    }
  }
  if (failures.length) throw failures[0] as UnlockdError
  return { unlocked, already: already.map((v) => v.name) }
}
