/**
 * Applying a released blob to its volume: check the blob is the one pinned at enrollment, open
 * it with the host's sealing key, hand the key to the volume's backend (cryptsetup on stdin, or
 * the kernel by ioctl), and zero it. Volume keys never touch argv, env or disk.
 */
import { UnlockdError } from '../shared/errors.ts'
import type { VolumeConfig } from '../shared/config/agent.ts'
import { blobDigest, openEscrowBlob } from '../shared/crypto/blob.ts'
import { zeroize } from '../shared/crypto/bytes.ts'
import type { HostKeys } from '../shared/crypto/keys.ts'
import type { ReleasedVolume } from '../shared/protocol/messages.ts'
import { backendFor } from './volumes/registry.ts'

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

/** Unlock `vol` with the key in `rel`; `test` (LUKS) only checks the key. */
export async function applyRelease(
  rel: ReleasedVolume,
  vol: VolumeConfig,
  keys: HostKeys,
  test: boolean,
): Promise<void> {
  const key = await volumeKeyFrom(rel, vol, keys)
  try {
    await (await backendFor(vol)).unlock(vol, key, { test })
  } finally {
    zeroize(key)
  }
}
