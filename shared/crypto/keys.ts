/**
 * Host key pairs: an Ed25519 signing key (the host's identity) and an X25519 sealing key
 * (recipient of escrow blobs). Keys travel as JWKs; the host id is the signing key's RFC 7638
 * thumbprint, so an id cannot be claimed without the key.
 */
import { calculateJwkThumbprint, type JWK } from 'jose'
import { UnlockdError } from '../errors.ts'
import { SEALING_CRV, SIGNING_CRV } from './algorithms.ts'
import { generateOkp } from './okp.ts'

/** Public OKP JWK as it appears on the wire and in the database. */
export interface PublicOkpJwk {
  kty: 'OKP'
  crv: string
  x: string
}

/** Private OKP JWK as stored on the host (mode 0600). */
export interface PrivateOkpJwk extends PublicOkpJwk {
  d: string
}

export interface HostKeys {
  signing: PrivateOkpJwk
  sealing: PrivateOkpJwk
}

function asOkp(jwk: JWK, crv: string, priv: true): PrivateOkpJwk
function asOkp(jwk: JWK, crv: string, priv: false): PublicOkpJwk
function asOkp(jwk: JWK, crv: string, priv: boolean): PublicOkpJwk | PrivateOkpJwk {
  if (jwk.kty !== 'OKP' || jwk.crv !== crv || typeof jwk.x !== 'string') {
    throw new UnlockdError('protocol_invalid', `expected an OKP ${crv} key`)
  }
  if (priv) {
    if (typeof jwk.d !== 'string')
      throw new UnlockdError('protocol_invalid', 'private key has no "d"')
    return { kty: 'OKP', crv, x: jwk.x, d: jwk.d }
  }
  return { kty: 'OKP', crv, x: jwk.x }
}

/**
 * Make a fresh host key set.
 * @example const keys = await generateHostKeys()
 */
export async function generateHostKeys(): Promise<HostKeys> {
  return {
    signing: asOkp(generateOkp(SIGNING_CRV), SIGNING_CRV, true),
    sealing: asOkp(generateOkp(SEALING_CRV), SEALING_CRV, true),
  }
}

/** A key pair for the operator's offline recovery key (same shape as a sealing key). */
export async function generateRecoveryKey(): Promise<PrivateOkpJwk> {
  return asOkp(generateOkp(SEALING_CRV), SEALING_CRV, true)
}

export function publicOf(jwk: PrivateOkpJwk | PublicOkpJwk): PublicOkpJwk {
  return { kty: 'OKP', crv: jwk.crv, x: jwk.x }
}

/** Validate an untrusted public signing key. Throws `protocol_invalid`. */
export function parseSigningPublicKey(value: unknown): PublicOkpJwk {
  if (typeof value !== 'object' || value === null)
    throw new UnlockdError('protocol_invalid', 'signing key must be a JWK object')
  const jwk = asOkp(value as JWK, SIGNING_CRV, false)
  if (!/^[A-Za-z0-9_-]{43}$/.test(jwk.x))
    throw new UnlockdError('protocol_invalid', 'signing key "x" must be 32 bytes base64url')
  return jwk
}

/** Validate an untrusted public sealing key. Throws `protocol_invalid`. */
export function parseSealingPublicKey(value: unknown): PublicOkpJwk {
  if (typeof value !== 'object' || value === null)
    throw new UnlockdError('protocol_invalid', 'sealing key must be a JWK object')
  const jwk = asOkp(value as JWK, SEALING_CRV, false)
  if (!/^[A-Za-z0-9_-]{43}$/.test(jwk.x))
    throw new UnlockdError('protocol_invalid', 'sealing key "x" must be 32 bytes base64url')
  return jwk
}

/** Validate a private key read from disk (host key files, recovery key file). */
export function parsePrivateKey(value: unknown, kind: 'signing' | 'sealing'): PrivateOkpJwk {
  if (typeof value !== 'object' || value === null)
    throw new UnlockdError('config_invalid', `${kind} key must be a JWK object`)
  try {
    const jwk = asOkp(value as JWK, kind === 'signing' ? SIGNING_CRV : SEALING_CRV, true)
    if (!/^[A-Za-z0-9_-]{43}$/.test(jwk.x) || !/^[A-Za-z0-9_-]{43}$/.test(jwk.d))
      throw new Error('bad length')
    return jwk
  } catch (cause) {
    throw new UnlockdError(
      'config_invalid',
      `${kind} key is not a valid private ${kind === 'signing' ? SIGNING_CRV : SEALING_CRV} JWK`,
      { cause },
    )
  }
}

/** RFC 7638 thumbprint (SHA-256, base64url). Used as host id and as recipient `kid`. */
export async function thumbprint(jwk: PublicOkpJwk): Promise<string> {
  return calculateJwkThumbprint({ kty: jwk.kty, crv: jwk.crv, x: jwk.x }, 'sha256')
}
