/**
 * Authenticating a host-signed request: find the host by the JWS `kid`, verify the signature
 * with its enrolled key, check the request time. Nonce consumption happens in the caller's
 * transaction so that a nonce is spent exactly when the decision is recorded.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { b64uEncode, randomBytes } from '../../shared/crypto/bytes.ts'
import { peekJwsKid } from '../../shared/crypto/jws.ts'
import type { JwsPurpose } from '../../shared/crypto/algorithms.ts'
import type { ServerDeps } from '../context.ts'
import type { HostRow, StoreTx } from '../store/store.ts'
import { verifyHostJws } from './jws-verify.ts'

export async function authenticateHost(
  deps: ServerDeps,
  jws: unknown,
  purpose: JwsPurpose,
): Promise<{ host: HostRow; payload: unknown }> {
  const kid = peekJwsKid(jws, purpose)
  const host = await deps.store.tx((t) => t.getHost(kid), { host: kid })
  if (!host) throw new UnlockdError('host_unknown', 'no host is enrolled with this key')
  // node:crypto with a per-host KeyObject (./jws-verify.ts); same checks as verifyHostRequest.
  const payload = verifyHostJws(jws as string, host.signingJwk)
  return { host, payload }
}

export function checkIat(deps: ServerDeps, iat: number): void {
  if (Math.abs(deps.now() - iat) > deps.settings.iatSkew) {
    throw new UnlockdError(
      'iat_skew',
      'request time is too far from the server clock; check the host clock (NTP)',
    )
  }
}

export async function consumeNonceOrThrow(t: StoreTx, nonce: string, now: number): Promise<void> {
  const r = await t.consumeNonce(nonce, now)
  if (r === 'ok') return
  if (r === 'reused')
    throw new UnlockdError('nonce_reused', 'this nonce was already used (replayed request)')
  if (r === 'expired')
    throw new UnlockdError('nonce_expired', 'this nonce has expired; fetch a new one')
  throw new UnlockdError('nonce_unknown', 'this nonce was not issued by this server')
}

export async function issueNonce(deps: ServerDeps): Promise<{ nonce: string; expiresAt: number }> {
  const nonce = b64uEncode(randomBytes(32))
  const expiresAt = deps.now() + deps.settings.nonceTtl
  // Not durable: a nonce lost in a crash costs the host one more GET, and skipping this fsync
  // leaves one per unlock exchange (the unlock commit, which spends the nonce durably).
  await deps.store.tx((t) => t.insertNonce(nonce, expiresAt), { durable: false })
  return { nonce, expiresAt }
}
