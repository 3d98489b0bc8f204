/**
 * Operator TOTP (RFC 6238 via otplib: SHA-1, 6 digits, 30 s steps, ±1 step of clock drift).
 * The secret is wrapped by the current KEK (AAD binds operator id and KEK version) and shown
 * once, as an otpauth:// URI. A code is accepted once: the operator's last accepted step only
 * moves forward (store.claimTotpStep), so a replayed or older code is refused. Wrong and
 * replayed codes count toward a lockout per operator.
 *
 * The server clock is `deps.now()`, so tests with an injected clock generate codes for it.
 */
import { authenticator } from 'otplib'
import { UnlockdError } from '../../shared/errors.ts'
import { fromUtf8, timingSafeEqual, utf8, zeroize } from '../../shared/crypto/bytes.ts'
import type { ServerDeps } from '../context.ts'
import { totpAad, unwrap, wrap } from '../keys/kek-wrap.ts'
import type { OperatorRow, StoreTx } from '../store/store.ts'
import { audit } from '../escrow/audit-log.ts'
import { deny } from '../store/denial.ts'

export const TOTP_STEP = 30
const TOTP_WINDOW = 1
export const TOTP_ISSUER = 'unlockd'

/** A fresh secret (160 bits, base32) and what to store for it. */
export function newTotpSecret(
  deps: Pick<ServerDeps, 'keystore'>,
  operatorId: string,
): {
  secret: string
  stored: Pick<OperatorRow, 'totpKekVersion' | 'totpIv' | 'totpCt' | 'totpLastStep'>
} {
  const secret = authenticator.generateSecret(20)
  const version = deps.keystore.currentVersion
  const { iv, ct } = wrap(deps.keystore.kek(version), utf8(secret), totpAad(operatorId, version))
  return { secret, stored: { totpKekVersion: version, totpIv: iv, totpCt: ct, totpLastStep: null } }
}

export function otpauthUri(operatorName: string, secret: string): string {
  return authenticator.keyuri(operatorName, TOTP_ISSUER, secret)
}

/** The code for `secret` at `atSeconds` (tests and tools; the server only verifies). */
export function totpCodeAt(secret: string, atSeconds: number): string {
  return authenticator.clone({ epoch: atSeconds * 1000 }).generate(secret)
}

/**
 * The time step a code matches within ±1 step of `now`, or undefined. Every candidate is
 * computed and compared in constant time, so timing does not tell which step was close.
 */
export function matchStep(secret: string, code: string, now: number): number | undefined {
  const here = Math.floor(now / TOTP_STEP)
  let found: number | undefined
  for (let d = -TOTP_WINDOW; d <= TOTP_WINDOW; d++) {
    const step = here + d
    const expected = totpCodeAt(secret, step * TOTP_STEP)
    if (timingSafeEqual(utf8(expected), utf8(code))) found = step
  }
  return found
}

/**
 * Check `code` for `op` inside the caller's transaction. A failure is recorded and audited here
 * and thrown as a denial (store/denial.ts), so the transaction commits the failure count (the
 * lockout) and its audit entry before the error reaches the caller.
 */
export async function checkOperatorCode(
  deps: ServerDeps,
  t: StoreTx,
  op: OperatorRow,
  code: string,
  now: number,
  about: { host?: string | null; detail?: Record<string, unknown> } = {},
): Promise<void> {
  if (op.totpCt === null || op.totpIv === null || op.totpKekVersion === null) {
    throw deny(
      new UnlockdError(
        'forbidden',
        `operator ${op.name} has no TOTP enrolled; redeem your enrollment code with \`unlockd operator enroll\` (another operator opens one with \`unlockd operator totp ${op.name}\`)`,
      ),
    )
  }
  const failures = await t.countTotpFailures(op.id, now - deps.settings.totpFailureWindow)
  if (failures >= deps.settings.totpMaxFailures) {
    await audit(t, now, `operator:${op.name}`, 'totp.locked', about.host ?? null, {
      operator: op.name,
      failures,
      ...about.detail,
    })
    throw deny(
      new UnlockdError(
        'totp_locked',
        `too many wrong TOTP codes for operator ${op.name}; try again later`,
      ),
    )
  }
  const secretBytes = unwrap(
    deps.keystore.kek(op.totpKekVersion),
    op.totpIv,
    op.totpCt,
    totpAad(op.id, op.totpKekVersion),
  )
  const step = matchStep(fromUtf8(secretBytes), code, now)
  zeroize(secretBytes)
  let failure: { code: 'totp_invalid' | 'totp_replayed'; message: string } | undefined
  if (step === undefined) failure = { code: 'totp_invalid', message: 'the TOTP code is not valid' }
  else if (!(await t.claimTotpStep(op.id, step)))
    failure = {
      code: 'totp_replayed',
      message: 'this TOTP code was already used; wait for the next one',
    }
  if (failure) {
    await t.recordTotpFailure(op.id, now)
    await audit(t, now, `operator:${op.name}`, 'totp.fail', about.host ?? null, {
      operator: op.name,
      reason: failure.code,
      ...about.detail,
    })
    throw deny(new UnlockdError(failure.code, failure.message))
  }
}
