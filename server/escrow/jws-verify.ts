/**
 * Verifying host-signed requests on the server with node:crypto: the enrolled Ed25519 key is
 * imported once per host (a bounded KeyObject cache) and checked synchronously, instead of a JWK
 * import and an asynchronous WebCrypto round trip per request (shared/crypto/jws.ts, which
 * the agent side keeps using). Same acceptance as `verifyHostRequest`: the caller has already
 * run `peekJwsKid` (compact form, alg EdDSA, typ of the purpose, kid, no other header members),
 * the signature is 64 canonical base64url bytes over `protected.payload`, and the payload is
 * JSON. Throws `bad_signature` or `protocol_invalid`.
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto'
import { UnlockdError } from '../../shared/errors.ts'
import { b64uDecode, fromUtf8 } from '../../shared/crypto/bytes.ts'
import { parseSigningPublicKey } from '../../shared/crypto/keys.ts'

const MAX_KEYS = 20_000
const keys = new Map<string, KeyObject>()

/** The KeyObject of an enrolled signing key (the hosts row's `signing_jwk` text). */
function keyOf(signingJwk: string): KeyObject {
  let k = keys.get(signingJwk)
  if (k === undefined) {
    let parsed: unknown
    try {
      parsed = JSON.parse(signingJwk) as unknown
    } catch (cause) {
      throw new UnlockdError('protocol_invalid', 'this host has no usable signing key', { cause })
    }
    const jwk = parseSigningPublicKey(parsed)
    k = createPublicKey({ key: { kty: 'OKP', crv: jwk.crv, x: jwk.x }, format: 'jwk' })
    if (keys.size >= MAX_KEYS) keys.clear() // bounded; a miss only costs one import
    keys.set(signingJwk, k)
  }
  return k
}

export function verifyHostJws(compact: string, signingJwk: string): unknown {
  const key = keyOf(signingJwk)
  const dot1 = compact.indexOf('.')
  const dot2 = compact.indexOf('.', dot1 + 1)
  const signature = b64uDecode(compact.slice(dot2 + 1))
  let ok = false
  if (dot1 > 0 && dot2 > dot1 && signature !== undefined && signature.length === 64) {
    try {
      ok = verify(null, Buffer.from(compact.slice(0, dot2), 'ascii'), key, signature)
    } catch {
      ok = false
    }
  }
  if (!ok)
    throw new UnlockdError(
      'bad_signature',
      'request signature does not verify with the enrolled key',
    )
  const payload = b64uDecode(compact.slice(dot1 + 1, dot2))
  if (payload === undefined)
    throw new UnlockdError('protocol_invalid', 'jws payload is not base64url')
  try {
    return JSON.parse(fromUtf8(payload)) as unknown
  } catch (cause) {
    throw new UnlockdError('protocol_invalid', 'jws payload is not JSON', { cause })
  }
}
