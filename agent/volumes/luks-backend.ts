/**
 * LUKS2 volumes as a VolumeBackend: enrollment adds a keyslot holding a fresh printable key,
 * unlocking opens /dev/mapper/NAME, the kill switch erases every keyslot (luksErase).
 */
import { existsSync } from 'node:fs'
import type { LuksVolumeConfig } from '../../shared/config/agent.ts'
import { b64uEncode, randomBytes, utf8, zeroize } from '../../shared/crypto/bytes.ts'
import { UnlockdError, describeError } from '../../shared/errors.ts'
import { sealedBinding, type VolumeBackend } from './backend.ts'
import {
  addKeyslot,
  closeVolume,
  eraseLuks,
  inspectLuks,
  killSlot,
  openVolume,
  testKey,
} from './luks.ts'

/** The device to hand cryptsetup: the configured path, else the stable by-uuid link. */
export function luksDevice(vol: LuksVolumeConfig): string {
  if (vol.device.startsWith('UUID=')) return `/dev/disk/by-uuid/${vol.device.slice(5)}`
  if (existsSync(vol.device)) return vol.device
  const byUuid = `/dev/disk/by-uuid/${vol.uuid}`
  return existsSync(byUuid) ? byUuid : vol.device
}

export function mapperName(vol: LuksVolumeConfig): string {
  return vol.name
}

/** LUKS keys are printable (base64url of 48 random bytes) so they also work as a typed or askpass passphrase. */
export function newLuksKey(): Uint8Array {
  const raw = randomBytes(48)
  const key = utf8(b64uEncode(raw))
  zeroize(raw)
  return key
}

export const luksBackend: VolumeBackend<'luks'> = {
  kind: 'luks',

  target: (v) => v.device,

  async checkBound(vol, req) {
    const info = await inspectLuks(req.device)
    if (info.uuid !== vol.uuid || !info.keyslots.includes(vol.keyslot)) {
      throw new UnlockdError(
        'conflict',
        `volume ${req.name}: keyslot ${vol.keyslot} of ${req.device} no longer exists or the UUID changed; remove it from agent.json to enroll again`,
      )
    }
    // The operator's existing key must still open it (catches a wrong --luks device early).
    if (!(await testKey(req.device, req.existingKey)))
      throw new UnlockdError('luks_failed', `the existing key does not open ${req.device}`)
  },

  async prepare(req, recipients) {
    const info = await inspectLuks(req.device)
    if (req.adopt === true) {
      let slot: number | undefined
      for (const s of info.keyslots)
        if (await testKey(req.device, req.existingKey, s)) {
          slot = s
          break
        }
      if (slot === undefined)
        throw new UnlockdError('luks_failed', `the existing key does not open ${req.device}`)
      return sealedBinding(req, req.existingKey, recipients, {
        record: { device: req.device, uuid: info.uuid, keyslot: slot },
        ref: info.uuid,
        rollback: async () => {}, // nothing was added
      })
    }
    const key = newLuksKey()
    try {
      const slot = await addKeyslot(req.device, req.existingKey, key)
      return await sealedBinding(req, key, recipients, {
        record: { device: req.device, uuid: info.uuid, keyslot: slot },
        ref: info.uuid,
        rollback: async () => {
          await killSlot(req.device, slot)
        },
      })
    } finally {
      zeroize(key)
    }
  },

  unlock: (vol, key, { test }) => openVolume(luksDevice(vol), mapperName(vol), key, { test }),

  lock: (vol) => closeVolume(mapperName(vol)),

  // With `test` nothing is ever mapped, so a volume counts as locked and is always tried.
  isUnlocked: async (vol, { test }) => !test && existsSync(`/dev/mapper/${mapperName(vol)}`),

  async shred(vol, { closeFirst, report }) {
    if (closeFirst) {
      try {
        await luksBackend.lock(vol)
        report('closed')
      } catch (err) {
        report(`close failed (${describeError(err)}); erasing anyway`)
      }
    }
    await eraseLuks(luksDevice(vol))
    report('header keyslots erased (luksErase)')
  },
}
