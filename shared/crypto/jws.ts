/**
 * Host-signed requests: compact JWS, EdDSA only, `typ` bound to the purpose and `kid` naming the
 * host id. The server reads `kid` (unverified) only to find which enrolled key to verify with.
 */
import { decodeProtectedHeader } from 'jose'
import { UnlockdError } from '../errors.ts'
import { JWS_TYP, SIGNING_ALG, type JwsPurpose } from './algorithms.ts'
import { fromUtf8, utf8 } from './bytes.ts'
import type { PrivateOkpJwk, PublicOkpJwk } from './keys.ts'
import { signCompactEd25519, verifyCompactEd25519 } from './okp.ts'

const MAX_JWS = 64 * 1024
const COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/

/**
 * Sign a request payload as the host.
 * @example const jws = await signHostRequest('unlock', payload, keys.signing, hostId)
 */
export async function signHostRequest(
  purpose: JwsPurpose,
  payload: object,
  key: PrivateOkpJwk,
  kid: string,
): Promise<string> {
  return signCompactEd25519(
    { alg: SIGNING_ALG, typ: JWS_TYP[purpose], kid },
    utf8(JSON.stringify(payload)),
    key,
  )
}

/** Read the `kid` of an untrusted compact JWS without verifying it. Throws `protocol_invalid`. */
export function peekJwsKid(compact: unknown, purpose: JwsPurpose): string {
  if (typeof compact !== 'string' || compact.length > MAX_JWS || !COMPACT.test(compact)) {
    throw new UnlockdError('protocol_invalid', 'jws must be a compact JWS string')
  }
  let header: Record<string, unknown>
  try {
    header = decodeProtectedHeader(compact) as Record<string, unknown>
  } catch (cause) {
    throw new UnlockdError('protocol_invalid', 'jws header is not valid JSON', { cause })
  }
  if (header['alg'] !== SIGNING_ALG)
    throw new UnlockdError('protocol_invalid', `jws alg must be ${SIGNING_ALG}`)
  if (header['typ'] !== JWS_TYP[purpose])
    throw new UnlockdError('protocol_invalid', `jws typ must be ${JWS_TYP[purpose]}`)
  const kid = header['kid']
  if (typeof kid !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(kid))
    throw new UnlockdError('protocol_invalid', 'jws kid must be a host id')
  if (Object.keys(header).some((k) => !['alg', 'typ', 'kid'].includes(k))) {
    // Header-supplied keys (jwk, jku, x5c) are never trusted; refuse them outright.
    throw new UnlockdError('protocol_invalid', 'jws header has unexpected members')
  }
  return kid
}

/**
 * Verify a compact JWS with a known public key; returns the parsed JSON payload (still
 * untrusted in shape: pass it to a parser in shared/protocol). Throws `bad_signature`.
 */
export async function verifyHostRequest(
  compact: string,
  purpose: JwsPurpose,
  key: PublicOkpJwk,
): Promise<unknown> {
  let payload: Uint8Array
  try {
    const res = verifyCompactEd25519(compact, key)
    if (res.header['typ'] !== JWS_TYP[purpose]) throw new Error('typ mismatch')
    payload = res.payload
  } catch (cause) {
    throw new UnlockdError(
      'bad_signature',
      'request signature does not verify with the enrolled key',
      { cause },
    )
  }
  try {
    return JSON.parse(fromUtf8(payload)) as unknown
  } catch (cause) {
    throw new UnlockdError('protocol_invalid', 'jws payload is not JSON', { cause })
  }
}
