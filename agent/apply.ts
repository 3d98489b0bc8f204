/**
 * Applying a released blob to its volume: check the blob is the one pinned at enrollment, open
 * it with the host's sealing key, hand the key to cryptsetup (stdin) or the kernel (ioctl), and
 * zero it. Volume keys never touch argv, env or disk.
 */
import { UnlockdError } from '../shared/errors.ts'
import type { FscryptVolumeConfig, LuksVolumeConfig, VolumeConfig } from '../shared/config/agent.ts'
import { blobDigest, openEscrowBlob } from '../shared/crypto/blob.ts'
import { zeroize } from '../shared/crypto/bytes.ts'
import type { HostKeys } from '../shared/crypto/keys.ts'
import type { ReleasedVolume } from '../shared/protocol/messages.ts'
import { openVolume } from './volumes/luks.ts'
import { existsSync } from 'node:fs'

/** Open the blob after checking it is byte-for-byte the one this host enrolled. */
export async function volumeKeyFrom(
  rel: ReleasedVolume,
  vol: VolumeConfig,
  keys: HostKeys,
): Promise<Uint8Array> {
  if ((await blobDigest(rel.blob)) !== vol.blobDigest) {
    throw new UnlockdError(
      'integrity_failed',
      `the blob released for ${vol.name} is not the one this host enrolled (altered in transit or at rest)`,
    )
  }
  return openEscrowBlob(rel.blob, keys.sealing)
}

export function luksDevice(vol: LuksVolumeConfig): string {
  if (vol.device.startsWith('UUID=')) return `/dev/disk/by-uuid/${vol.device.slice(5)}`
  if (existsSync(vol.device)) return vol.device
  const byUuid = `/dev/disk/by-uuid/${vol.uuid}`
  return existsSync(byUuid) ? byUuid : vol.device
}

export function mapperName(vol: LuksVolumeConfig): string {
  return vol.name
}

export async function unlockLuks(
  vol: LuksVolumeConfig,
  key: Uint8Array,
  test: boolean,
): Promise<void> {
  try {
    await openVolume(luksDevice(vol), mapperName(vol), key, { test })
  } finally {
    zeroize(key)
  }
}

export async function unlockFscrypt(vol: FscryptVolumeConfig, key: Uint8Array): Promise<void> {
  const { addKey } = await import('./volumes/fscrypt.ts')
  try {
    const id = await addKey(vol.mountpoint, key)
    if (id !== vol.keyId) {
      // A wrong key yields another identifier; take it out again so nothing half-works.
      const { removeKey } = await import('./volumes/fscrypt.ts')
      await removeKey(vol.mountpoint, id).catch(() => undefined)
      throw new UnlockdError(
        'integrity_failed',
        `the key released for ${vol.name} has identifier ${id}, expected ${vol.keyId}`,
      )
    }
  } finally {
    zeroize(key)
  }
}

export async function isUnlocked(vol: VolumeConfig, test: boolean): Promise<boolean> {
  if (vol.kind === 'luks') return !test && existsSync(`/dev/mapper/${mapperName(vol)}`)
  const { keyStatus } = await import('./volumes/fscrypt.ts')
  try {
    return (await keyStatus(vol.mountpoint, vol.keyId)) === 'present'
  } catch {
    return false
  }
}
