/**
 * Deciding approval requests (human approval of an unlock): list, approve with a TOTP code, deny. The request was
 * opened by escrow/approval-seam.ts; the waiting agent is released by escrow/poll.ts, which
 * this file wakes through `deps.events.emit('approval:' + id)` after the decision commits.
 *
 * - An approval is short-lived: a request past `expiresAt` is marked expired, never approved.
 * - `approvers: k` needs k distinct operators, each with a valid, unused TOTP code.
 * - Wrong and replayed codes are counted (lockout) and audited even though the call fails.
 * - Approving a host that the liveness check suspended for idleness also resumes it: the
 *   approval is the "needs approval" that idle suspension asks for.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { ApprovalView } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { isIdleSuspended } from '../policy/idle.ts'
import { deny } from '../store/denial.ts'
import type { ApprovalRow, HostRow, OperatorRow, StoreTx } from '../store/store.ts'
import { requireEnrolled } from './factor.ts'
import { checkOperatorCode } from './totp.ts'

export function approvalUrl(deps: ServerDeps, id: string): string | null {
  return deps.settings.publicUrl
    ? `${deps.settings.publicUrl.replace(/\/+$/, '')}/approve/${id}`
    : null
}

export async function approvalView(
  deps: ServerDeps,
  t: StoreTx,
  a: ApprovalRow,
  now: number,
): Promise<ApprovalView> {
  const host = await t.getHost(a.hostId)
  return {
    id: a.id,
    host: host?.name ?? 'unknown',
    hostId: a.hostId,
    volumes: a.volumes,
    source: a.source,
    bootId: a.bootId,
    rule: a.rule,
    required: a.required,
    approvedBy: await t.approvalVoters(a.id),
    state: a.state === 'pending' && a.expiresAt <= now ? 'expired' : a.state,
    createdAt: a.createdAt,
    expiresAt: a.expiresAt,
    ageSeconds: Math.max(0, now - a.createdAt),
    decidedAt: a.decidedAt,
    reason: a.reason,
    url: approvalUrl(deps, a.id),
  }
}

/** Pending (not yet expired) requests, oldest first; `all` adds decided and expired ones. */
export function listApprovals(deps: ServerDeps, all = false): Promise<ApprovalView[]> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const rows = all
      ? await t.listApprovals()
      : (await t.listApprovals('pending')).filter((a) => a.expiresAt > now)
    return Promise.all(rows.map((a) => approvalView(deps, t, a, now)))
  })
}

export function showApproval(deps: ServerDeps, id: string): Promise<ApprovalView> {
  return deps.store.tx(async (t) => {
    const a = await t.getApproval(id)
    if (!a) throw new UnlockdError('approval_unknown', `no approval request ${id}`)
    return approvalView(deps, t, a, deps.now())
  })
}

/**
 * Inside a transaction: refuse anything but a live pending request. A request past its expiry
 * is marked expired; the refusal is a denial, so that commits.
 */
async function requirePending(
  t: StoreTx,
  a: ApprovalRow | undefined,
  id: string,
  now: number,
  host: HostRow | undefined,
): Promise<ApprovalRow> {
  if (!a) throw deny(new UnlockdError('approval_unknown', `no approval request ${id}`))
  if (a.state === 'pending' && a.expiresAt <= now) {
    await t.updateApproval(a.id, { state: 'expired', decidedAt: now })
    await audit(t, now, 'system', 'approval.expire', host?.name ?? null, { approval: a.id })
    throw deny(
      new UnlockdError(
        'approval_expired',
        'this approval request has expired; the host must ask again',
      ),
    )
  }
  switch (a.state) {
    case 'pending':
      return a
    case 'expired':
      throw deny(
        new UnlockdError(
          'approval_expired',
          'this approval request has expired; the host must ask again',
        ),
      )
    case 'approved':
      throw deny(new UnlockdError('already_approved', 'this request is already approved'))
    case 'used':
      throw deny(new UnlockdError('approval_used', 'this request was already approved and used'))
    case 'denied':
      throw deny(new UnlockdError('approval_denied', 'this request was denied'))
  }
}

export type Via = 'api' | 'page'

/**
 * How a decision proves the operator's second factor: a TOTP code (checked with the CLI's
 * replay and lockout rules), or a check the caller already prepared (the phone page's passkey
 * or its own TOTP counters), run inside the decision's transaction; it throws to refuse.
 */
export type Factor =
  string | ((t: StoreTx, op: OperatorRow, now: number, host: string | null) => Promise<void>)

async function checkFactor(
  deps: ServerDeps,
  t: StoreTx,
  op: OperatorRow,
  factor: Factor,
  now: number,
  host: string | null,
  detail: Record<string, unknown>,
): Promise<void> {
  // The operator as it is now: a factor reset or removal since the request began must count.
  const fresh = await t.getOperator(op.id)
  if (!fresh || fresh.removedAt !== null)
    throw deny(new UnlockdError('unauthorized', 'this operator was removed'))
  requireEnrolled(fresh, 'decide an approval request')
  if (typeof factor === 'string')
    await checkOperatorCode(deps, t, fresh, factor, now, { host, detail })
  else await factor(t, fresh, now, host)
}

/**
 * Approve `id` as operator `op` with a TOTP code. Returns the request as it stands: still
 * `pending` when more distinct approvers are needed, `approved` once the k-th one approved.
 */
export async function approveRequest(
  deps: ServerDeps,
  op: OperatorRow,
  id: string,
  code: Factor,
  via: Via,
): Promise<ApprovalView> {
  const r = await deps.store.tx(async (t) => {
    const now = deps.now()
    const row = await t.getApproval(id)
    const host = row && (await t.getHost(row.hostId))
    const a = await requirePending(t, row, id, now, host)
    const hostName = host?.name ?? null
    // A second vote by the same operator must not spend a code or count twice.
    if ((await t.approvalVoters(a.id)).includes(op.name)) {
      throw deny(
        new UnlockdError(
          'already_approved',
          `operator ${op.name} already approved this request; it needs ${a.required} distinct operators`,
        ),
      )
    }
    // k-of-n must mean k people: an operator minted after the request was opened (possibly by
    // one of the approvers with a stolen token) does not count toward it.
    if (a.required > 1 && op.createdAt > a.createdAt) {
      throw deny(
        new UnlockdError(
          'forbidden',
          `operator ${op.name} was added after this request was opened and cannot count toward its ${a.required} approvers`,
        ),
      )
    }
    await checkFactor(deps, t, op, code, now, hostName, { approval: a.id, via })
    await t.addApprovalVote(a.id, op.id, now)
    const votes = await t.countApprovalVotes(a.id)
    const actor = `operator:${op.name}` as const
    if (votes < a.required) {
      await audit(t, now, actor, 'approval.vote', hostName, {
        approval: a.id,
        votes,
        required: a.required,
        via,
      })
    } else {
      await t.updateApproval(a.id, { state: 'approved', decidedAt: now })
      await audit(t, now, actor, 'approval.approve', hostName, {
        approval: a.id,
        operators: await t.approvalVoters(a.id),
        rule: a.rule,
        via,
      })
      if (host && isIdleSuspended(host)) {
        await t.updateHost(host.id, { state: 'active', stateReason: null })
        await audit(t, now, actor, 'host.resume', host.name, {
          approval: a.id,
          reason: 'idle suspension lifted by approval',
        })
      }
    }
    return approvalView(deps, t, (await t.getApproval(a.id)) as ApprovalRow, now)
  })
  deps.events.emit(`approval:${id}`, r.state)
  return r
}

/** Deny `id`. `code` is checked when given (the phone page always gives one). */
export async function denyRequest(
  deps: ServerDeps,
  op: OperatorRow,
  id: string,
  reason: string | null,
  code: Factor | undefined,
  via: Via,
): Promise<ApprovalView> {
  const r = await deps.store.tx(async (t) => {
    const now = deps.now()
    const row = await t.getApproval(id)
    const host = row && (await t.getHost(row.hostId))
    const a = await requirePending(t, row, id, now, host)
    const hostName = host?.name ?? null
    requireEnrolled(op, 'deny an approval request')
    if (code !== undefined)
      await checkFactor(deps, t, op, code, now, hostName, { approval: a.id, via })
    await t.updateApproval(a.id, { state: 'denied', decidedAt: now, reason })
    await audit(t, now, `operator:${op.name}`, 'approval.deny', hostName, {
      approval: a.id,
      rule: a.rule,
      via,
      ...(reason ? { reason } : {}),
    })
    return approvalView(deps, t, (await t.getApproval(a.id)) as ApprovalRow, now)
  })
  deps.events.emit(`approval:${id}`, r.state)
  return r
}

/** Maintenance: mark pending requests past their expiry, audit, and wake their waiters. */
export async function expireApprovals(deps: ServerDeps): Promise<number> {
  const expired = await deps.store.tx(async (t) => {
    const now = deps.now()
    const due = (await t.listApprovals('pending')).filter((a) => a.expiresAt <= now).slice(0, 500)
    for (const a of due) {
      await t.updateApproval(a.id, { state: 'expired', decidedAt: now })
      await audit(t, now, 'system', 'approval.expire', (await t.getHost(a.hostId))?.name ?? null, {
        approval: a.id,
      })
    }
    return due.map((a) => a.id)
  })
  for (const id of expired) deps.events.emit(`approval:${id}`, 'expired')
  return expired.length
}
