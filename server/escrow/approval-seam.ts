/**
 * The `202 approval needed` branch of unlock. This file opens the approval request; deciding
 * it (TOTP, operators, the phone page, notifications) lives in server/approvals/.
 */
import type { ApprovalTicket, UnlockPayload } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import type { HostRow, StoreTx } from '../store/store.ts'
import { audit } from './audit-log.ts'
import { newId } from './secrets.ts'

export async function openApproval(
  deps: ServerDeps,
  t: StoreTx,
  host: HostRow,
  req: UnlockPayload,
  source: string,
  rule: string,
  now: number,
): Promise<ApprovalTicket> {
  const id = newId('ap')
  const expiresAt = now + deps.settings.approvalTtl
  await t.insertApproval({
    id,
    hostId: host.id,
    volumes: [...req.volumes],
    bootId: req.bootId,
    source,
    rule,
    required: host.policy.approvers,
    createdAt: now,
    expiresAt,
    state: 'pending',
    decidedAt: null,
    reason: null,
    epk: req.epk?.x ?? null,
  })
  await audit(t, now, `host:${host.name}`, 'approval.request', host.name, {
    approval: id,
    rule,
    source,
    bootId: req.bootId,
    volumes: req.volumes,
  })
  deps.events.emit('approval:new', id)
  return { id, expiresAt, rule }
}
