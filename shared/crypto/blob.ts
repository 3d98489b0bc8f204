/**
 * Escrow blobs: a volume key sealed (General JWE, ECDH-ES+A256KW / A256GCM) to the host's
 * sealing key and optionally to the operator's recovery key. The server stores them but cannot
 * open them.
 */
import { UnlockdError } from '../errors.ts'
import { BLOB_CTY, CONTENT_ENC, SEALING_ALG } from './algorithms.ts'
import { sha256B64u } from './bytes.ts'
import { thumbprint, type PrivateOkpJwk, type PublicOkpJwk } from './keys.ts'
import { openGeneralJwe, sealGeneralJwe, type GeneralJwe } from './okp.ts'

export type EscrowBlob = GeneralJwe

const MAX_BLOB_JSON = 16 * 1024

/**
 * Seal a volume key to one or more recipients (host first, recovery key optional).
 * @example const blob = await sealVolumeKey(vk, [hostSealingPub, recoveryPub])
 */
export async function sealVolumeKey(
  volumeKey: Uint8Array,
  recipients: PublicOkpJwk[],
): Promise<EscrowBlob> {
  if (volumeKey.byteLength < 16 || volumeKey.byteLength > 512)
    throw new RangeError('volume key must be 16..512 bytes')
  if (recipients.length === 0) throw new RangeError('at least one recipient is required')
  const to = []
  for (const r of recipients) to.push({ key: r, kid: await thumbprint(r) })
  return sealGeneralJwe(volumeKey, { enc: CONTENT_ENC, cty: BLOB_CTY }, to)
}

/** Structural validation of an untrusted blob. Returns a fresh copy with only known members. */
export function parseEscrowBlob(value: unknown): EscrowBlob {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new UnlockdError('protocol_invalid', 'blob must be a JWE object')
  const v = value as Record<string, unknown>
  const str = (k: string, optional = false): string | undefined => {
    const x = v[k]
    if (x === undefined && optional) return undefined
    if (typeof x !== 'string' || x.length > MAX_BLOB_JSON || !/^[A-Za-z0-9_-]*$/.test(x))
      throw new UnlockdError('protocol_invalid', `blob "${k}" must be base64url`)
    return x
  }
  const recipients = v['recipients']
  if (!Array.isArray(recipients) || recipients.length < 1 || recipients.length > 4)
    throw new UnlockdError('protocol_invalid', 'blob must have 1..4 recipients')
  const out: EscrowBlob = {
    protected: str('protected') as string,
    iv: str('iv') as string,
    ciphertext: str('ciphertext') as string,
    tag: str('tag') as string,
    recipients: recipients.map((r: unknown) => {
      if (typeof r !== 'object' || r === null)
        throw new UnlockdError('protocol_invalid', 'blob recipient must be an object')
      const rr = r as Record<string, unknown>
      const header = rr['header']
      const ek = rr['encrypted_key']
      if (typeof ek !== 'string' || !/^[A-Za-z0-9_-]+$/.test(ek))
        throw new UnlockdError('protocol_invalid', 'blob recipient needs encrypted_key')
      if (typeof header !== 'object' || header === null)
        throw new UnlockdError('protocol_invalid', 'blob recipient needs a header')
      const h = header as Record<string, unknown>
      if (
        h['alg'] !== SEALING_ALG ||
        typeof h['kid'] !== 'string' ||
        !/^[A-Za-z0-9_-]{43}$/.test(h['kid'])
      ) {
        throw new UnlockdError(
          'protocol_invalid',
          `blob recipient must use ${SEALING_ALG} with a kid`,
        )
      }
      // jose puts `epk` in the shared protected header for one recipient, per recipient for several.
      const epk = h['epk']
      if (epk === undefined)
        return { encrypted_key: ek, header: { alg: SEALING_ALG, kid: h['kid'] } }
      if (typeof epk !== 'object' || epk === null)
        throw new UnlockdError('protocol_invalid', 'blob epk must be an object')
      const e = epk as Record<string, unknown>
      if (e['kty'] !== 'OKP' || typeof e['crv'] !== 'string' || typeof e['x'] !== 'string')
        throw new UnlockdError('protocol_invalid', 'blob epk must be an OKP key')
      return {
        encrypted_key: ek,
        header: { alg: SEALING_ALG, kid: h['kid'], epk: { kty: 'OKP', crv: e['crv'], x: e['x'] } },
      }
    }),
  }
  if (JSON.stringify(out).length > MAX_BLOB_JSON)
    throw new UnlockdError('protocol_invalid', 'blob is too large')
  return out
}

/** Digest that identifies a blob's exact bytes (canonical member order), pinned by the host at enrollment. */
export async function blobDigest(blob: EscrowBlob): Promise<string> {
  return sha256B64u(JSON.stringify(parseEscrowBlob(blob)))
}

/**
 * Open a blob with a private sealing key (host key or recovery key).
 * Throws `decryption_failed` when the blob is not for this key, and `integrity_failed` when it
 * names this key but fails to authenticate (tampered). Never returns partial plaintext.
 * The caller owns (and must zeroize) the returned buffer.
 */
export async function openEscrowBlob(blob: EscrowBlob, key: PrivateOkpJwk): Promise<Uint8Array> {
  const parsed = parseEscrowBlob(blob)
  const kid = await thumbprint(key)
  if (!parsed.recipients.some((r) => r.header.kid === kid)) {
    throw new UnlockdError('decryption_failed', 'blob is not sealed to this key')
  }
  const mine = parsed.recipients.find((r) => r.header.kid === kid) as EscrowBlob['recipients'][0]
  try {
    const { plaintext, protectedHeader } = await openGeneralJwe(parsed, mine, key)
    if (protectedHeader['cty'] !== BLOB_CTY) {
      plaintext.fill(0)
      throw new Error('unexpected cty')
    }
    return plaintext
  } catch (cause) {
    throw new UnlockdError(
      'integrity_failed',
      'blob failed authentication: it was altered or corrupted',
      { cause },
    )
  }
}
