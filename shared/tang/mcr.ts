/**
 * McCallum-Relyea (ECMR) exchange over P-521, as used by Tang and clevis. Pure: @noble/curves and
 * WebCrypto only; no I/O.
 *
 * Roles and points (G the base point, all on P-521):
 * - server exchange key: secret `s`, public `S = s·G` (advertised with `alg: "ECMR"`).
 * - provisioning (clevis encrypt): the client picks `c`, publishes `C = c·G` as the JWE `epk`
 *   and uses `K = c·S` as the ECDH-ES shared point (its x coordinate is the ECDH `Z`).
 * - recovery (clevis decrypt): the client picks a blinding key `e`, sends `X = C + E` (`E = e·G`),
 *   the server answers `Y = s·X`, and the client unblinds `K = Y - e·S = s·C`. The server never
 *   sees `C` or `K`, and the JWE never reaches the server.
 *
 * Wire shapes copy libjose/tangd byte for byte: the recovery request is
 * `{"alg":"ECMR","crv":"P-521","kty":"EC","x":…,"y":…}` and tangd's reply is the same point in
 * sorted-key compact JSON plus `"key_ops":["deriveKey"]`.
 */
import { p521 } from '@noble/curves/nist.js'
import { bytesToNumberBE, numberToBytesBE } from '@noble/curves/utils.js'
import { UnlockdError, type UnlockdErrorCode } from '../errors.ts'
import { b64uDecode, b64uEncode } from '../crypto/bytes.ts'

export const TANG_CRV = 'P-521' as const
/** Bytes in one P-521 coordinate or scalar (ceil(521 / 8)). */
export const P521_BYTES = 66

/** A public P-521 JWK. `alg`, `key_ops`, `use`, `kid` are carried through when present. */
export interface EcPublicJwk {
  kty: 'EC'
  crv: typeof TANG_CRV
  x: string
  y: string
  alg?: string
  key_ops?: string[]
  use?: string
  kid?: string
}

/** A private P-521 JWK (tangd's `*.jwk` files have exactly this shape). */
export interface EcPrivateJwk extends EcPublicJwk {
  d: string
}

/** The server's reply to a recovery request, in tangd's member order (sorted). */
export interface EcmrReplyJwk {
  alg: 'ECMR'
  crv: typeof TANG_CRV
  key_ops: ['deriveKey']
  kty: 'EC'
  x: string
  y: string
}

/** The blinded point a client POSTs to `/rec/{kid}`, in libjose's member order. */
export interface EcmrRequestJwk {
  alg: 'ECMR'
  crv: typeof TANG_CRV
  kty: 'EC'
  x: string
  y: string
}

type Point = ReturnType<typeof p521.Point.fromAffine>
const Point = p521.Point
const Fp = Point.Fp
const Fn = Point.Fn

function fail(code: UnlockdErrorCode, message: string, cause?: unknown): never {
  throw new UnlockdError(code, message, cause === undefined ? {} : { cause })
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/**
 * Decode one base64url big-endian integer of exactly 66 bytes (RFC 7518 §6.2.1.2 and §6.2.2.1
 * require full-length coordinates and `d`; libjose always writes them so). Being strict keeps
 * one spelling per key, so thumbprints computed here match libjose's.
 */
function decodeInt(value: unknown, name: string, code: UnlockdErrorCode): bigint {
  const bytes = typeof value === 'string' ? b64uDecode(value) : undefined
  if (bytes === undefined || bytes.length !== P521_BYTES) {
    fail(code, `EC JWK "${name}" must be base64url of ${P521_BYTES} bytes`)
  }
  return bytesToNumberBE(bytes)
}

function encodeInt(n: bigint): string {
  return b64uEncode(numberToBytesBE(n, P521_BYTES))
}

/** Point of a JWK-shaped object; validates the curve equation (rejects off-curve and infinity). */
function pointOf(jwk: Record<string, unknown>, code: UnlockdErrorCode): Point {
  if (jwk['kty'] !== 'EC') fail(code, 'EC JWK must have kty "EC"')
  if (jwk['crv'] !== TANG_CRV) fail(code, `EC JWK must be on ${TANG_CRV}`)
  const x = decodeInt(jwk['x'], 'x', code)
  const y = decodeInt(jwk['y'], 'y', code)
  if (x >= Fp.ORDER || y >= Fp.ORDER) fail(code, 'EC JWK coordinate out of range')
  try {
    const p = Point.fromAffine({ x, y })
    p.assertValidity()
    return p
  } catch (cause) {
    return fail(code, 'EC JWK is not a point on P-521', cause)
  }
}

function scalarOf(jwk: Record<string, unknown>, code: UnlockdErrorCode): bigint {
  const d = decodeInt(jwk['d'], 'd', code)
  if (d <= 0n || d >= Fn.ORDER) fail(code, 'EC JWK "d" out of range')
  return d
}

function coords(p: Point): { x: string; y: string } {
  const a = p.toAffine()
  return { x: encodeInt(a.x), y: encodeInt(a.y) }
}

function xBytes(p: Point): Uint8Array {
  return numberToBytesBE(p.toAffine().x, P521_BYTES)
}

function randomScalar(): bigint {
  return Fn.fromBytes(p521.utils.randomSecretKey())
}

function optionalMembers(
  src: Record<string, unknown>,
): Partial<Pick<EcPublicJwk, 'alg' | 'key_ops' | 'use' | 'kid'>> {
  const out: Partial<Pick<EcPublicJwk, 'alg' | 'key_ops' | 'use' | 'kid'>> = {}
  if (typeof src['alg'] === 'string') out.alg = src['alg']
  if (
    Array.isArray(src['key_ops']) &&
    src['key_ops'].every((op): op is string => typeof op === 'string')
  )
    out.key_ops = [...src['key_ops']]
  if (typeof src['use'] === 'string') out.use = src['use']
  if (typeof src['kid'] === 'string') out.kid = src['kid']
  return out
}

/**
 * Validate an untrusted public P-521 JWK (on-curve check included) and return a clean copy.
 * @param code error code on failure (`bad_request` on a server, `protocol_invalid` on a client)
 */
export function parseEcPublicJwk(
  value: unknown,
  code: UnlockdErrorCode = 'protocol_invalid',
): EcPublicJwk {
  if (!isRecord(value)) fail(code, 'EC JWK must be a JSON object')
  const p = pointOf(value, code)
  return { kty: 'EC', crv: TANG_CRV, ...coords(p), ...optionalMembers(value) }
}

/**
 * Validate a private P-521 JWK (e.g. a tangd `*.jwk` file): `d` in range and matching `x`/`y`.
 * Coordinates are re-encoded at full length.
 */
export function parseEcPrivateJwk(
  value: unknown,
  code: UnlockdErrorCode = 'keystore_invalid',
): EcPrivateJwk {
  if (!isRecord(value)) fail(code, 'EC JWK must be a JSON object')
  const p = pointOf(value, code)
  const d = scalarOf(value, code)
  if (!Point.BASE.multiply(d).equals(p)) fail(code, 'EC JWK "d" does not match its public point')
  return { kty: 'EC', crv: TANG_CRV, ...coords(p), d: encodeInt(d), ...optionalMembers(value) }
}

/** A fresh P-521 key pair as a private JWK with the given `alg` and `key_ops`. */
export function generateP521Jwk(alg: string, keyOps: string[]): EcPrivateJwk {
  const d = randomScalar()
  const pub = coords(Point.BASE.multiply(d))
  // Member order follows tangd-keygen's files (sorted keys).
  return { alg, crv: TANG_CRV, d: encodeInt(d), key_ops: [...keyOps], kty: 'EC', ...pub }
}

/** `{crv,kty,x,y}` of any P-521 JWK (what RFC 7638 thumbprints and ECDH use). */
export function bareEcJwk(jwk: EcPublicJwk): {
  crv: typeof TANG_CRV
  kty: 'EC'
  x: string
  y: string
} {
  return { crv: TANG_CRV, kty: 'EC', x: jwk.x, y: jwk.y }
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/** tangd's acceptance rules for an exchange key and a request point (src/tangd.c `rec`). */
function checkServerKey(jwk: unknown): { s: bigint; S: Point } {
  const code: UnlockdErrorCode = 'keystore_invalid'
  if (!isRecord(jwk)) fail(code, 'exchange key must be a JWK object')
  if (jwk['alg'] !== undefined && jwk['alg'] !== 'ECMR') fail(code, 'exchange key alg must be ECMR')
  const ops = jwk['key_ops']
  if (ops !== undefined && !(Array.isArray(ops) && ops.includes('deriveKey')))
    fail(code, 'exchange key is not allowed to deriveKey')
  const S = pointOf(jwk, code)
  return { s: scalarOf(jwk, code), S }
}

function checkRequest(value: unknown): Point {
  const code: UnlockdErrorCode = 'bad_request'
  if (!isRecord(value)) fail(code, 'recovery request must be a JWK object')
  if (value['alg'] !== undefined && value['alg'] !== 'ECMR')
    fail(code, 'recovery request alg must be ECMR')
  const ops = value['key_ops']
  if (ops !== undefined && !(Array.isArray(ops) && ops.includes('deriveKey')))
    fail(code, 'recovery request key_ops must allow deriveKey')
  if (value['use'] !== undefined && value['use'] !== 'enc')
    fail(code, 'recovery request use must be enc')
  return pointOf(value, code)
}

function replyOf(p: Point): EcmrReplyJwk {
  return { alg: 'ECMR', crv: TANG_CRV, key_ops: ['deriveKey'], kty: 'EC', ...coords(p) }
}

/**
 * Server half of the exchange (tangd `POST /rec/{kid}`): returns `s·X`.
 * Synchronous pure-JS point multiplication (noble; ~10-20 ms for P-521 on a small VM). A server
 * should prefer {@link createEcmrServer}, which offloads most of the work to WebCrypto.
 * Throws `bad_request` for a malformed or off-curve request, `keystore_invalid` for a bad key.
 * `JSON.stringify` of the result equals tangd's reply body byte for byte.
 */
export function recover(
  serverExchangePrivateJwk: EcPrivateJwk,
  clientPointJwk: unknown,
): EcmrReplyJwk {
  const { s } = checkServerKey(serverExchangePrivateJwk)
  const X = checkRequest(clientPointJwk)
  return replyOf(X.multiply(s))
}

/** A server exchange key prepared for repeated recoveries. */
export interface EcmrServer {
  /** The exchange key's public half. */
  readonly publicJwk: EcPublicJwk
  /** Same contract as {@link recover}. */
  recover(clientPointJwk: unknown): Promise<EcmrReplyJwk>
}

const ECDH_PARAMS = { name: 'ECDH', namedCurve: TANG_CRV } as const

function subtleOrUndefined(): SubtleCrypto | undefined {
  return globalThis.crypto?.subtle
}

/**
 * Prepare an exchange key for serving `/rec`. Each recovery does two native ECDH derivations
 * (WebCrypto, off the event loop in Node) against the same request point `X`: `x1 = x(s·X)` and
 * `x2 = x((s+1)·X)`. The two candidates `(x1, ±y)` for `s·X` come from the curve equation, and
 * the right one is the `P` with `x(P + X) = x2` (the candidates can never both match: that would
 * need `2·P = 0` or `2·X = 0`). The chosen point is checked on-curve again.
 * Falls back to {@link recover} when WebCrypto lacks P-521 ECDH (or for the one key with
 * `s = n - 1`).
 */
export async function createEcmrServer(
  serverExchangePrivateJwk: EcPrivateJwk,
): Promise<EcmrServer> {
  const { s, S } = checkServerKey(serverExchangePrivateJwk)
  const publicJwk: EcPublicJwk = {
    kty: 'EC',
    crv: TANG_CRV,
    ...coords(S),
    alg: 'ECMR',
    key_ops: ['deriveKey'],
  }
  const slow: EcmrServer = {
    publicJwk,
    recover: (req) => Promise.resolve(replyOf(checkRequest(req).multiply(s))),
  }
  const subtle = subtleOrUndefined()
  const s1 = Fn.add(s, 1n)
  if (subtle === undefined || s1 === 0n) return slow
  const importPriv = (d: bigint): Promise<CryptoKey> => {
    const pub = coords(Point.BASE.multiply(d))
    return subtle.importKey(
      'jwk',
      { kty: 'EC', crv: TANG_CRV, ...pub, d: encodeInt(d), ext: false },
      ECDH_PARAMS,
      false,
      ['deriveBits'],
    )
  }
  let k0: CryptoKey
  let k1: CryptoKey
  try {
    ;[k0, k1] = await Promise.all([importPriv(s), importPriv(s1)])
  } catch {
    return slow
  }
  const derive = async (key: CryptoKey, pub: CryptoKey): Promise<bigint> => {
    const bits = await subtle.deriveBits({ name: 'ECDH', public: pub }, key, P521_BYTES * 8)
    return bytesToNumberBE(new Uint8Array(bits))
  }
  const { a, b } = Point.CURVE()
  return {
    publicJwk,
    async recover(clientPointJwk: unknown): Promise<EcmrReplyJwk> {
      const X = checkRequest(clientPointJwk)
      let pub: CryptoKey
      try {
        pub = await subtle.importKey(
          'jwk',
          { kty: 'EC', crv: TANG_CRV, ...coords(X), ext: true },
          ECDH_PARAMS,
          true,
          [],
        )
      } catch (cause) {
        return fail('bad_request', 'recovery request is not a usable P-521 public key', cause)
      }
      const [x1, x2] = await Promise.all([derive(k0, pub), derive(k1, pub)])
      const rhs = Fp.add(Fp.add(Fp.mul(Fp.sqr(x1), x1), Fp.mul(a, x1)), b)
      let y: bigint
      try {
        y = Fp.sqrt(rhs)
      } catch (cause) {
        return fail('internal', 'ECDH result is not on the curve', cause)
      }
      for (const cand of [y, Fp.neg(y)]) {
        const P = Point.fromAffine({ x: x1, y: cand })
        const Q = P.add(X)
        if (!Q.is0() && Q.toAffine().x === x2) {
          P.assertValidity()
          return replyOf(P)
        }
      }
      return fail('internal', 'ECMR sign disambiguation failed')
    },
  }
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/** Result of provisioning against a server exchange key. */
export interface McrProvision {
  /** The ephemeral public key `C` (goes into the JWE header as `epk`; `{kty,crv,x,y}`). */
  epk: EcPublicJwk
  /** ECDH-ES `Z`: the x coordinate of `c·S`, 66 bytes big-endian. Zeroize after use. */
  sharedX: Uint8Array
}

/**
 * Client provisioning (what `jose jwe enc` does for clevis with ECDH-ES to the ECMR key): a fresh
 * ephemeral `c`, `epk = c·G`, and the shared x coordinate of `c·S`.
 * Throws `protocol_invalid` if the server key is not a valid P-521 point.
 */
export function provision(serverExchangePublicJwk: EcPublicJwk): McrProvision {
  const S = pointOf(
    serverExchangePublicJwk as unknown as Record<string, unknown>,
    'protocol_invalid',
  )
  const c = randomScalar()
  const C = Point.BASE.multiply(c)
  return { epk: { kty: 'EC', crv: TANG_CRV, ...coords(C) }, sharedX: xBytes(S.multiply(c)) }
}

/** One blinded recovery in progress (clevis-decrypt-tang). */
export interface McrRecovery {
  /** Body to POST to `{url}/rec/{kid}` as `application/jwk+json`: `X = C + E`. */
  readonly request: EcmrRequestJwk
  /**
   * Unblind the server's reply `Y = s·X`: returns the ECDH-ES `Z` (x of `Y - e·S = c·S`), 66
   * bytes. Cheap (no scalar multiplication); may be called more than once. Throws
   * `protocol_invalid` when the reply is not a valid P-521 point.
   */
  unblind(reply: unknown): Uint8Array
}

/**
 * Start a recovery: picks the blinding key `e` and precomputes `X = C + e·G` and `e·S`.
 * @param clientEpk the JWE's `epk` (`C`)
 * @param serverExchangePublicJwk the advertised exchange key whose thumbprint is the JWE `kid`
 */
export function startRecovery(
  clientEpk: EcPublicJwk,
  serverExchangePublicJwk: EcPublicJwk,
): McrRecovery {
  const C = pointOf(clientEpk as unknown as Record<string, unknown>, 'protocol_invalid')
  const S = pointOf(
    serverExchangePublicJwk as unknown as Record<string, unknown>,
    'protocol_invalid',
  )
  let X: Point
  let e: bigint
  // X = C + E is the identity only if e = -c; draw again in that (negligible) case.
  for (let i = 0; ; i++) {
    e = randomScalar()
    X = C.add(Point.BASE.multiply(e))
    if (!X.is0()) break
    if (i >= 3) fail('internal', 'could not draw a blinding key')
  }
  const eS = S.multiply(e)
  const request: EcmrRequestJwk = { alg: 'ECMR', crv: TANG_CRV, kty: 'EC', ...coords(X) }
  return {
    request,
    unblind(reply: unknown): Uint8Array {
      if (!isRecord(reply)) fail('protocol_invalid', 'tang reply must be a JWK object')
      const Y = pointOf(reply, 'protocol_invalid')
      const K = Y.subtract(eS)
      if (K.is0()) fail('protocol_invalid', 'tang reply unblinds to the identity')
      return xBytes(K)
    },
  }
}
