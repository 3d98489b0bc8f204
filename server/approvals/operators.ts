/**
 * Operator management: add, list, remove, and factor reset. A stolen API token must not be
 * enough to mint a new operator or reset a factor, so every change needs the caller's own
 * current code, and an operator without a factor can make none (./factor.ts). The first
 * operator gets its factor from `server init`.
 *
 * An operator's credentials belong to that operator: nobody else ever sees them.
 * - `add` creates the operator holding nothing (no usable token, no factor) and returns only a
 *   one-time enrollment code; whoever redeems it (./operator-enroll.ts) gets the API token and
 *   TOTP secret, once.
 * - A reset of *another* operator's factor clears it (TOTP and passkeys), voids the target's
 *   open votes and returns only a one-time code, which the target redeems together with its
 *   own API token. Resetting one's own factor needs the current one and returns the new secret.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type {
  OperatorEnrollment,
  OperatorSecrets,
  OperatorView,
} from '../../shared/protocol/messages.ts'
import { hexEncode, randomBytes } from '../../shared/crypto/bytes.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { hashToken, newId, newToken } from '../escrow/secrets.ts'
import { deny } from '../store/denial.ts'
import type { OperatorEnrollmentRow, OperatorRow, StoreTx } from '../store/store.ts'
import { requireFactor, type Authority } from './factor.ts'
import { newTotpSecret, otpauthUri } from './totp.ts'
import { voidVotesOf } from './void-votes.ts'

/** How long an enrollment code stays redeemable, seconds. */
export const OPERATOR_ENROLL_TTL = 24 * 3600

/**
 * The token hash of an operator that was never given a token: 64 characters like a SHA-256 hex
 * digest, but with a prefix no hex digest has, so no bearer token can ever match it.
 */
const UNISSUED = 'unissued-'
export function unissuedTokenHash(): string {
  return (UNISSUED + hexEncode(randomBytes(32))).slice(0, 64)
}
export function tokenIssued(o: Pick<OperatorRow, 'tokenHash'>): boolean {
  return !o.tokenHash.startsWith(UNISSUED)
}

export function operatorView(o: OperatorRow, enrollmentExpiresAt?: number | null): OperatorView {
  return {
    id: o.id,
    name: o.name,
    createdAt: o.createdAt,
    totp: o.totpCt !== null,
    ...(enrollmentExpiresAt === undefined ? {} : { enrollmentExpiresAt }),
  }
}

export function listOperators(deps: ServerDeps): Promise<OperatorView[]> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const out: OperatorView[] = []
    for (const o of await t.listOperators())
      out.push(operatorView(o, (await t.openOperatorEnrollment(o.id, now))?.expiresAt ?? null))
    return out
  })
}

/** A fresh one-time code and its hash (computed outside the transaction). */
async function newEnrollmentCode(): Promise<{ code: string; codeHash: string }> {
  const code = newToken('oe')
  return { code, codeHash: await hashToken(code) }
}

/** Inside a transaction: replace `op`'s open enrollments by a new one. */
async function openEnrollment(
  t: StoreTx,
  op: OperatorRow,
  kind: OperatorEnrollmentRow['kind'],
  codeHash: string,
  by: OperatorRow,
  now: number,
): Promise<number> {
  await t.dropOperatorEnrollments(op.id)
  const expiresAt = now + OPERATOR_ENROLL_TTL
  await t.insertOperatorEnrollment({
    codeHash,
    operatorId: op.id,
    kind,
    createdBy: by.name,
    createdAt: now,
    expiresAt,
    usedAt: null,
  })
  return expiresAt
}

/**
 * Add operator `name`. It holds nothing until it redeems the returned one-time code with
 * `unlockd operator enroll`; the adder never sees its token or TOTP secret.
 */
export async function addOperator(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: Authority,
): Promise<OperatorEnrollment> {
  const { code: enrollCode, codeHash } = await newEnrollmentCode()
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const by = await requireFactor(deps, t, caller, code, now, 'operator add')
    if (await t.getOperatorByName(name))
      throw deny(new UnlockdError('operator_exists', `operator ${name} already exists`))
    const row: OperatorRow = {
      id: newId('op', 9),
      name,
      tokenHash: unissuedTokenHash(),
      totpKekVersion: null,
      totpIv: null,
      totpCt: null,
      totpLastStep: null,
      createdAt: now,
      removedAt: null,
    }
    await t.insertOperator(row)
    const expiresAt = await openEnrollment(t, row, 'add', codeHash, by, now)
    await audit(t, now, `operator:${by.name}`, 'operator.add', null, {
      operator: name,
      enrollmentExpiresAt: expiresAt,
    })
    return {
      operator: operatorView(row, expiresAt),
      enrollment: { kind: 'add', code: enrollCode, expiresAt },
    }
  })
}

export async function removeOperator(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: Authority,
): Promise<OperatorView> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    await requireFactor(deps, t, caller, code, now, 'operator remove')
    const op = await t.getOperatorByName(name)
    if (!op) throw deny(new UnlockdError('operator_unknown', `no operator named ${name}`))
    if ((await t.listOperators()).length <= 1)
      throw deny(
        new UnlockdError(
          'conflict',
          `operator ${name} is the last one; add another before removing it`,
        ),
      )
    // The wrapped TOTP secret goes with the operator; the token hash stays as a tombstone.
    await t.updateOperator(op.id, {
      removedAt: now,
      totpKekVersion: null,
      totpIv: null,
      totpCt: null,
    })
    await t.dropOperatorEnrollments(op.id)
    await audit(t, now, `operator:${caller.name}`, 'operator.remove', null, { operator: name })
    return operatorView({ ...op, removedAt: now, totpCt: null })
  })
}

/**
 * Reset `name`'s factor. Your own: needs your current code, and the new secret is shown to you
 * once. Another operator's: never returns a secret; the target's TOTP and passkeys are
 * cleared, its votes on pending requests voided, and a one-time code is returned that the
 * target redeems with its own API token (`unlockd operator enroll`). An operator that never
 * redeemed its `add` code gets a new `add` code instead (it has no token to prove itself with).
 */
export async function enrollTotp(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: Authority,
): Promise<OperatorSecrets | OperatorEnrollment> {
  const { code: enrollCode, codeHash } = await newEnrollmentCode()
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const by = await requireFactor(deps, t, caller, code, now, 'operator totp')
    const op = await t.getOperatorByName(name)
    if (!op) throw deny(new UnlockdError('operator_unknown', `no operator named ${name}`))
    const actor = `operator:${by.name}` as const
    if (op.id === by.id) {
      const { secret, stored } = newTotpSecret(deps, op.id)
      await t.updateOperator(op.id, stored)
      await audit(t, now, actor, 'operator.totp_reset', null, { operator: name, self: true })
      return { operator: operatorView({ ...op, ...stored }), otpauthUri: otpauthUri(name, secret) }
    }
    const cleared = { totpKekVersion: null, totpIv: null, totpCt: null, totpLastStep: null }
    await t.updateOperator(op.id, cleared)
    const passkeys = await t.deleteOperatorPasskeys(op.id)
    const voidedVotes = await voidVotesOf(t, op, now, actor, 'factor reset')
    const kind = tokenIssued(op) ? 'reset' : 'add'
    const expiresAt = await openEnrollment(t, op, kind, codeHash, by, now)
    await audit(t, now, actor, 'operator.totp_reset', null, {
      operator: name,
      enrollment: kind,
      enrollmentExpiresAt: expiresAt,
      passkeysRemoved: passkeys,
      voidedVotes,
    })
    return {
      operator: operatorView({ ...op, ...cleared }, expiresAt),
      enrollment: { kind, code: enrollCode, expiresAt },
      voidedVotes,
    }
  })
}
