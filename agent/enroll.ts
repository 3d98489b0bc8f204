/**
 * `unlockd enroll`: make (or reuse) the host keys, bind each requested volume to a fresh random
 * key, seal it to the host (and the operator's recovery key), and register it with the escrow
 * server. Idempotent: a volume already recorded in agent.json whose binding is intact is left
 * alone. Order per volume: add the new key to the volume, then register; if registering fails,
 * the new key is removed again, so a failure half-way leaves the volume as it was.
 */
import { UnlockdError } from '../shared/errors.ts'
import type { AgentConfig, ServerEntry } from '../shared/config/agent.ts'
import {
  generateHostKeys,
  publicOf,
  thumbprint,
  type HostKeys,
  type PublicOkpJwk,
} from '../shared/crypto/keys.ts'
import { addVolumes, enroll as enrollRequest } from '../shared/client/host-client.ts'
import {
  configDir,
  loadConfig,
  loadKeys,
  saveConfig,
  saveKeys,
  transportFor,
  type ConfigDir,
} from './config-dir.ts'
import type { Prepared, VolumeRequest } from './volumes/backend.ts'
import { backendFor, sameTarget } from './volumes/registry.ts'

export interface EnrollOptions {
  configDir?: string
  servers: ServerEntry[]
  /** One-time token; needed only when this host is not enrolled yet. */
  token?: string | undefined
  name: string
  volumes: VolumeRequest[]
  recoveryKey?: PublicOkpJwk | undefined
  log?: (line: string) => void
}

export interface EnrollResult {
  hostId: string
  name: string
  added: string[]
  unchanged: string[]
  changed: boolean
}

export async function enrollHost(o: EnrollOptions): Promise<EnrollResult> {
  const c: ConfigDir = configDir(o.configDir)
  const log = o.log ?? (() => {})
  let keys: HostKeys | undefined = loadKeys(c)
  const config: AgentConfig | undefined = loadConfig(c)
  if (config && !keys)
    throw new UnlockdError('config_invalid', `${c.configPath} exists but the host keys are missing`)
  if (!keys) {
    keys = await generateHostKeys()
    saveKeys(c, keys)
    log(`made host keys in ${c.dir}`)
  }
  const hostId = await thumbprint(publicOf(keys.signing))
  if (config && config.hostId !== hostId)
    throw new UnlockdError(
      'config_invalid',
      `${c.configPath} belongs to host id ${config.hostId}, not these keys`,
    )
  if (config && config.name !== o.name)
    throw new UnlockdError(
      'conflict',
      `this host is enrolled as ${config.name}; --name ${o.name} differs`,
    )

  const names = new Set<string>()
  for (const v of o.volumes) {
    if (names.has(v.name)) throw new UnlockdError('usage', `volume name ${v.name} is given twice`)
    names.add(v.name)
  }

  // Decide what is new. An already-bound volume must still be bound where agent.json says.
  const unchanged: string[] = []
  const todo: VolumeRequest[] = []
  for (const req of o.volumes) {
    const backend = await backendFor(req)
    const known = config?.volumes.find((v) => v.name === req.name)
    if (!known) {
      for (const v of config?.volumes ?? []) {
        if (await sameTarget(v, req))
          throw new UnlockdError(
            'conflict',
            `${backend.target(req)} is already enrolled as volume ${v.name}`,
          )
      }
      todo.push(req)
      continue
    }
    if (known.kind !== req.kind)
      throw new UnlockdError(
        'conflict',
        `volume ${req.name} is enrolled as ${known.kind}, not ${req.kind}`,
      )
    await backend.checkBound(known, req)
    unchanged.push(req.name)
  }

  const servers = o.servers.length ? o.servers : (config?.servers ?? [])
  if (servers.length === 0) throw new UnlockdError('usage', 'give at least one --server URL')
  const recipients = [publicOf(keys.sealing), ...(o.recoveryKey ? [o.recoveryKey] : [])]

  if (todo.length === 0 && config) {
    if (JSON.stringify(config.servers) !== JSON.stringify(servers) && o.servers.length) {
      saveConfig(c, { ...config, servers })
      return { hostId, name: o.name, added: [], unchanged, changed: true }
    }
    return { hostId, name: o.name, added: [], unchanged, changed: false }
  }

  const prepared: Prepared[] = []
  let pinned: PublicOkpJwk[] = config?.serverKeys ?? []
  try {
    for (const req of todo) {
      prepared.push(await (await backendFor(req)).prepare(req, recipients))
      log(`bound ${req.name}`)
    }
    const enrollments = prepared.map((p) => p.enrollment)
    // Register with the first server that answers; servers share one store.
    let lastErr: unknown
    let done = false
    for (const server of servers) {
      const t = transportFor(c, server, 15_000)
      try {
        if (!config) {
          if (!o.token)
            throw new UnlockdError(
              'usage',
              'this host is not enrolled yet: an enrollment token is needed (--token-file or UNLOCKD_ENROLL_TOKEN)',
            )
          try {
            const r = await enrollRequest(t, {
              token: o.token,
              name: o.name,
              keys,
              volumes: enrollments,
            })
            // Pin the server's verdict key: only verdicts it signs can make this host erase.
            if (r.serverKey) {
              pinned = [r.serverKey]
              log(`pinned server key ${r.serverKeyThumbprint ?? ''}`.trim())
            }
          } catch (err) {
            // The server may have committed before the answer was lost: then these keys are known.
            if (
              err instanceof UnlockdError &&
              err.code === 'host_exists' &&
              err.message.includes('with these keys')
            )
              await addVolumes(t, { keys, hostId, volumes: enrollments })
            else throw err
          }
        } else {
          await addVolumes(t, { keys, hostId, volumes: enrollments })
        }
        done = true
        break
      } catch (err) {
        lastErr = err
        if (
          !(err instanceof UnlockdError) ||
          (err.code !== 'server_unreachable' && err.code !== 'tls_pin_mismatch')
        )
          break
      }
    }
    if (!done) throw lastErr
  } catch (err) {
    for (const p of prepared.reverse()) {
      await p
        .rollback()
        .catch((e: unknown) =>
          log(`rollback of ${p.config.name} failed: ${e instanceof Error ? e.message : String(e)}`),
        )
    }
    throw err
  }
  const next: AgentConfig = {
    version: 1,
    name: o.name,
    hostId,
    servers,
    volumes: [...(config?.volumes ?? []), ...prepared.map((p) => p.config)],
    serverKeys: pinned,
    onShred: config?.onShred ?? 'close-then-erase',
    unlockWait: config?.unlockWait ?? 300,
    requestTimeoutMs: config?.requestTimeoutMs ?? 5000,
  }
  saveConfig(c, next)
  return {
    hostId,
    name: o.name,
    added: prepared.map((p) => p.config.name),
    unchanged,
    changed: true,
  }
}
