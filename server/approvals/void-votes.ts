/**
 * Voiding an operator's open votes. When an operator's factor is reset by someone else, or the
 * operator is removed, what was voted with the old factor must stop counting: otherwise whoever
 * controlled it keeps a say in requests still waiting for their quorum. Decided requests are
 * history and stay as they are.
 */
import { audit, type Actor } from '../escrow/audit-log.ts'
import type { OperatorRow, StoreTx } from '../store/store.ts'

/**
 * Inside the caller's transaction: delete `op`'s votes on pending approval requests and on
 * pending quorum actions, and audit each one. Returns the ids of the requests and actions that
 * lost a vote.
 */
export async function voidVotesOf(
  t: StoreTx,
  op: Pick<OperatorRow, 'id' | 'name'>,
  now: number,
  actor: Actor,
  reason: string,
): Promise<string[]> {
  const ids = await t.deletePendingApprovalVotes(op.id)
  for (const id of ids) {
    const a = await t.getApproval(id)
    const host = a && (await t.getHost(a.hostId))
    await audit(t, now, actor, 'approval.vote_void', host?.name ?? null, {
      approval: id,
      operator: op.name,
      reason,
    })
  }
  const actions = await t.deletePendingActionVotes(op.id)
  for (const id of actions) {
    const a = await t.getAction(id)
    await audit(t, now, actor, 'action.vote_void', a?.host ?? null, {
      action: id,
      operator: op.name,
      reason,
    })
  }
  return [...ids, ...actions]
}
