/**
 * Operator management: add (with a fresh API token and TOTP secret, both shown once), list,
 * remove, and (re-)enroll TOTP. A stolen API token must not be enough to mint a new operator
 * or reset a TOTP secret, so once the *calling* operator has TOTP, each of these
 * changes also needs the caller's current code. The first operator (`server init`) has no
 * TOTP; it enrolls with `unlockd operator totp NAME` and from then on the rule applies.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { OperatorSecrets, OperatorView } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { hashToken, newId, newToken } from '../escrow/secrets.ts'
import { deny } from '../store/denial.ts'
import type { OperatorRow, StoreTx } from '../store/store.ts'
import { checkOperatorCode, newTotpSecret, otpauthUri } from './totp.ts'

export function operatorView(o: OperatorRow): OperatorView {
  return { id: o.id, name: o.name, createdAt: o.createdAt, totp: o.totpCt !== null }
}

/**
 * Inside a transaction: the caller's code when the caller has TOTP. A refusal is a denial, so
 * the transaction commits the failure count before it is thrown on.
 */
async function requireCallerCode(
  deps: ServerDeps,
  t: StoreTx,
  caller: OperatorRow,
  code: string | undefined,
  now: number,
  action: string,
): Promise<void> {
  const fresh = await t.getOperator(caller.id)
  if (!fresh || fresh.removedAt !== null)
    throw deny(new UnlockdError('unauthorized', 'this operator was removed'))
  if (fresh.totpCt === null) return
  if (code === undefined)
    throw deny(new UnlockdError('totp_invalid', `${action} needs your TOTP code (--code)`))
  await checkOperatorCode(deps, t, fresh, code, now, { detail: { action } })
}

export function listOperators(deps: ServerDeps): Promise<OperatorView[]> {
  return deps.store.tx(async (t) => (await t.listOperators()).map(operatorView))
}

export async function addOperator(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: string | undefined,
): Promise<OperatorSecrets> {
  const token = newToken('uo')
  const tokenHash = await hashToken(token)
  return deps.store.tx(async (t) => {
    const now = deps.now()
    await requireCallerCode(deps, t, caller, code, now, 'operator add')
    if (await t.getOperatorByName(name))
      throw deny(new UnlockdError('operator_exists', `operator ${name} already exists`))
    const id = newId('op', 9)
    const { secret, stored } = newTotpSecret(deps, id)
    const row: OperatorRow = { id, name, tokenHash, ...stored, createdAt: now, removedAt: null }
    await t.insertOperator(row)
    await audit(t, now, `operator:${caller.name}`, 'operator.add', null, {
      operator: name,
      totp: true,
    })
    return { operator: operatorView(row), token, otpauthUri: otpauthUri(name, secret) }
  })
}

export async function removeOperator(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: string | undefined,
): Promise<OperatorView> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    await requireCallerCode(deps, t, caller, code, now, 'operator remove')
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
    await audit(t, now, `operator:${caller.name}`, 'operator.remove', null, { operator: name })
    return operatorView({ ...op, removedAt: now, totpCt: null })
  })
}

/** Enroll (or replace) `name`'s TOTP secret; the new otpauth URI is shown once. */
export async function enrollTotp(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: string | undefined,
): Promise<OperatorSecrets> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    await requireCallerCode(deps, t, caller, code, now, 'operator totp')
    const op = await t.getOperatorByName(name)
    if (!op) throw deny(new UnlockdError('operator_unknown', `no operator named ${name}`))
    const { secret, stored } = newTotpSecret(deps, op.id)
    await t.updateOperator(op.id, stored)
    await audit(
      t,
      now,
      `operator:${caller.name}`,
      op.totpCt === null ? 'operator.totp_enroll' : 'operator.totp_reset',
      null,
      { operator: name },
    )
    return { operator: operatorView({ ...op, ...stored }), otpauthUri: otpauthUri(name, secret) }
  })
}
