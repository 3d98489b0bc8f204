/**
 * The server half of McCallum-Relyea (`POST /rec`) on node:crypto, for the Tang endpoints when
 * the system libcrypto cannot be used (./ecmr-libcrypto.ts). Same contract and byte-identical
 * replies as shared/tang/mcr.ts `recover` / `createEcmrServer`, at about half the CPU of the
 * WebCrypto path (measured on Node 20's bundled OpenSSL 3.0, P-521: `crypto.diffieHellman`
 * 2.7 ms CPU per derivation, WebCrypto `deriveBits` 5.5 ms; a JWK public-key import 1 ms against
 * 0.16 ms for SPKI DER).
 *
 * OpenSSL's ECDH yields only the x coordinate, so, as in createEcmrServer, each recovery derives
 * `x1 = x(s·X)` and `x2 = x((s+1)·X) = x(s·X + X)`. Instead of a square root and a sign test,
 * `y(s·X)` follows from the chord through `P = s·X` and `X`: with `R = x1 + x2 + xX`,
 * `(y1 - yX)^2 = R·(x1 - xX)^2` and `y1^2 = x1^3 + a·x1 + b`, so
 * `y1 = (x1^3 + a·x1 + b + yX^2 - R·(x1 - xX)^2) / (2·yX)` (one field inversion). The result is
 * checked on the curve and against `x(P + X) = x2`; anything odd falls back to the pure-JS path.
 *
 * The derivations run synchronously on the calling thread: total CPU per request is what bounds
 * throughput, and this needs half of what the WebCrypto path (off the event loop) needs.
 */
import {
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto'
import { p521 } from '@noble/curves/nist.js'
import { bytesToNumberBE, numberToBytesBE } from '@noble/curves/utils.js'
import { UnlockdError } from '../../shared/errors.ts'
import { b64uDecode, b64uEncode } from '../../shared/crypto/bytes.ts'
import {
  parseEcPrivateJwk,
  parseEcPublicJwk,
  recover,
  TANG_CRV,
  type EcmrReplyJwk,
  type EcmrServer,
  type EcPrivateJwk,
} from '../../shared/tang/mcr.ts'

const Point = p521.Point
const Fp = Point.Fp
const Fn = Point.Fn
const BYTES = 66
type P521Point = ReturnType<typeof Point.fromAffine>

/** DER SubjectPublicKeyInfo prefix of an uncompressed P-521 point (everything before 04 || x || y). */
const SPKI_PREFIX: Buffer = (() => {
  const der = generateKeyPairSync('ec', { namedCurve: 'secp521r1' }).publicKey.export({
    format: 'der',
    type: 'spki',
  })
  return der.subarray(0, der.length - (1 + 2 * BYTES))
})()

function int(b64u: string): bigint {
  const bytes = b64uDecode(b64u)
  if (bytes === undefined || bytes.length !== BYTES)
    throw new UnlockdError('bad_request', 'EC JWK coordinate must be 66 bytes of base64url')
  return bytesToNumberBE(bytes)
}

function enc(n: bigint): string {
  return b64uEncode(numberToBytesBE(n, BYTES))
}

function replyOf(x: bigint, y: bigint): EcmrReplyJwk {
  return { alg: 'ECMR', crv: TANG_CRV, key_ops: ['deriveKey'], kty: 'EC', x: enc(x), y: enc(y) }
}

/** A validated recovery request point. */
export interface RecoveryPoint {
  x: bigint
  y: bigint
  point: P521Point
  /** `04 || x || y`, 133 bytes. */
  uncompressed: Uint8Array
}

/**
 * tangd's acceptance rules for a recovery request (the same as mcr.ts `recover`): a JWK object,
 * `alg` ECMR if present, `key_ops` allowing deriveKey, `use` enc, a P-521 point with
 * full-length coordinates, on the curve. Throws `bad_request`.
 */
export function checkRecoveryRequest(value: unknown): RecoveryPoint {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new UnlockdError('bad_request', 'recovery request must be a JWK object')
  const o = value as Record<string, unknown>
  if (o['alg'] !== undefined && o['alg'] !== 'ECMR')
    throw new UnlockdError('bad_request', 'recovery request alg must be ECMR')
  const ops = o['key_ops']
  if (ops !== undefined && !(Array.isArray(ops) && ops.includes('deriveKey')))
    throw new UnlockdError('bad_request', 'recovery request key_ops must allow deriveKey')
  if (o['use'] !== undefined && o['use'] !== 'enc')
    throw new UnlockdError('bad_request', 'recovery request use must be enc')
  const jwk = parseEcPublicJwk(value, 'bad_request') // P-521, full length, on the curve, not infinity
  const x = int(jwk.x)
  const y = int(jwk.y)
  const uncompressed = new Uint8Array(1 + 2 * BYTES)
  uncompressed[0] = 4
  uncompressed.set(numberToBytesBE(x, BYTES), 1)
  uncompressed.set(numberToBytesBE(y, BYTES), 1 + BYTES)
  return { x, y, point: Point.fromAffine({ x, y }), uncompressed }
}

function privateKeyObject(d: bigint): KeyObject {
  const pub = Point.BASE.multiply(d).toAffine()
  return createPrivateKey({
    key: { kty: 'EC', crv: TANG_CRV, x: enc(pub.x), y: enc(pub.y), d: enc(d) },
    format: 'jwk',
  })
}

/**
 * Prepare an exchange key for serving `/rec` with node:crypto. Throws `keystore_invalid` for a
 * key that is not an ECMR P-521 private key.
 */
export function createNodeEcmrServer(serverExchangePrivateJwk: EcPrivateJwk): EcmrServer {
  const jwk = parseEcPrivateJwk(serverExchangePrivateJwk, 'keystore_invalid')
  if (jwk.alg !== undefined && jwk.alg !== 'ECMR')
    throw new UnlockdError('keystore_invalid', 'exchange key alg must be ECMR')
  if (jwk.key_ops !== undefined && !jwk.key_ops.includes('deriveKey'))
    throw new UnlockdError('keystore_invalid', 'exchange key is not allowed to deriveKey')
  const s = int(jwk.d)
  const s1 = Fn.add(s, 1n)
  const publicJwk = {
    kty: 'EC' as const,
    crv: TANG_CRV,
    x: jwk.x,
    y: jwk.y,
    alg: 'ECMR',
    key_ops: ['deriveKey'],
  }
  // s = n - 1 has no usable s + 1; that one key (never generated in practice) takes the slow path.
  if (s1 === 0n) return { publicJwk, recover: (req) => Promise.resolve(recover(jwk, req)) }
  const k0 = privateKeyObject(s)
  const k1 = privateKeyObject(s1)
  const { a, b } = Point.CURVE()

  const recoverSync = (req: unknown): EcmrReplyJwk => {
    const X = checkRecoveryRequest(req)
    const pub = createPublicKey({
      key: Buffer.concat([SPKI_PREFIX, X.uncompressed]),
      format: 'der',
      type: 'spki',
    })
    const x1 = bytesToNumberBE(diffieHellman({ privateKey: k0, publicKey: pub }))
    const x2 = bytesToNumberBE(diffieHellman({ privateKey: k1, publicKey: pub }))
    const dx = Fp.sub(x1, X.x)
    if (dx !== 0n) {
      const r = Fp.add(Fp.add(x1, x2), X.x)
      const y1sq = Fp.add(Fp.add(Fp.mul(Fp.sqr(x1), x1), Fp.mul(a, x1)), b)
      const num = Fp.sub(Fp.add(y1sq, Fp.sqr(X.y)), Fp.mul(r, Fp.sqr(dx)))
      const y1 = Fp.div(num, Fp.add(X.y, X.y))
      try {
        const P = Point.fromAffine({ x: x1, y: y1 })
        P.assertValidity()
        const Q = P.add(X.point)
        if (!Q.is0() && Q.toAffine().x === x2) return replyOf(x1, y1)
      } catch {
        // fall through to the reference computation
      }
    }
    // s·X = ±X (s = ±1) or an inconsistency: compute it the slow, obviously correct way.
    return recover(jwk, req)
  }
  return {
    publicJwk,
    recover: (req) => {
      try {
        return Promise.resolve(recoverSync(req))
      } catch (e) {
        return Promise.reject(e)
      }
    },
  }
}
