/**
 * Tang keys, advertisements and JWK thumbprints. Pure: WebCrypto and @noble/curves, no I/O.
 *
 * A Tang server holds ES512 signing keys (`key_ops: ["sign","verify"]`) and ECMR exchange keys
 * (`key_ops: ["deriveKey"]`), all P-521. Its advertisement (`GET /adv`) is a JWS whose payload is
 * the public JWK set `{"keys":[…]}` (signing keys reduced to `key_ops: ["verify"]`), signed by
 * every signing key with protected header `{"alg":"ES512","cty":"jwk-set+json"}`.
 * `GET /adv/{thp}` is the same advertisement additionally signed by the (possibly rotated)
 * signing key `thp`.
 *
 * Thumbprints are RFC 7638 over `{crv,kty,x,y}`. tang 11 names keys by SHA-256 (`S256`, the
 * default) but `find_by_thp` accepts S1, S224, S256, S384 and S512 (src/keys.c), and clevis falls
 * back to S1 for old bindings; so lookups here accept all five.
 */
import { UnlockdError } from '../errors.ts'
import { b64uDecode, b64uEncode, fromUtf8, utf8 } from '../crypto/bytes.ts'
import {
  generateP521Jwk,
  parseEcPrivateJwk,
  parseEcPublicJwk,
  TANG_CRV,
  type EcPrivateJwk,
  type EcPublicJwk,
} from './mcr.ts'

export type ThumbprintAlg = 'S1' | 'S224' | 'S256' | 'S384' | 'S512'
/** In tang's lookup order. */
export const THUMBPRINT_ALGS: readonly ThumbprintAlg[] = ['S1', 'S224', 'S256', 'S384', 'S512']
export const DEFAULT_THUMBPRINT_ALG: ThumbprintAlg = 'S256'

/** Protected header tang puts on every advertisement signature. */
export const ADV_PROTECTED_HEADER = { alg: 'ES512', cty: 'jwk-set+json' } as const
/** Content types tangd answers with. */
export const ADV_CONTENT_TYPE = 'application/jose+json'
export const REC_CONTENT_TYPE = 'application/jwk+json'

const MAX_ADV_CHARS = 256 * 1024
const ECDSA = { name: 'ECDSA', namedCurve: TANG_CRV } as const
const ECDSA_SIGN = { name: 'ECDSA', hash: 'SHA-512' } as const

/** General JWS JSON serialization (what {@link buildAdvertisement} produces). */
export interface TangAdvertisement {
  payload: string
  signatures: { protected: string; signature: string }[]
}

/** How an advertisement is written on the wire. */
export type AdvertisementForm = 'tangd' | 'general'

/**
 * The advertisement as JSON text. `tangd` writes what tangd (libjose) sends: the flattened JWS
 * serialization when there is one signature, the general one when there are several; `general`
 * always writes the general serialization. Both parse with {@link verifyAdvertisement}.
 */
export function serializeAdvertisement(
  adv: TangAdvertisement,
  form: AdvertisementForm = 'tangd',
): string {
  const [only, ...more] = adv.signatures
  if (form === 'tangd' && only !== undefined && more.length === 0)
    return JSON.stringify({
      payload: adv.payload,
      protected: only.protected,
      signature: only.signature,
    })
  return JSON.stringify({ payload: adv.payload, signatures: adv.signatures })
}

/** The advertisement payload: the server's public keys. Goes into clevis JWEs as `clevis.tang.adv`. */
export interface TangJwkSet {
  keys: EcPublicJwk[]
}

export interface VerifiedAdvertisement {
  /** The payload, each key validated (coordinates are kept as sent). */
  jwks: TangJwkSet
  /** Keys usable for `verify`; every one of them signed the advertisement. */
  signingKeys: EcPublicJwk[]
  /** Keys usable for `deriveKey` (clevis binds to the first one). */
  exchangeKeys: EcPublicJwk[]
}

export interface TangKeyPair {
  signing: EcPrivateJwk
  exchange: EcPrivateJwk
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/** A fresh ES512 signing key, shaped like tangd-keygen's: `alg`, `key_ops: ["sign","verify"]`. */
export function generateSigningKey(): EcPrivateJwk {
  return generateP521Jwk('ES512', ['sign', 'verify'])
}

/** A fresh ECMR exchange key, shaped like tangd-keygen's: `alg: "ECMR"`, `key_ops: ["deriveKey"]`. */
export function generateExchangeKey(): EcPrivateJwk {
  return generateP521Jwk('ECMR', ['deriveKey'])
}

/** What `tangd-keygen DIR` makes: one signing and one exchange key. */
export function generateTangKeys(): TangKeyPair {
  return { signing: generateSigningKey(), exchange: generateExchangeKey() }
}

const PRIVATE_OPS = new Set(['sign', 'decrypt', 'unwrapKey'])

/**
 * Public half, as libjose's `jose_jwk_pub` makes it: `d` dropped and private operations removed
 * from `key_ops` (so a signing key advertises `["verify"]`, an exchange key keeps `["deriveKey"]`).
 * Member order is sorted like tangd's payload.
 */
export function publicJwk(jwk: EcPublicJwk | EcPrivateJwk): EcPublicJwk {
  const out: EcPublicJwk = {} as EcPublicJwk
  const src = jwk as EcPublicJwk
  if (src.alg !== undefined) out.alg = src.alg
  out.crv = TANG_CRV
  if (src.key_ops !== undefined) out.key_ops = src.key_ops.filter((op) => !PRIVATE_OPS.has(op))
  if (src.kid !== undefined) out.kid = src.kid
  out.kty = 'EC'
  if (src.use !== undefined) out.use = src.use
  out.x = src.x
  out.y = src.y
  return out
}

/** libjose `jose_jwk_prm(jwk, required, op)`: is `op` allowed (by `key_ops`, or by `use`)? */
export function keyAllows(
  jwk: EcPublicJwk,
  op: 'sign' | 'verify' | 'deriveKey',
  required = true,
): boolean {
  if (jwk.key_ops !== undefined) return jwk.key_ops.includes(op)
  if (jwk.use !== undefined) return jwk.use === (op === 'deriveKey' ? 'enc' : 'sig')
  return !required
}

// ---------------------------------------------------------------------------------------------
// Thumbprints
// ---------------------------------------------------------------------------------------------

const THP_LENGTH: Readonly<Record<ThumbprintAlg, number>> = {
  S1: 27,
  S224: 38,
  S256: 43,
  S384: 64,
  S512: 86,
}
const SUBTLE_HASH: Readonly<Record<Exclude<ThumbprintAlg, 'S224'>, string>> = {
  S1: 'SHA-1',
  S256: 'SHA-256',
  S384: 'SHA-384',
  S512: 'SHA-512',
}

/** RFC 7638 thumbprint of a P-521 JWK (`{"crv","kty","x","y"}`), base64url. */
export async function jwkThumbprint(
  jwk: EcPublicJwk,
  alg: ThumbprintAlg = DEFAULT_THUMBPRINT_ALG,
): Promise<string> {
  const input = utf8(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }))
  if (alg === 'S224') return b64uEncode(sha224(input))
  const hash = SUBTLE_HASH[alg]
  if (hash === undefined) throw new RangeError(`unknown thumbprint algorithm ${String(alg)}`)
  return b64uEncode(
    new Uint8Array(await globalThis.crypto.subtle.digest(hash, input as Uint8Array<ArrayBuffer>)),
  )
}

/** The hash algorithm under which `jwk` has thumbprint `thp`, if any (decided by length first). */
export async function thumbprintMatches(
  jwk: EcPublicJwk,
  thp: string,
): Promise<ThumbprintAlg | undefined> {
  for (const alg of THUMBPRINT_ALGS) {
    if (thp.length === THP_LENGTH[alg] && (await jwkThumbprint(jwk, alg)) === thp) return alg
  }
  return undefined
}

/** First key whose thumbprint under any supported hash is `thp` (tang's `find_by_thp`). */
export async function findByThumbprint<T extends EcPublicJwk>(
  keys: readonly T[],
  thp: string,
): Promise<T | undefined> {
  for (const key of keys) {
    if ((await thumbprintMatches(key, thp)) !== undefined) return key
  }
  return undefined
}

/**
 * Map from every supported thumbprint of every key to the key, so a server can resolve
 * `/rec/{kid}` and `/adv/{thp}` without hashing per request. Earlier keys win on (impossible)
 * collisions.
 */
export async function thumbprintIndex<T extends EcPublicJwk>(
  keys: readonly T[],
): Promise<Map<string, T>> {
  const index = new Map<string, T>()
  for (const key of keys) {
    for (const alg of THUMBPRINT_ALGS) {
      const thp = await jwkThumbprint(key, alg)
      if (!index.has(thp)) index.set(thp, key)
    }
  }
  return index
}

// ---------------------------------------------------------------------------------------------
// Advertisement
// ---------------------------------------------------------------------------------------------

export interface AdvertisementKeys {
  /** Current signing keys: advertised and signing. */
  signing: readonly EcPrivateJwk[]
  /** Current exchange keys: advertised. Private or public JWKs. */
  exchange: readonly (EcPublicJwk | EcPrivateJwk)[]
  /** Extra signers that are not advertised (tang's `/adv/{thp}` with a rotated key). */
  extraSigning?: readonly EcPrivateJwk[]
}

/**
 * Build and sign an advertisement (General JWS JSON serialization, one signature per signing key).
 * ECDSA P-521 signing costs a few ms per key: cache the result until the keys change.
 * Throws `keystore_invalid` when a key is unusable.
 */
export async function buildAdvertisement(keys: AdvertisementKeys): Promise<TangAdvertisement> {
  if (keys.signing.length === 0)
    throw new UnlockdError(
      'keystore_invalid',
      'a tang advertisement needs at least one signing key',
    )
  if (keys.exchange.length === 0)
    throw new UnlockdError(
      'keystore_invalid',
      'a tang advertisement needs at least one exchange key',
    )
  // A thumbprint of an advertised key adds no second signature by the same key (as tangd).
  const extra = (keys.extraSigning ?? []).filter(
    (e) => !keys.signing.some((k) => k.x === e.x && k.y === e.y),
  )
  const signers = [...keys.signing, ...extra].map((k) => parseEcPrivateJwk(k, 'keystore_invalid'))
  for (const k of signers) {
    if (!keyAllows(k, 'sign', false))
      throw new UnlockdError('keystore_invalid', 'a tang signing key must allow "sign"')
  }
  const advertised = [
    ...keys.signing.map(publicJwk),
    ...keys.exchange.map((k) => publicJwk(parseEcPublicJwk(k, 'keystore_invalid'))),
  ]
  const payload = b64uEncode(utf8(JSON.stringify({ keys: advertised })))
  const protectedB64 = b64uEncode(utf8(JSON.stringify(ADV_PROTECTED_HEADER)))
  const input = utf8(`${protectedB64}.${payload}`) as Uint8Array<ArrayBuffer>
  const subtle = globalThis.crypto.subtle
  const signatures = await Promise.all(
    signers.map(async (k) => {
      let key: CryptoKey
      try {
        key = await subtle.importKey(
          'jwk',
          { kty: 'EC', crv: TANG_CRV, x: k.x, y: k.y, d: k.d, ext: false },
          ECDSA,
          false,
          ['sign'],
        )
      } catch (cause) {
        throw new UnlockdError('keystore_invalid', 'tang signing key cannot be imported', { cause })
      }
      const sig = new Uint8Array(await subtle.sign(ECDSA_SIGN, key, input))
      return { protected: protectedB64, signature: b64uEncode(sig) }
    }),
  )
  return { payload, signatures }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function invalid(message: string, cause?: unknown): never {
  throw new UnlockdError('protocol_invalid', message, cause === undefined ? {} : { cause })
}

function decodeJsonB64u(text: unknown, what: string): unknown {
  const bytes = typeof text === 'string' ? b64uDecode(text) : undefined
  if (bytes === undefined) invalid(`${what} is not base64url`)
  try {
    return JSON.parse(fromUtf8(bytes)) as unknown
  } catch (cause) {
    return invalid(`${what} is not JSON`, cause)
  }
}

/**
 * Check an advertisement the way `clevis encrypt tang` does: every key allowed to `verify` must
 * have a valid ES512 signature over the payload (`jose jws ver -a`). Accepts the JWS as JSON text
 * or as an object, in General or Flattened serialization (tangd emits Flattened when it has one
 * signing key). With `trustedThumbprint` (clevis's `thp`), one of the signing keys must also have
 * that thumbprint under a supported hash.
 * Throws `protocol_invalid` for a malformed advertisement, `bad_signature` when a signature is
 * missing or wrong or the trusted key did not sign.
 */
export async function verifyAdvertisement(
  adv: unknown,
  opts: { trustedThumbprint?: string } = {},
): Promise<VerifiedAdvertisement> {
  let jws: unknown = adv
  if (typeof adv === 'string') {
    if (adv.length > MAX_ADV_CHARS) invalid('tang advertisement is too large')
    try {
      jws = JSON.parse(adv) as unknown
    } catch (cause) {
      invalid('tang advertisement is not JSON', cause)
    }
  }
  if (!isRecord(jws)) invalid('tang advertisement must be a JWS JSON object')
  const payloadB64 = jws['payload']
  if (typeof payloadB64 !== 'string') invalid('tang advertisement has no payload')
  const rawSigs: unknown[] = Array.isArray(jws['signatures'])
    ? jws['signatures']
    : 'signature' in jws
      ? [jws]
      : []

  const payload = decodeJsonB64u(payloadB64, 'tang advertisement payload')
  if (!isRecord(payload) || !Array.isArray(payload['keys']))
    invalid('tang advertisement payload must be a JWK set')
  const keys = payload['keys'].map((k) => parseEcPublicJwk(k, 'protocol_invalid'))
  const signingKeys = keys.filter((k) => keyAllows(k, 'verify'))
  const exchangeKeys = keys.filter((k) => keyAllows(k, 'deriveKey'))
  if (signingKeys.length === 0)
    throw new UnlockdError('bad_signature', 'tang advertisement has no signing keys')

  const sigs: { input: Uint8Array<ArrayBuffer>; signature: Uint8Array<ArrayBuffer> }[] = []
  for (const s of rawSigs) {
    if (!isRecord(s)) invalid('tang advertisement signature must be an object')
    const prot = s['protected']
    const header = decodeJsonB64u(prot, 'tang advertisement protected header')
    if (!isRecord(header) || header['alg'] !== 'ES512') continue // not one tang can make; cannot satisfy a P-521 key
    const signature = typeof s['signature'] === 'string' ? b64uDecode(s['signature']) : undefined
    if (signature === undefined) invalid('tang advertisement signature is not base64url')
    sigs.push({
      input: utf8(`${String(prot)}.${payloadB64}`) as Uint8Array<ArrayBuffer>,
      signature: signature as Uint8Array<ArrayBuffer>,
    })
  }

  const subtle = globalThis.crypto.subtle
  for (const key of signingKeys) {
    const pub = await subtle.importKey(
      'jwk',
      { kty: 'EC', crv: TANG_CRV, x: key.x, y: key.y, ext: true },
      ECDSA,
      true,
      ['verify'],
    )
    let ok = false
    for (const s of sigs) {
      if (await subtle.verify(ECDSA_SIGN, pub, s.signature, s.input)) {
        ok = true
        break
      }
    }
    if (!ok)
      throw new UnlockdError(
        'bad_signature',
        'tang advertisement is missing a signature from one of its signing keys',
      )
  }

  if (opts.trustedThumbprint !== undefined) {
    if ((await findByThumbprint(signingKeys, opts.trustedThumbprint)) === undefined) {
      throw new UnlockdError(
        'bad_signature',
        'tang advertisement was not signed by the trusted key',
      )
    }
  }
  return { jwks: { keys }, signingKeys, exchangeKeys }
}

// ---------------------------------------------------------------------------------------------
// SHA-224 (FIPS 180-4), for S224 thumbprints: WebCrypto has no SHA-224.
// ---------------------------------------------------------------------------------------------

const K256 = Uint32Array.from([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
])

function rotr(x: number, n: number): number {
  return (x >>> n) | (x << (32 - n))
}

/** SHA-224 of `data` (28 bytes). Exported for tests. */
export function sha224(data: Uint8Array): Uint8Array {
  const h = Uint32Array.from([
    0xc1059ed8, 0x367cd507, 0x3070dd17, 0xf70e5939, 0xffc00b31, 0x68581511, 0x64f98fa7, 0xbefa4fa4,
  ])
  const blocks = Math.ceil((data.length + 9) / 64)
  const buf = new Uint8Array(blocks * 64)
  buf.set(data)
  buf[data.length] = 0x80
  const view = new DataView(buf.buffer)
  const bits = data.length * 8
  view.setUint32(buf.length - 8, Math.floor(bits / 0x100000000))
  view.setUint32(buf.length - 4, bits >>> 0)
  const w = new Uint32Array(64)
  const at = (arr: Uint32Array, i: number): number => arr[i] as number
  for (let off = 0; off < buf.length; off += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(off + i * 4)
    for (let i = 16; i < 64; i++) {
      const w15 = at(w, i - 15)
      const w2 = at(w, i - 2)
      const s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >>> 3)
      const s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >>> 10)
      w[i] = (at(w, i - 16) + s0 + at(w, i - 7) + s1) | 0
    }
    let a = at(h, 0),
      b = at(h, 1),
      c = at(h, 2),
      d = at(h, 3),
      e = at(h, 4),
      f = at(h, 5),
      g = at(h, 6),
      hh = at(h, 7)
    for (let i = 0; i < 64; i++) {
      const t1 =
        (hh +
          (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) +
          ((e & f) ^ (~e & g)) +
          at(K256, i) +
          at(w, i)) |
        0
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0
      hh = g
      g = f
      f = e
      e = (d + t1) | 0
      d = c
      c = b
      b = a
      a = (t1 + t2) | 0
    }
    h[0] = (at(h, 0) + a) | 0
    h[1] = (at(h, 1) + b) | 0
    h[2] = (at(h, 2) + c) | 0
    h[3] = (at(h, 3) + d) | 0
    h[4] = (at(h, 4) + e) | 0
    h[5] = (at(h, 5) + f) | 0
    h[6] = (at(h, 6) + g) | 0
    h[7] = (at(h, 7) + hh) | 0
  }
  const out = new Uint8Array(28)
  const outView = new DataView(out.buffer)
  for (let i = 0; i < 7; i++) outView.setUint32(i * 4, at(h, i))
  return out
}
