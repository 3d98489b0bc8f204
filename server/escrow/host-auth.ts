/**
 * Authenticating a host-signed request: find the host by the JWS `kid`, verify the signature
 * with its enrolled key, parse the payload, check that it names the signer and the request time
 * (`hostRequest`, the one step every host route takes). Nonce consumption happens in the caller's
 * transaction so that a nonce is spent exactly when the decision is recorded.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { b64uEncode, randomBytes } from '../../shared/crypto/bytes.ts'
import { peekJwsKid } from '../../shared/crypto/jws.ts'
import type { JwsPurpose } from '../../shared/crypto/algorithms.ts'
import {
  parseAddVolumesPayload,
  parsePollPayload,
  parseReportPayload,
  parseUnlockPayload,
  parseWatchPayload,
} from '../../shared/protocol/messages.ts'
import { parseEncryptionPayload } from '../../shared/protocol/encryption.ts'
import type { ServerDeps } from '../context.ts'
import type { HostRow, StoreTx } from '../store/store.ts'
import { verifyHostJws } from './jws-verify.ts'

async function authenticateHost(
  deps: ServerDeps,
  jws: unknown,
  purpose: JwsPurpose,
): Promise<{ host: HostRow; payload: unknown }> {
  const kid = peekJwsKid(jws, purpose)
  const host = await deps.store.tx((t) => t.getHost(kid), { readOnly: true })
  if (!host) throw new UnlockdError('host_unknown', 'no host is enrolled with this key')
  // node:crypto with a per-host KeyObject (./jws-verify.ts); same checks as verifyHostRequest.
  const payload = verifyHostJws(jws as string, host.signingJwk)
  return { host, payload }
}

/** The payload parser of each host-signed request, by its JWS purpose. */
const PAYLOADS = {
  unlock: parseUnlockPayload,
  poll: parsePollPayload,
  volumes: parseAddVolumesPayload,
  watch: parseWatchPayload,
  report: parseReportPayload,
  encryption: parseEncryptionPayload,
} satisfies Partial<Record<JwsPurpose, (raw: unknown) => { host: string; iat: number }>>

export type HostPurpose = keyof typeof PAYLOADS

/** A host-signed request that passed `hostRequest`; its nonce is not spent yet. */
export interface HostRequest<K extends HostPurpose> {
  /** The enrolled host whose key signed it, as read before the caller's transaction. */
  signer: HostRow
  payload: ReturnType<(typeof PAYLOADS)[K]>
}

/**
 * The preamble of every host route: authenticate the signature, parse the payload of `purpose`,
 * require it to name the signing host, and check its time against the server clock.
 */
export async function hostRequest<K extends HostPurpose>(
  deps: ServerDeps,
  jws: unknown,
  purpose: K,
): Promise<HostRequest<K>> {
  const { host: signer, payload: raw } = await authenticateHost(deps, jws, purpose)
  const payload = PAYLOADS[purpose](raw) as HostRequest<K>['payload']
  if (payload.host !== signer.id)
    throw new UnlockdError('protocol_invalid', 'payload host does not match the signing key')
  checkIat(deps, payload.iat)
  return { signer, payload }
}

function checkIat(deps: ServerDeps, iat: number): void {
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
