/**
 * Passkeys (WebAuthn, via @simplewebauthn/server) for the phone page. A passkey is bound to
 * the server's origin (`settings.publicUrl`): the relying-party id is its host name and every
 * ceremony must come from exactly that origin, so a look-alike site cannot use or phish it.
 *
 * - Registration: `unlockd operator passkey NAME` (the operator's own token and TOTP code)
 *   issues a one-time link `/approve/register/TOKEN` (short TTL, stored hashed, single use).
 *   The page runs navigator.credentials.create and the attestation is verified here.
 * - Approval: `/approve/ID` asks for an assertion whose challenge is single use and bound to
 *   that approval (and to the operator whose name was typed, when one was); the signature
 *   counter only moves forward. A verified assertion is that operator's vote.
 */
import {
  generateAuthenticationOptions,
  generateRegistrationOptions,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
  type AuthenticationResponseJSON,
  type AuthenticatorTransportFuture,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
} from '@simplewebauthn/server'
import { createHmac } from 'node:crypto'
import { UnlockdError } from '../../shared/errors.ts'
import { b64uDecode, b64uEncode, fromUtf8, randomBytes, utf8 } from '../../shared/crypto/bytes.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { hashToken } from '../escrow/secrets.ts'
import { deny } from '../store/denial.ts'
import type { OperatorRow, PasskeyRow, StoreTx } from '../store/store.ts'
import { checkOperatorCode } from './totp.ts'

/** How long a registration link stays valid, seconds. */
export const PASSKEY_LINK_TTL = 10 * 60
const CHALLENGE_TTL = 5 * 60
export const PASSKEY_TOKEN_RE = /^[A-Za-z0-9_-]{43}$/

export interface RelyingParty {
  rpId: string
  origin: string
}

/** The relying party from `settings.publicUrl`; passkeys need one. */
export function relyingParty(deps: ServerDeps): RelyingParty {
  const url = deps.settings.publicUrl
  if (!url)
    throw new UnlockdError(
      'conflict',
      'passkeys need the server public URL; set publicUrl in the server configuration',
    )
  const u = new URL(url)
  return { rpId: u.hostname, origin: u.origin }
}

export function passkeysEnabled(deps: ServerDeps): boolean {
  return deps.settings.publicUrl !== null
}

const refused = (why: string): UnlockdError =>
  new UnlockdError('forbidden', `the passkey was not accepted: ${why}`)

/**
 * Issue a one-time registration link for the calling operator's own passkey. Needs the
 * caller's current TOTP code (CLI rules); nobody can open a link for somebody else.
 */
export async function issuePasskeyLink(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: string,
): Promise<{ operator: string; url: string; expiresAt: number }> {
  const rp = relyingParty(deps)
  const token = b64uEncode(randomBytes(32))
  const tokenHash = await hashToken(token)
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const fresh = await t.getOperator(caller.id)
    if (!fresh || fresh.removedAt !== null)
      throw deny(new UnlockdError('unauthorized', 'this operator was removed'))
    if (fresh.name !== name)
      throw deny(
        new UnlockdError(
          'forbidden',
          `a passkey belongs to its operator: run \`unlockd operator passkey ${name}\` with ${name}'s own API token`,
        ),
      )
    await checkOperatorCode(deps, t, fresh, code, now, { detail: { action: 'operator passkey' } })
    const expiresAt = now + PASSKEY_LINK_TTL
    await t.insertPasskeyEnrollment({
      tokenHash,
      operatorId: fresh.id,
      createdAt: now,
      expiresAt,
      usedAt: null,
    })
    await audit(t, now, `operator:${fresh.name}`, 'operator.passkey_link', null, {
      operator: fresh.name,
      expiresAt,
    })
    return { operator: fresh.name, url: `${rp.origin}/approve/register/${token}`, expiresAt }
  })
}

/** The operator a live registration link is for (undefined when unknown, used or expired). */
export async function passkeyLinkOperator(
  deps: ServerDeps,
  token: string,
): Promise<OperatorRow | undefined> {
  if (!PASSKEY_TOKEN_RE.test(token)) return undefined
  const tokenHash = await hashToken(token)
  return deps.store.tx(async (t) => {
    const e = await t.getPasskeyEnrollment(tokenHash)
    if (!e || e.usedAt !== null || e.expiresAt <= deps.now()) return undefined
    const op = await t.getOperator(e.operatorId)
    return op && op.removedAt === null ? op : undefined
  })
}

const linkGone = (): UnlockdError =>
  new UnlockdError(
    'token_invalid',
    'this registration link is not valid any more; run `unlockd operator passkey NAME` for a new one',
  )

export async function registrationOptions(
  deps: ServerDeps,
  token: string,
): Promise<PublicKeyCredentialCreationOptionsJSON> {
  const rp = relyingParty(deps)
  const op = await passkeyLinkOperator(deps, token)
  if (!op) throw linkGone()
  const tokenHash = await hashToken(token)
  const existing = await deps.store.tx((t) => t.listPasskeys(op.id))
  const options = await generateRegistrationOptions({
    rpName: 'unlockd',
    rpID: rp.rpId,
    userName: op.name,
    userID: new Uint8Array(utf8(op.id)),
    attestationType: 'none',
    excludeCredentials: existing.map((p) => ({
      id: p.id,
      transports: p.transports as AuthenticatorTransportFuture[],
    })),
    authenticatorSelection: { residentKey: 'preferred', userVerification: 'required' },
    timeout: CHALLENGE_TTL * 1000,
  })
  await deps.store.tx((t) =>
    t.insertWebauthnChallenge({
      challenge: options.challenge,
      purpose: 'register',
      binding: tokenHash,
      operatorId: op.id,
      expiresAt: deps.now() + CHALLENGE_TTL,
    }),
  )
  return options
}

/** The challenge a browser signed, from its clientDataJSON. */
function signedChallenge(clientDataJSON: unknown): string {
  const raw = typeof clientDataJSON === 'string' ? b64uDecode(clientDataJSON) : undefined
  if (!raw) throw refused('the browser response is malformed')
  try {
    const c = (JSON.parse(fromUtf8(raw)) as { challenge?: unknown }).challenge
    if (typeof c === 'string' && /^[A-Za-z0-9_-]{16,128}$/.test(c)) return c
  } catch {
    // falls through to the refusal
  }
  throw refused('the browser response is malformed')
}

/** Take a challenge once: it must exist, be for `purpose` and `binding`, and be unexpired. */
async function takeChallenge(
  deps: ServerDeps,
  challenge: string,
  purpose: 'register' | 'approve',
  binding: string,
) {
  const c = await deps.store.tx((t) => t.takeWebauthnChallenge(challenge))
  if (!c || c.purpose !== purpose || c.binding !== binding || c.expiresAt <= deps.now())
    throw refused('the challenge is unknown, used, expired or for another request; try again')
  return c
}

export async function finishRegistration(
  deps: ServerDeps,
  token: string,
  response: RegistrationResponseJSON,
): Promise<{ operator: string; credentialId: string }> {
  const rp = relyingParty(deps)
  if (!PASSKEY_TOKEN_RE.test(token)) throw linkGone()
  const tokenHash = await hashToken(token)
  const challenge = signedChallenge(response.response?.clientDataJSON)
  const c = await takeChallenge(deps, challenge, 'register', tokenHash)
  let info
  try {
    const v = await verifyRegistrationResponse({
      response,
      expectedChallenge: challenge,
      expectedOrigin: rp.origin,
      expectedRPID: rp.rpId,
      requireUserVerification: true,
    })
    if (!v.verified) throw refused('the attestation did not verify')
    info = v.registrationInfo
  } catch (err) {
    if (err instanceof UnlockdError) throw err
    throw refused(err instanceof Error ? err.message : 'the attestation did not verify')
  }
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const op = c.operatorId === null ? undefined : await t.getOperator(c.operatorId)
    if (!op || op.removedAt !== null) throw deny(linkGone())
    if (!(await t.usePasskeyEnrollment(tokenHash, now))) throw deny(linkGone())
    if (await t.getPasskey(info.credential.id))
      throw deny(refused('this passkey is already registered'))
    await t.insertPasskey({
      id: info.credential.id,
      operatorId: op.id,
      publicKey: info.credential.publicKey,
      counter: info.credential.counter,
      transports: info.credential.transports ?? [],
      rpId: rp.rpId,
      createdAt: now,
      lastUsedAt: null,
    })
    await audit(t, now, `operator:${op.name}`, 'operator.passkey_add', null, {
      operator: op.name,
      credential: info.credential.id,
      rpId: rp.rpId,
    })
    return { operator: op.name, credentialId: info.credential.id }
  })
}

/** A stand-in credential id for a name with no operator (the options look the same). */
function decoyCredentialId(deps: ServerDeps, name: string): string {
  const key = createHmac('sha256', deps.keystore.kek(deps.keystore.currentVersion))
    .update('unlockd/v1/passkey-decoy')
    .digest()
  return b64uEncode(new Uint8Array(createHmac('sha256', key).update(name).digest()))
}

/**
 * Options for approving `approvalId` with a passkey. With an operator name, only that
 * operator's passkeys are allowed (an unknown name gets a decoy id, so the answer does not
 * tell names apart); without one, any discoverable passkey of this server may answer.
 */
export async function approvalOptions(
  deps: ServerDeps,
  approvalId: string,
  operatorName: string | undefined,
): Promise<PublicKeyCredentialRequestOptionsJSON> {
  const rp = relyingParty(deps)
  let operatorId: string | null = null
  let allow: { id: string; transports?: AuthenticatorTransportFuture[] }[] | undefined
  if (operatorName !== undefined) {
    const { op, keys } = await deps.store.tx(async (t) => {
      const op = await t.getOperatorByName(operatorName)
      return { op, keys: op ? await t.listPasskeys(op.id) : [] }
    })
    operatorId = op?.id ?? `unknown:${operatorName}`
    allow = keys.length
      ? keys.map((p) => ({ id: p.id, transports: p.transports as AuthenticatorTransportFuture[] }))
      : [{ id: decoyCredentialId(deps, operatorName), transports: ['internal', 'hybrid'] }]
  }
  const options = await generateAuthenticationOptions({
    rpID: rp.rpId,
    userVerification: 'required',
    timeout: CHALLENGE_TTL * 1000,
    ...(allow ? { allowCredentials: allow } : {}),
  })
  await deps.store.tx((t) =>
    t.insertWebauthnChallenge({
      challenge: options.challenge,
      purpose: 'approve',
      binding: approvalId,
      operatorId,
      expiresAt: deps.now() + CHALLENGE_TTL,
    }),
  )
  return options
}

/**
 * Verify an assertion for `approvalId`. Returns the operator and the check to run inside the
 * approval's transaction (the counter moves forward there, atomically, and the use is audited).
 */
export async function verifyApprovalAssertion(
  deps: ServerDeps,
  approvalId: string,
  response: AuthenticationResponseJSON,
): Promise<{
  op: OperatorRow
  factor: (t: StoreTx, op: OperatorRow, now: number, host: string | null) => Promise<void>
}> {
  const rp = relyingParty(deps)
  const challenge = signedChallenge(response.response?.clientDataJSON)
  const c = await takeChallenge(deps, challenge, 'approve', approvalId)
  const found = await deps.store.tx(async (t) => {
    const key = typeof response.id === 'string' ? await t.getPasskey(response.id) : undefined
    const op = key && (await t.getOperator(key.operatorId))
    return key && op && op.removedAt === null ? { key, op } : undefined
  })
  if (!found) throw refused('it is not registered with this server')
  const { key, op } = found
  if (c.operatorId !== null && c.operatorId !== op.id)
    throw refused('it belongs to another operator')
  if (key.rpId !== rp.rpId) throw refused('it was registered for another site')
  let newCounter: number
  try {
    const v = await verifyAuthenticationResponse({
      response,
      expectedChallenge: challenge,
      expectedOrigin: rp.origin,
      expectedRPID: rp.rpId,
      credential: {
        id: key.id,
        publicKey: new Uint8Array(key.publicKey),
        counter: key.counter,
        transports: key.transports as AuthenticatorTransportFuture[],
      },
      requireUserVerification: true,
    })
    if (!v.verified) throw refused('the signature did not verify')
    newCounter = v.authenticationInfo.newCounter
  } catch (err) {
    if (err instanceof UnlockdError) throw err
    throw refused(err instanceof Error ? err.message : 'the signature did not verify')
  }
  return { op, factor: passkeyFactor(key, newCounter, approvalId) }
}

function passkeyFactor(key: PasskeyRow, counter: number, approvalId: string) {
  return async (t: StoreTx, op: OperatorRow, now: number, host: string | null): Promise<void> => {
    if (!(await t.usePasskey(key.id, counter, now))) {
      await audit(t, now, `operator:${op.name}`, 'passkey.counter_regressed', host, {
        operator: op.name,
        credential: key.id,
        approval: approvalId,
      })
      throw deny(refused('its signature counter went backwards (a cloned authenticator?)'))
    }
    await audit(t, now, `operator:${op.name}`, 'passkey.use', host, {
      operator: op.name,
      credential: key.id,
      approval: approvalId,
    })
  }
}
