/**
 * The KEK layer at rest: AES-256-GCM over an escrow blob (or a TOTP secret), with AAD binding
 * the record's identity and the KEK version, so a wrapped value cannot be moved to another host,
 * volume or version without failing authentication.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { UnlockdError } from '../../shared/errors.ts'

export function blobAad(hostId: string, volume: string, kekVersion: number): string {
  return `unlockd/v1/blob|${hostId}|${volume}|${kekVersion}`
}
export function totpAad(operatorId: string, kekVersion: number): string {
  return `unlockd/v1/totp|${operatorId}|${kekVersion}`
}

export function wrap(
  kek: Uint8Array,
  plaintext: Uint8Array,
  aad: string,
): { iv: Uint8Array; ct: Uint8Array } {
  const iv = randomBytes(12)
  const c = createCipheriv('aes-256-gcm', kek, iv)
  c.setAAD(Buffer.from(aad))
  const ct = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()])
  return { iv: new Uint8Array(iv), ct: new Uint8Array(ct) }
}

/** Throws `integrity_failed` for any failure (wrong KEK, tampered ciphertext, moved record). */
export function unwrap(kek: Uint8Array, iv: Uint8Array, ct: Uint8Array, aad: string): Uint8Array {
  try {
    if (ct.byteLength < 17 || iv.byteLength !== 12) throw new Error('short')
    const d = createDecipheriv('aes-256-gcm', kek, iv)
    d.setAAD(Buffer.from(aad))
    d.setAuthTag(ct.subarray(ct.byteLength - 16))
    return new Uint8Array(Buffer.concat([d.update(ct.subarray(0, ct.byteLength - 16)), d.final()]))
  } catch (cause) {
    throw new UnlockdError(
      'integrity_failed',
      'stored record failed authentication (tampered, or wrapped by another key)',
      { cause },
    )
  }
}
