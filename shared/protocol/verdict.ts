/**
 * Signed server verdicts (protocol v2): the server's answer that makes a host do something
 * irreversible or give up (a shred order, a final denial such as `host_shredded`) and the proof
 * on a release that carries the server key for hosts that have none pinned. A compact JWS
 * (EdDSA, `typ` unlockd-verdict+jws, `kid` = RFC 7638 thumbprint of the server key) over the
 * host id, the request's nonce, the host's own fresh challenge, the verdict and the time.
 *
 * The challenge is what makes a recorded verdict useless: the host picks it at random for each
 * request, so no earlier answer (nor one made for another host) can match it.
 */
import { decodeProtectedHeader } from 'jose'
import * as v from 'valibot'
import { UnlockdError } from '../errors.ts'
import { JWS_TYP, SIGNING_ALG } from '../crypto/algorithms.ts'
import { fromUtf8, utf8 } from '../crypto/bytes.ts'
import { thumbprint, type PrivateOkpJwk, type PublicOkpJwk } from '../crypto/keys.ts'
import { signCompactEd25519, verifyCompactEd25519 } from '../crypto/okp.ts'
import { epochSeconds, hostId, name, nonce, parseWith } from './validate.ts'

/** What a verdict says: `shred` (watch order), `released` (release proof) or an error code. */
export const verdictName = v.pipe(v.string(), v.regex(/^[a-z_]{1,40}$/))

export const VerdictClaimsSchema = v.strictObject({
  host: hostId,
  nonce,
  challenge: nonce,
  verdict: verdictName,
  /** The volumes a shred order names (empty: all). */
  volumes: v.pipe(v.array(name), v.maxLength(64)),
  iat: epochSeconds,
})
export type VerdictClaims = v.InferOutput<typeof VerdictClaimsSchema>

/** What the host expects a verdict to be bound to: its own request. */
export interface VerdictBinding {
  host: string
  nonce: string
  challenge: string
  verdict: string
}

const MAX_VERDICT = 4096

export async function signVerdict(key: PrivateOkpJwk, claims: VerdictClaims): Promise<string> {
  return signCompactEd25519(
    { alg: SIGNING_ALG, typ: JWS_TYP.verdict, kid: await thumbprint(key) },
    utf8(JSON.stringify(claims)),
    key,
  )
}

function unsigned(why: string): UnlockdError {
  return new UnlockdError('verdict_unsigned', why)
}

/**
 * Verify a verdict with the keys the host trusts and check that it answers this very request.
 * Returns the claims; throws `verdict_unsigned` (never the verdict's own code) on any mismatch.
 */
export async function verifyVerdict(
  jws: unknown,
  trusted: readonly PublicOkpJwk[],
  expect: VerdictBinding,
): Promise<VerdictClaims> {
  if (trusted.length === 0)
    throw unsigned(
      'this host has no pinned server key (it enrolled before signed verdicts): re-enroll it, or let one unlock succeed so that it pins the key',
    )
  if (typeof jws !== 'string' || jws.length > MAX_VERDICT)
    throw unsigned('the reply carries no signed verdict')
  let kid: unknown
  try {
    kid = decodeProtectedHeader(jws).kid
  } catch {
    throw unsigned('the reply carries no signed verdict')
  }
  let key: PublicOkpJwk | undefined
  for (const k of trusted) if ((await thumbprint(k)) === kid) key = k
  if (!key) throw unsigned('the verdict is not signed by a pinned server key')
  let payload: Uint8Array
  try {
    const r = verifyCompactEd25519(jws, key)
    if (r.header['typ'] !== JWS_TYP.verdict) throw new Error('typ')
    payload = r.payload
  } catch {
    throw unsigned('the verdict signature does not verify with the pinned server key')
  }
  let claims: VerdictClaims
  try {
    claims = parseWith(VerdictClaimsSchema, JSON.parse(fromUtf8(payload)), 'verdict')
  } catch {
    throw unsigned('the verdict payload is malformed')
  }
  if (claims.host !== expect.host) throw unsigned('the verdict was made for another host')
  if (claims.nonce !== expect.nonce || claims.challenge !== expect.challenge)
    throw unsigned('the verdict was made for another request (stale or replayed)')
  if (claims.verdict !== expect.verdict)
    throw unsigned(`the verdict says ${claims.verdict}, not ${expect.verdict}`)
  return claims
}
