/**
 * Operator management: add, list, remove, and (re-)enroll TOTP. A stolen API token must not be
 * enough to mint a new operator or reset a factor, so every change needs the caller's own
 * current code, and an operator without a factor can make none (./factor.ts). The first
 * operator gets its factor from `server init`.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { OperatorSecrets, OperatorView } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { hashToken, newId, newToken } from '../escrow/secrets.ts'
import { deny } from '../store/denial.ts'
import type { OperatorRow } from '../store/store.ts'
import { requireFactor, type Authority } from './factor.ts'
import { newTotpSecret, otpauthUri } from './totp.ts'

export function operatorView(o: OperatorRow): OperatorView {
  return { id: o.id, name: o.name, createdAt: o.createdAt, totp: o.totpCt !== null }
}

export function listOperators(deps: ServerDeps): Promise<OperatorView[]> {
  return deps.store.tx(async (t) => (await t.listOperators()).map(operatorView))
}

export async function addOperator(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: Authority,
): Promise<OperatorSecrets> {
  const token = newToken('uo')
  const tokenHash = await hashToken(token)
  return deps.store.tx(async (t) => {
    const now = deps.now()
    await requireFactor(deps, t, caller, code, now, 'operator add')
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
    await audit(t, now, `operator:${caller.name}`, 'operator.remove', null, { operator: name })
    return operatorView({ ...op, removedAt: now, totpCt: null })
  })
}

/** Enroll (or replace) `name`'s TOTP secret; the new otpauth URI is shown once. */
export async function enrollTotp(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  code: Authority,
): Promise<OperatorSecrets> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    await requireFactor(deps, t, caller, code, now, 'operator totp')
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
