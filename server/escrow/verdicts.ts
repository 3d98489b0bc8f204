/**
 * The server's side of signed verdicts (shared/protocol/verdict.ts): sign, with the keystore's
 * verdict key, the answers that make a host destroy something or give up, bound to the host,
 * the request's nonce and the host's challenge. Only v2 requests carry a challenge; v1 answers
 * stay unsigned (older agents do not check them).
 */
import { UnlockdError } from '../../shared/errors.ts'
import { publicOf, thumbprint, type PublicOkpJwk } from '../../shared/crypto/keys.ts'
import { signVerdict } from '../../shared/protocol/verdict.ts'
import type { ServerDeps } from '../context.ts'

/** What a verdict answers: the host and the request's nonce and challenge. */
export interface VerdictRequest {
  host: string
  nonce: string
  challenge?: string | undefined
}

/** Codes whose answer ends an unlock attempt for good; they are signed for v2 requests. */
const FINAL = new Set<UnlockdError['code']>([
  'host_shredded',
  'host_suspended',
  'approval_denied',
  'approval_expired',
  'approval_used',
  'cidr_denied',
  'not_yet_valid',
  'expired',
  'rate_limited',
  'volume_unknown',
  'clone_suspected',
])

export function serverPublicKey(deps: ServerDeps): PublicOkpJwk {
  return publicOf(deps.keystore.signingKey())
}

export async function serverKeyInfo(
  deps: ServerDeps,
): Promise<{ serverKey: PublicOkpJwk; serverKeyThumbprint: string }> {
  const serverKey = serverPublicKey(deps)
  return { serverKey, serverKeyThumbprint: await thumbprint(serverKey) }
}

/** A signed verdict for `req`, or undefined for a v1 request (no challenge to bind to). */
export async function verdictFor(
  deps: ServerDeps,
  req: VerdictRequest,
  verdict: string,
  volumes: readonly string[] = [],
): Promise<string | undefined> {
  if (req.challenge === undefined) return undefined
  return signVerdict(deps.keystore.signingKey(), {
    host: req.host,
    nonce: req.nonce,
    challenge: req.challenge,
    verdict,
    volumes: [...volumes],
    iat: deps.now(),
  })
}

/**
 * Run a host route's use case; a final denial it throws leaves with the signed verdict attached
 * (rendered into the error body by server/http/errors.ts).
 */
export async function signingDenials<T>(
  deps: ServerDeps,
  req: VerdictRequest,
  fn: () => Promise<T>,
): Promise<T> {
  try {
    return await fn()
  } catch (err) {
    if (err instanceof UnlockdError && FINAL.has(err.code)) {
      const verdict = await verdictFor(deps, req, err.code)
      if (verdict) Object.assign(err, { verdict })
    }
    throw err
  }
}
