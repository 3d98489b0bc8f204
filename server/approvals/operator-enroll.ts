/**
 * Redeeming an operator enrollment code (`unlockd operator enroll`, POST /v1/operator/enroll).
 * The route is unauthenticated: the one-time code is the credential. A `reset` enrollment also
 * needs the operator's own API token, so whoever opened the reset (and so knows the code)
 * still cannot take over the factor.
 *
 * - The code is stored hashed, works once and expires (operators.ts OPERATOR_ENROLL_TTL).
 * - Failures are audited and counted per source address only, with the page's growing delays
 *   (page-auth.ts): a wrong code names no operator, so a stranger cannot lock anyone out.
 * - Every refusal gives the same answer; the audit entry says why.
 * - The secrets are in the answer to the redeemer and nowhere else (never logged or audited).
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { OperatorSecrets } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { hashesEqual, hashToken, newToken, tokenFormatOk } from '../escrow/secrets.ts'
import { deny } from '../store/denial.ts'
import { recordPageFailure, requireNoBackoff } from './page-auth.ts'
import { operatorView } from './operators.ts'
import { newTotpSecret, otpauthUri } from './totp.ts'

export const enrollSourceScope = (addr: string): string => `enroll:${addr}`

const refused = (): UnlockdError =>
  new UnlockdError(
    'unauthorized',
    'the enrollment code is not valid (unknown, used or expired), or a reset was not redeemed with your own API token; ask an operator for a new code',
  )

/**
 * Redeem `code` from `source`. `bearer` is the caller's operator API token, if it sent one;
 * a reset enrollment needs the target operator's own.
 */
export async function redeemEnrollment(
  deps: ServerDeps,
  code: string,
  bearer: string | undefined,
  source: string,
): Promise<OperatorSecrets> {
  const codeHash = await hashToken(code)
  const bearerHash =
    bearer !== undefined && tokenFormatOk('uo', bearer) ? await hashToken(bearer) : undefined
  const token = newToken('uo')
  const tokenHash = await hashToken(token)
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const scope = enrollSourceScope(source)
    await requireNoBackoff(t, scope, now, 'source')
    const e = await t.getOperatorEnrollment(codeHash)
    const op = e && (await t.getOperator(e.operatorId))
    const why = !e
      ? 'unknown'
      : e.usedAt !== null
        ? 'used'
        : e.expiresAt <= now
          ? 'expired'
          : !op || op.removedAt !== null
            ? 'operator removed'
            : e.kind === 'reset' && !(bearerHash && hashesEqual(op.tokenHash, bearerHash))
              ? 'not the operator token'
              : undefined
    if (why !== undefined || !e || !op || !(await t.useOperatorEnrollment(codeHash, now))) {
      await recordPageFailure(t, [scope], now)
      await audit(t, now, 'anonymous', 'operator.enroll_fail', null, {
        source,
        reason: why ?? 'used',
        ...(op ? { operator: op.name } : {}),
      })
      throw deny(refused())
    }
    const { secret, stored } = newTotpSecret(deps, op.id)
    const issueToken = e.kind === 'add'
    await t.updateOperator(op.id, { ...stored, ...(issueToken ? { tokenHash } : {}) })
    await t.clearPageFailures(scope)
    await audit(t, now, `operator:${op.name}`, 'operator.enroll', null, {
      operator: op.name,
      kind: e.kind,
      openedBy: e.createdBy,
      source,
    })
    return {
      operator: operatorView({ ...op, ...stored }, null),
      ...(issueToken ? { token } : {}),
      otpauthUri: otpauthUri(op.name, secret),
    }
  })
}
