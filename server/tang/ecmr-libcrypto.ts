/**
 * The fastest server half of McCallum-Relyea available to the Tang endpoints: the system's
 * OpenSSL 3 (libcrypto.so.3, loaded lazily through koffi, which unlockd already ships for the
 * agent) computes the whole point `s·X` with one `EC_POINT_mul`, the call libjose/tangd makes.
 *
 * Why: Node's bundled OpenSSL has no optimised P-521 code; a /rec on node:crypto needs two
 * ECDH derivations (~2.7 ms CPU each, x only) and WebCrypto twice that, while the system
 * libcrypto's nistp521 implementation (constant time) does the full multiplication in ~0.3 ms
 * on the same CPU. The group must come from `EC_GROUP_new_by_curve_name_ex` (the provider path
 * that selects nistp521; the legacy constructor gives the generic, 5x slower method).
 *
 * Safety: requests are validated with @noble/curves first (P-521, full-length coordinates, on
 * the curve, not infinity), and OpenSSL checks the point again when decoding it. The scalar lives
 * in an OpenSSL BIGNUM that is cleared and freed when its JS owner is garbage-collected, never
 * earlier, so no call can use freed memory. The library is loaded only after a known-answer
 * test against @noble/curves passes; any failure (no koffi, no libcrypto.so.3, a mismatch)
 * leaves the node:crypto path (./ecmr-node.ts) in charge.
 *
 * `UNLOCKD_TANG_ECMR=auto|libcrypto|node|webcrypto` (default auto) forces a path, for tests and
 * benchmarks (`webcrypto` is shared/tang/mcr.ts createEcmrServer, the slowest).
 */
import { p521 } from '@noble/curves/nist.js'
import { numberToBytesBE } from '@noble/curves/utils.js'
import { UnlockdError } from '../../shared/errors.ts'
import { b64uDecode, b64uEncode } from '../../shared/crypto/bytes.ts'
import {
  createEcmrServer,
  parseEcPrivateJwk,
  TANG_CRV,
  type EcmrReplyJwk,
  type EcmrServer,
  type EcPrivateJwk,
} from '../../shared/tang/mcr.ts'
import { checkRecoveryRequest, createNodeEcmrServer } from './ecmr-node.ts'

const NID_SECP521R1 = 716
const POINT_CONVERSION_UNCOMPRESSED = 4
const BYTES = 66
const POINT_BYTES = 1 + 2 * BYTES

type Ptr = unknown

interface Libcrypto {
  /** r = m·q for the decoded uncompressed point `q` (133 bytes); returns the encoded result or undefined. */
  mul(scalar: Ptr, point: Uint8Array): Buffer | undefined
  bnFromBytes(bytes: Uint8Array): Ptr
  bnClearFree(bn: Ptr): void
}

async function loadLibcrypto(): Promise<Libcrypto> {
  const koffi = (await import('koffi')).default
  const lib = koffi.load('libcrypto.so.3')
  const groupNew = lib.func(
    'void *EC_GROUP_new_by_curve_name_ex(void *libctx, const char *propq, int nid)',
  )
  const pointNew = lib.func('void *EC_POINT_new(void *group)')
  const oct2point = lib.func(
    'int EC_POINT_oct2point(void *group, void *p, const uint8_t *buf, size_t len, void *ctx)',
  )
  const point2oct = lib.func(
    'size_t EC_POINT_point2oct(void *group, void *p, int form, _Out_ uint8_t *buf, size_t len, void *ctx)',
  )
  const pointMul = lib.func(
    'int EC_POINT_mul(void *group, void *r, void *n, void *q, void *m, void *ctx)',
  )
  const isInfinity = lib.func('int EC_POINT_is_at_infinity(void *group, void *p)')
  const bnBin2bn = lib.func('void *BN_bin2bn(const uint8_t *s, int len, void *ret)')
  const bnClearFree = lib.func('void BN_clear_free(void *a)')
  const bnCtxNew = lib.func('void *BN_CTX_new()')
  const group = groupNew(null, null, NID_SECP521R1) as Ptr
  const ctx = bnCtxNew() as Ptr
  // Scratch points for the process lifetime: every call below is synchronous, so they are
  // never used by two requests at once.
  const q = group === null ? null : (pointNew(group) as Ptr)
  const r = group === null ? null : (pointNew(group) as Ptr)
  if (group === null || ctx === null || q === null || r === null)
    throw new Error('libcrypto: cannot allocate the P-521 group')
  return {
    mul(scalar, point) {
      if (point.length !== POINT_BYTES || oct2point(group, q, point, point.length, ctx) !== 1)
        return undefined
      if (pointMul(group, r, null, q, scalar, ctx) !== 1 || isInfinity(group, r) === 1)
        return undefined
      const out = Buffer.alloc(POINT_BYTES)
      return point2oct(group, r, POINT_CONVERSION_UNCOMPRESSED, out, out.length, ctx) ===
        POINT_BYTES
        ? out
        : undefined
    },
    bnFromBytes(bytes) {
      const bn = bnBin2bn(bytes, bytes.length, null) as Ptr
      if (bn === null) throw new Error('libcrypto: BN_bin2bn failed')
      return bn
    },
    bnClearFree(bn) {
      bnClearFree(bn)
    },
  }
}

/** Known-answer test against @noble/curves: random scalar times a random point. */
function selfTest(lc: Libcrypto): void {
  const Point = p521.Point
  const k = Point.Fn.fromBytes(p521.utils.randomSecretKey())
  const X = Point.BASE.multiply(Point.Fn.fromBytes(p521.utils.randomSecretKey()))
  const bn = lc.bnFromBytes(numberToBytesBE(k, BYTES))
  try {
    const got = lc.mul(bn, X.toBytes(false))
    const want = X.multiply(k).toBytes(false)
    if (got === undefined || !Buffer.from(want).equals(got))
      throw new Error('libcrypto: P-521 self-test mismatch')
  } finally {
    lc.bnClearFree(bn)
  }
}

export type EcmrBackend = 'libcrypto' | 'node' | 'webcrypto'

let loaded: Promise<Libcrypto | undefined> | undefined

function mode(): 'auto' | EcmrBackend {
  const m = process.env['UNLOCKD_TANG_ECMR'] ?? 'auto'
  if (m !== 'auto' && m !== 'node' && m !== 'libcrypto' && m !== 'webcrypto')
    throw new UnlockdError(
      'config_invalid',
      'UNLOCKD_TANG_ECMR must be auto, libcrypto, node or webcrypto',
    )
  return m
}

function libcrypto(): Promise<Libcrypto | undefined> {
  loaded ??= (async () => {
    if (mode() === 'node' || mode() === 'webcrypto') return undefined
    try {
      const lc = await loadLibcrypto()
      selfTest(lc)
      return lc
    } catch (cause) {
      if (mode() === 'libcrypto')
        throw new UnlockdError(
          'internal',
          'UNLOCKD_TANG_ECMR=libcrypto but the system libcrypto cannot be used',
          { cause },
        )
      return undefined
    }
  })()
  return loaded
}

/** Which implementation {@link createFastEcmrServer} uses in this process. */
export async function ecmrBackend(): Promise<EcmrBackend> {
  if ((await libcrypto()) !== undefined) return 'libcrypto'
  return mode() === 'webcrypto' ? 'webcrypto' : 'node'
}

// The scalar is freed only once nothing can call `recover` on its server any more.
const scalars = new FinalizationRegistry<{ lc: Libcrypto; bn: Ptr }>(({ lc, bn }) =>
  lc.bnClearFree(bn),
)

function enc(bytes: Uint8Array): string {
  return b64uEncode(bytes)
}

/**
 * Prepare an exchange key for `/rec`: system libcrypto when usable, else node:crypto. Same
 * contract and byte-identical replies as shared/tang/mcr.ts `recover`.
 */
export async function createFastEcmrServer(
  serverExchangePrivateJwk: EcPrivateJwk,
): Promise<EcmrServer> {
  const lc = await libcrypto()
  if (lc === undefined)
    return mode() === 'webcrypto'
      ? createEcmrServer(serverExchangePrivateJwk)
      : createNodeEcmrServer(serverExchangePrivateJwk)
  const jwk = parseEcPrivateJwk(serverExchangePrivateJwk, 'keystore_invalid')
  if (jwk.alg !== undefined && jwk.alg !== 'ECMR')
    throw new UnlockdError('keystore_invalid', 'exchange key alg must be ECMR')
  if (jwk.key_ops !== undefined && !jwk.key_ops.includes('deriveKey'))
    throw new UnlockdError('keystore_invalid', 'exchange key is not allowed to deriveKey')
  const d = b64uDecode(jwk.d) as Uint8Array
  const bn = lc.bnFromBytes(d)
  d.fill(0)
  const server: EcmrServer = {
    publicJwk: {
      kty: 'EC',
      crv: TANG_CRV,
      x: jwk.x,
      y: jwk.y,
      alg: 'ECMR',
      key_ops: ['deriveKey'],
    },
    recover(req: unknown): Promise<EcmrReplyJwk> {
      try {
        const X = checkRecoveryRequest(req)
        const out = lc.mul(bn, X.uncompressed)
        if (out === undefined)
          throw new UnlockdError('internal', 'libcrypto could not compute the ECMR point')
        // point2oct writes both coordinates at full length, as tangd's replies have them.
        return Promise.resolve({
          alg: 'ECMR',
          crv: TANG_CRV,
          key_ops: ['deriveKey'],
          kty: 'EC',
          x: enc(out.subarray(1, 1 + BYTES)),
          y: enc(out.subarray(1 + BYTES)),
        })
      } catch (e) {
        return Promise.reject(e)
      }
    },
  }
  scalars.register(server, { lc, bn })
  return server
}
