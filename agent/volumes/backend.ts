/**
 * What the agent needs from a kind of volume (a LUKS2 device, an fscrypt directory): bind it to a
 * fresh escrowed key and undo that, unlock and lock it, tell whether it is unlocked, and destroy
 * its key for the kill switch. Each kind implements this once (agent/volumes/*-backend.ts) and
 * agent/volumes/registry.ts picks the implementation for a volume; the rest of the agent never
 * asks which kind a volume is.
 */
import type { VolumeConfig } from '../../shared/config/agent.ts'
import { blobDigest, sealVolumeKey } from '../../shared/crypto/blob.ts'
import type { PublicOkpJwk } from '../../shared/crypto/keys.ts'
import type { VolumeEnrollment } from '../../shared/protocol/messages.ts'

export type VolumeKind = VolumeConfig['kind']
export type VolumeOf<K extends VolumeKind> = Extract<VolumeConfig, { kind: K }>

/** Enroll a LUKS2 device: a new keyslot is added, authorised by a key that opens it now. */
export interface LuksRequest {
  kind: 'luks'
  device: string
  name: string
  existingKey: Uint8Array
  /**
   * Escrow `existingKey` itself, in the keyslot it already has, instead of adding one. For a
   * volume in LUKS2 reencryption (cryptsetup adds no keyslot then), whose key was made by
   * unlockd for this purpose.
   */
  adopt?: boolean
}
/** Enroll an empty, unencrypted directory on a filesystem with the encrypt feature. */
export interface FscryptRequest {
  kind: 'fscrypt'
  path: string
  name: string
}
export type VolumeRequest = LuksRequest | FscryptRequest
export type RequestOf<K extends VolumeKind> = Extract<VolumeRequest, { kind: K }>

/** A volume bound to a new key but not registered yet: what to record, what to send, how to undo. */
export interface Prepared {
  config: VolumeConfig
  enrollment: VolumeEnrollment
  /** Take the new key off the volume again, leaving it as it was before `prepare`. */
  rollback: () => Promise<void>
}

export interface ShredOptions {
  /** Close (LUKS: unmap) before erasing, so nothing keeps using the volume key in memory. */
  closeFirst: boolean
  /** One line per step done, for the shred report; the caller adds the kind and name. */
  report: (step: string) => void
}

export interface VolumeBackend<K extends VolumeKind> {
  readonly kind: K
  /** What the volume lives on, for messages and `status`: the LUKS device or the fscrypt directory. */
  target(v: VolumeOf<K> | RequestOf<K>): string
  /**
   * For a request naming a volume agent.json already records: throw `conflict` (or the error that
   * says what is wrong) unless the volume is still bound the way agent.json says.
   */
  checkBound(vol: VolumeOf<K>, req: RequestOf<K>): Promise<void>
  /** Bind the volume to a fresh random key sealed to `recipients` (LUKS: a keyslot; fscrypt: a policy). */
  prepare(req: RequestOf<K>, recipients: PublicOkpJwk[]): Promise<Prepared>
  /**
   * Like `prepare`, for a target that still holds plaintext data: encrypt it in place under the
   * fresh key, then bind that key. Not implemented by any backend yet; without it a target must
   * already be encrypted (LUKS) or be an empty directory (fscrypt).
   */
  encrypt?(req: RequestOf<K>, recipients: PublicOkpJwk[]): Promise<Prepared>
  /**
   * Unlock with the released key. `test` (LUKS) only checks the key, with no device-mapper.
   * The caller owns `key` and zeroes it.
   */
  unlock(vol: VolumeOf<K>, key: Uint8Array, opts: { test: boolean }): Promise<void>
  /** Lock again (LUKS: close the mapping; fscrypt: remove the key from the kernel). */
  lock(vol: VolumeOf<K>): Promise<void>
  /** Whether it is unlocked now; false when that cannot be told. */
  isUnlocked(vol: VolumeOf<K>, opts: { test: boolean }): Promise<boolean>
  /** Kill switch: make the data unreadable on this host, reporting each step. */
  shred(vol: VolumeOf<K>, opts: ShredOptions): Promise<void>
}

/**
 * What `prepare` returns once `key` is on the volume: the key sealed to `recipients`, the
 * agent.json record (the backend's fields, plus the blob digest it pins), and the enrollment the
 * server stores, with `ref` (LUKS UUID, fscrypt key identifier) to tell volumes apart.
 */
export async function sealedBinding<K extends VolumeKind>(
  req: RequestOf<K>,
  key: Uint8Array,
  recipients: PublicOkpJwk[],
  bound: {
    record: Omit<VolumeOf<K>, 'name' | 'kind' | 'blobDigest'>
    ref: string
    rollback: () => Promise<void>
  },
): Promise<Prepared> {
  const blob = await sealVolumeKey(key, recipients)
  const { name, kind } = req
  return {
    config: { name, kind, ...bound.record, blobDigest: await blobDigest(blob) } as VolumeOf<K>,
    enrollment: { name, kind, ref: bound.ref, blob },
    rollback: bound.rollback,
  }
}
