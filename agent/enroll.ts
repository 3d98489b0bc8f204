/**
 * `unlockd enroll`: make (or reuse) the host keys, bind each requested volume to a fresh random
 * key, seal it to the host (and the operator's recovery key), and register it with the escrow
 * server. Idempotent: a volume already recorded in agent.json whose binding is intact is left
 * alone. Order per volume: add the new key to the volume, then register; if registering fails,
 * the new key is removed again, so a failure half-way leaves the volume as it was.
 */
import { mkdirSync, rmdirSync, statSync, chownSync } from 'node:fs'
import { UnlockdError } from '../shared/errors.ts'
import type { AgentConfig, ServerEntry, VolumeConfig } from '../shared/config/agent.ts'
import { blobDigest, sealVolumeKey } from '../shared/crypto/blob.ts'
import { b64uEncode, randomBytes, utf8, zeroize } from '../shared/crypto/bytes.ts'
import {
  generateHostKeys,
  publicOf,
  thumbprint,
  type HostKeys,
  type PublicOkpJwk,
} from '../shared/crypto/keys.ts'
import { addVolumes, enroll as enrollRequest } from '../shared/client/host-client.ts'
import type { VolumeEnrollment } from '../shared/protocol/messages.ts'
import {
  configDir,
  loadConfig,
  loadKeys,
  saveConfig,
  saveKeys,
  transportFor,
  type ConfigDir,
} from './config-dir.ts'
import { addKeyslot, inspectLuks, killSlot, testKey } from './volumes/luks.ts'

export interface LuksRequest {
  kind: 'luks'
  device: string
  name: string
  existingKey: Uint8Array
}
export interface FscryptRequest {
  kind: 'fscrypt'
  path: string
  name: string
}
export type VolumeRequest = LuksRequest | FscryptRequest

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

/** LUKS keys are printable (base64url of 48 random bytes) so they also work as a typed or askpass passphrase. */
export function newLuksKey(): Uint8Array {
  const raw = randomBytes(48)
  const key = utf8(b64uEncode(raw))
  zeroize(raw)
  return key
}

async function luksAlreadyBound(
  vol: Extract<VolumeConfig, { kind: 'luks' }>,
  device: string,
): Promise<boolean> {
  const info = await inspectLuks(device)
  return info.uuid === vol.uuid && info.keyslots.includes(vol.keyslot)
}

interface Prepared {
  config: VolumeConfig
  enrollment: VolumeEnrollment
  rollback: () => Promise<void>
}

async function prepareLuks(req: LuksRequest, recipients: PublicOkpJwk[]): Promise<Prepared> {
  const info = await inspectLuks(req.device)
  const key = newLuksKey()
  try {
    const slot = await addKeyslot(req.device, req.existingKey, key)
    const blob = await sealVolumeKey(key, recipients)
    return {
      config: {
        name: req.name,
        kind: 'luks',
        device: req.device,
        uuid: info.uuid,
        keyslot: slot,
        blobDigest: await blobDigest(blob),
      },
      enrollment: { name: req.name, kind: 'luks', ref: info.uuid, blob },
      rollback: async () => {
        await killSlot(req.device, slot)
      },
    }
  } finally {
    zeroize(key)
  }
}

async function prepareFscrypt(req: FscryptRequest, recipients: PublicOkpJwk[]): Promise<Prepared> {
  const fs = await import('./volumes/fscrypt.ts')
  const target = await fs.checkFilesystem(req.path)
  if (target.policy !== undefined) {
    throw new UnlockdError(
      'volume_invalid',
      `${req.path} is already encrypted with key ${target.policy}, which this host did not enroll; use an empty, unencrypted directory`,
    )
  }
  const st = statSync(target.dir)
  const key = randomBytes(fs.FSCRYPT_KEY_BYTES)
  try {
    const id = await fs.addKey(target.mountpoint, key)
    await fs.setPolicy(target.dir, id)
    const blob = await sealVolumeKey(key, recipients)
    return {
      config: {
        name: req.name,
        kind: 'fscrypt',
        path: target.dir,
        mountpoint: target.mountpoint,
        keyId: id,
        blobDigest: await blobDigest(blob),
      },
      enrollment: { name: req.name, kind: 'fscrypt', ref: id, blob },
      rollback: async () => {
        // The directory is still empty: drop the key and recreate it unencrypted, same owner and mode.
        await fs.removeKey(target.mountpoint, id, { allUsers: true }).catch(() => undefined)
        rmdirSync(target.dir)
        mkdirSync(target.dir, { mode: st.mode & 0o7777 })
        chownSync(target.dir, st.uid, st.gid)
      },
    }
  } finally {
    zeroize(key)
  }
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
    const known = config?.volumes.find((v) => v.name === req.name)
    if (!known) {
      const sameTarget = config?.volumes.find(
        (v) =>
          (v.kind === 'luks' && req.kind === 'luks' && v.device === req.device) ||
          (v.kind === 'fscrypt' && req.kind === 'fscrypt' && v.path === req.path),
      )
      if (sameTarget)
        throw new UnlockdError(
          'conflict',
          `${req.kind === 'luks' ? req.device : req.path} is already enrolled as volume ${sameTarget.name}`,
        )
      todo.push(req)
      continue
    }
    if (known.kind !== req.kind)
      throw new UnlockdError(
        'conflict',
        `volume ${req.name} is enrolled as ${known.kind}, not ${req.kind}`,
      )
    if (known.kind === 'luks' && req.kind === 'luks') {
      if (!(await luksAlreadyBound(known, req.device))) {
        throw new UnlockdError(
          'conflict',
          `volume ${req.name}: keyslot ${known.keyslot} of ${req.device} no longer exists or the UUID changed; remove it from agent.json to enroll again`,
        )
      }
      // The operator's existing key must still open it (catches a wrong --luks device early).
      if (!(await testKey(req.device, req.existingKey)))
        throw new UnlockdError('luks_failed', `the existing key does not open ${req.device}`)
    }
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
  try {
    for (const req of todo) {
      prepared.push(
        req.kind === 'luks'
          ? await prepareLuks(req, recipients)
          : await prepareFscrypt(req, recipients),
      )
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
            await enrollRequest(t, { token: o.token, name: o.name, keys, volumes: enrollments })
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
