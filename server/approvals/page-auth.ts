/**
 * Who may act on the phone page without a passkey, and how hard guessing is made there.
 *
 * - A TOTP code is looked at only after an API-token login (operator name plus that
 *   operator's token); a name plus a code is never enough.
 * - The page keeps its own failure counters (store `page_failures`), per source address and,
 *   for wrong codes after a valid token, per operator. They never touch the CLI's TOTP
 *   lockout, so nothing done on the page can stop `unlockd approve` or `shred`.
 * - After a few free failures each further attempt waits twice as long as the last
 *   (exponential backoff, capped). The count is not a rolling window: it only resets on a
 *   success, so slow guessing does not get a fresh budget.
 * - Known and unknown names do the same work (one token hash compared against a stored or a
 *   decoy hash) and get the same answer.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { fromUtf8, zeroize } from '../../shared/crypto/bytes.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { hashToken, hashesEqual, tokenFormatOk } from '../escrow/secrets.ts'
import { totpAad, unwrap } from '../keys/kek-wrap.ts'
import { deny } from '../store/denial.ts'
import type { OperatorRow, StoreTx } from '../store/store.ts'
import { matchStep } from './totp.ts'

/** Failures before any delay. */
export const PAGE_FREE_FAILURES = 5
/** Longest delay between attempts, seconds. */
export const PAGE_MAX_DELAY = 3600

export const sourceScope = (addr: string): string => `src:${addr}`
export const operatorScope = (id: string): string => `op:${id}`

/** Seconds to wait after `failures` failures. */
export function pageDelay(failures: number): number {
  if (failures < PAGE_FREE_FAILURES) return 0
  return Math.min(PAGE_MAX_DELAY, 2 ** (failures - PAGE_FREE_FAILURES + 1))
}

/** Refuse (without counting) while `scope` is still in its backoff delay. */
export async function requireNoBackoff(
  t: StoreTx,
  scope: string,
  now: number,
  who: 'source' | 'operator',
): Promise<void> {
  const f = await t.getPageFailures(scope)
  if (!f) return
  const wait = f.lastAt + pageDelay(f.failures) - now
  if (wait > 0)
    throw new UnlockdError(
      'rate_limited',
      who === 'source'
        ? `too many failed attempts from this address; wait ${wait} s and try again`
        : `too many wrong codes for this operator on the page; wait ${wait} s, or use the CLI`,
    )
}

/** Count a failure against each scope (committed with the refusal that follows). */
export async function recordPageFailure(
  t: StoreTx,
  scopes: readonly string[],
  now: number,
): Promise<void> {
  for (const s of scopes) await t.recordPageFailure(s, now)
}

/** Outside a transaction: refuse when this source is in its backoff delay. */
export function checkSourceBackoff(deps: ServerDeps, source: string): Promise<void> {
  return deps.store.tx((t) => requireNoBackoff(t, sourceScope(source), deps.now(), 'source'))
}

/** Count one page failure for this source (a failed passkey ceremony, a bad login). */
export function countSourceFailure(deps: ServerDeps, source: string): Promise<void> {
  return deps.store.tx((t) => recordPageFailure(t, [sourceScope(source)], deps.now()))
}

const DECOY_HASH = '0'.repeat(64)

export const loginFailed = (): UnlockdError =>
  new UnlockdError('unauthorized', 'operator name, API token or code is not valid')

/**
 * Log in with operator name and API token. Known and unknown names take the same steps: the
 * token is hashed either way and compared against the operator's hash or a decoy.
 */
export async function pageTokenLogin(
  deps: ServerDeps,
  name: string,
  token: string,
  source: string,
): Promise<OperatorRow> {
  const hash = await hashToken(token)
  const formatOk = tokenFormatOk('uo', token)
  return deps.store.tx(async (t) => {
    const now = deps.now()
    await requireNoBackoff(t, sourceScope(source), now, 'source')
    const op = await t.getOperatorByName(name)
    const match = hashesEqual(op?.tokenHash ?? DECOY_HASH, hash)
    if (!op || !match || !formatOk) {
      await recordPageFailure(t, [sourceScope(source)], now)
      await audit(t, now, 'system', 'page.login_fail', null, { source })
      throw deny(loginFailed())
    }
    return op
  })
}

/**
 * The page's TOTP check, for `approveRequest`/`denyRequest` (runs in their transaction): the
 * same replay guard as the CLI (a code works once, on either path), but failures count on the
 * page's counters only.
 */
export function pageTotpFactor(deps: ServerDeps, code: string, source: string) {
  return async (t: StoreTx, op: OperatorRow, now: number, host: string | null): Promise<void> => {
    await requireNoBackoff(t, operatorScope(op.id), now, 'operator')
    let step: number | undefined
    // op is the fresh row (decide.ts reloads it), so a factor cleared since login is seen.
    if (op.totpCt !== null && op.totpIv !== null && op.totpKekVersion !== null) {
      const secret = unwrap(
        deps.keystore.kek(op.totpKekVersion),
        op.totpIv,
        op.totpCt,
        totpAad(op.id, op.totpKekVersion),
      )
      step = matchStep(fromUtf8(secret), code, now)
      zeroize(secret)
    }
    const ok = step !== undefined && (await t.claimTotpStep(op.id, step))
    if (!ok) {
      await recordPageFailure(t, [operatorScope(op.id), sourceScope(source)], now)
      await audit(t, now, `operator:${op.name}`, 'page.totp_fail', host, {
        operator: op.name,
        source,
      })
      throw deny(loginFailed())
    }
    await t.clearPageFailures(operatorScope(op.id))
    await t.clearPageFailures(sourceScope(source))
  }
}
