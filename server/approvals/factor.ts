/**
 * The acting operator's own second factor, required for every action that releases key
 * material or loosens a control (policy relaxation, host resume, escrow export, operator
 * changes, KEK rotation, Tang host add and key rotation). A stolen API token alone can only
 * tighten. The code travels in the `X-Unlockd-Totp` header (or, for the older routes, a `code`
 * body field) and is checked by the replay-protected checker in ./totp.ts. An operator without
 * an enrolled factor is refused outright: there is no "checks skipped" state.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { TOTP_CODE_RE } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { deny } from '../store/denial.ts'
import type { OperatorRow, StoreTx } from '../store/store.ts'
import { checkOperatorCode } from './totp.ts'

export const TOTP_HEADER = 'x-unlockd-totp'

const GRANT: unique symbol = Symbol('quorum grant')

/**
 * Proof that a quorum of distinct operators approved one action, each with their own factor
 * (made only by ./quorum.ts once the k-th vote counted). It stands in for the requester's code
 * when the approved action runs; nothing from a request can produce one.
 */
export interface QuorumGrant {
  readonly [GRANT]: true
  readonly action: string
  readonly approvers: readonly string[]
}

export function quorumGrant(action: string, approvers: readonly string[]): QuorumGrant {
  return Object.freeze({ [GRANT]: true as const, action, approvers: [...approvers] })
}

/** What authorizes a loosening action: the caller's own code, or a quorum's grant. */
export type Authority = string | undefined | QuorumGrant

function isGrant(a: Authority): a is QuorumGrant {
  return typeof a === 'object' && a[GRANT] === true
}

/** The code from the request header, checked for shape; undefined when absent. */
export function headerCode(value: string | undefined): string | undefined {
  if (value === undefined || value === '') return undefined
  if (!TOTP_CODE_RE.test(value))
    throw new UnlockdError('bad_request', 'X-Unlockd-Totp must be the 6 digits of a TOTP code')
  return value
}

/**
 * Inside a transaction: reload `caller` (a removed operator is refused), refuse an operator
 * without a factor, and check `code` (spending its step). Refusals are denials, so the failure
 * count and audit entry commit. A quorum grant replaces the code: its voters (the caller among
 * them) already proved their factors.
 */
export async function requireFactor(
  deps: ServerDeps,
  t: StoreTx,
  caller: OperatorRow,
  code: Authority,
  now: number,
  action: string,
  host: string | null = null,
): Promise<OperatorRow> {
  const fresh = await t.getOperator(caller.id)
  if (!fresh || fresh.removedAt !== null)
    throw deny(new UnlockdError('unauthorized', 'this operator was removed'))
  if (isGrant(code)) return fresh
  requireEnrolled(fresh, action)
  if (code === undefined)
    throw deny(
      new UnlockdError(
        'totp_required',
        `${action} needs your own current TOTP code (X-Unlockd-Totp); an API token alone cannot do it`,
      ),
    )
  await checkOperatorCode(deps, t, fresh, code, now, { host, detail: { action } })
  return fresh
}

/** Refuse an operator that holds no second factor: it can do nothing security-relevant. */
export function requireEnrolled(op: OperatorRow, action: string): void {
  if (op.totpCt === null)
    throw deny(
      new UnlockdError(
        'forbidden',
        `operator ${op.name} has no second factor enrolled, so it cannot ${action}; redeem an enrollment with \`unlockd operator enroll\``,
      ),
    )
}

/** requireFactor in a transaction of its own, for actions that run their own steps after it. */
export function verifyFactor(
  deps: ServerDeps,
  caller: OperatorRow,
  code: Authority,
  action: string,
  host: string | null = null,
): Promise<OperatorRow> {
  return deps.store.tx((t) => requireFactor(deps, t, caller, code, deps.now(), action, host))
}
