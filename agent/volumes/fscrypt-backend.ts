/**
 * fscrypt v2 directories as a VolumeBackend: enrollment sets a v2 policy for a fresh 64-byte key
 * on an empty directory, unlocking adds the key to the kernel, the kill switch removes it for all
 * users. Loaded only when a volume needs it (agent/volumes/registry.ts).
 */
import { chownSync, mkdirSync, rmdirSync, statSync } from 'node:fs'
import { randomBytes, zeroize } from '../../shared/crypto/bytes.ts'
import { UnlockdError } from '../../shared/errors.ts'
import { sealedBinding, type VolumeBackend } from './backend.ts'
import {
  FSCRYPT_KEY_BYTES,
  addKey,
  checkFilesystem,
  keyStatus,
  removeKey,
  setPolicy,
} from './fscrypt.ts'

/** How often, one second apart, a shred tries again while open files keep the key busy. */
const BUSY_RETRIES = 5

export const fscryptBackend: VolumeBackend<'fscrypt'> = {
  kind: 'fscrypt',

  target: (v) => v.path,

  // Nothing on disk records the binding beyond the policy itself; the key identifier is checked
  // at every unlock.
  checkBound: async () => undefined,

  async prepare(req, recipients) {
    const target = await checkFilesystem(req.path)
    if (target.policy !== undefined) {
      throw new UnlockdError(
        'volume_invalid',
        `${req.path} is already encrypted with key ${target.policy}, which this host did not enroll; use an empty, unencrypted directory`,
      )
    }
    const st = statSync(target.dir)
    const key = randomBytes(FSCRYPT_KEY_BYTES)
    try {
      const id = await addKey(target.mountpoint, key)
      await setPolicy(target.dir, id)
      return await sealedBinding(req, key, recipients, {
        record: { path: target.dir, mountpoint: target.mountpoint, keyId: id },
        ref: id,
        rollback: async () => {
          // The directory is still empty: drop the key and recreate it unencrypted, same owner and mode.
          await removeKey(target.mountpoint, id, { allUsers: true }).catch(() => undefined)
          rmdirSync(target.dir)
          mkdirSync(target.dir, { mode: st.mode & 0o7777 })
          chownSync(target.dir, st.uid, st.gid)
        },
      })
    } finally {
      zeroize(key)
    }
  },

  async unlock(vol, key) {
    const id = await addKey(vol.mountpoint, key)
    if (id !== vol.keyId) {
      // A wrong key yields another identifier; take it out again so nothing half-works.
      await removeKey(vol.mountpoint, id).catch(() => undefined)
      throw new UnlockdError(
        'integrity_failed',
        `the key released for ${vol.name} has identifier ${id}, expected ${vol.keyId}`,
      )
    }
  },

  async lock(vol) {
    if ((await removeKey(vol.mountpoint, vol.keyId)) === 'busy')
      throw new UnlockdError(
        'volume_busy',
        `files under ${vol.path} are still open, so its key is only partly removed: close them and lock again`,
      )
  },

  async isUnlocked(vol) {
    try {
      return (await keyStatus(vol.mountpoint, vol.keyId)) === 'present'
    } catch {
      return false
    }
  },

  async shred(vol, { report }) {
    let r = await removeKey(vol.mountpoint, vol.keyId, { allUsers: true })
    // Open files keep a busy key alive; retry a few times, then report it.
    for (let i = 0; r === 'busy' && i < BUSY_RETRIES; i++) {
      await new Promise((res) => setTimeout(res, 1000))
      r = await removeKey(vol.mountpoint, vol.keyId, { allUsers: true })
    }
    report(
      `key ${r === 'busy' ? 'removed but files still open (incompletely removed until they close)' : r}`,
    )
  },
}
