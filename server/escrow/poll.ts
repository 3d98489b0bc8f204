/**
 * The agent's wait for an approval (POST /v1/approval/poll): signed like unlock, with a fresh
 * nonce each time. The server holds the request up to `pollHold` seconds and answers the moment
 * the approval is decided. An approved request releases exactly once, to the boot that asked.
 * The wait state lives in the database, so it survives server restarts and works across
 * instances; the in-process event only shortens the wait.
 */
import { once } from 'node:events'
import { UnlockdError } from '../../shared/errors.ts'
import type { PollPayload, UnlockResponse } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { deny } from '../store/denial.ts'
import type { HostRow } from '../store/store.ts'
import { audit } from './audit-log.ts'
import { consumeNonceOrThrow, type HostRequest } from './host-auth.ts'
import { PolicyDenied, recordRelease, releaseBlobs } from './release.ts'
import { releasedAnswer } from './release-answer.ts'
import { isIdleSuspended } from '../policy/idle.ts'

async function settle(
  deps: ServerDeps,
  hostId: string,
  p: PollPayload,
  source: string,
): Promise<UnlockResponse | 'wait'> {
  const now = deps.now()
  const { approval: approvalId, bootId } = p
  return deps.store.tx(
    async (t) => {
      const a = await t.getApproval(approvalId)
      if (!a || a.hostId !== hostId)
        throw new UnlockdError('approval_unknown', 'no such approval request for this host')
      if (a.bootId !== bootId)
        throw new UnlockdError('forbidden', 'this approval was requested by another boot')
      const host = (await t.getHost(hostId)) as HostRow
      // Bound to the attempt that asked: a poll must be signed with the same ephemeral key, so
      // a stolen boot id and approval id (or a v1 poll) cannot collect a v2 approval.
      if (a.epk !== null && p.epk?.x !== a.epk) {
        await audit(t, now, `host:${host.name}`, 'approval.key_mismatch', host.name, {
          approval: a.id,
          source,
          bootId,
          v: p.v,
        })
        throw deny(
          new UnlockdError(
            'approval_key_mismatch',
            p.epk
              ? 'this approval belongs to another unlock attempt (another ephemeral key)'
              : 'this approval was asked with an ephemeral key: a v1 poll cannot collect it',
          ),
        )
      }
      // Refusals are denials: an approval found expired is marked so (and audited) on the way.
      if (host.state === 'shredded')
        throw deny(new PolicyDenied('host_shredded', 'this host was shredded', 'state'))
      // An idle suspension is what this approval is for; an operator's suspension ends the wait.
      if (host.state === 'suspended' && !isIdleSuspended(host))
        throw deny(new PolicyDenied('host_suspended', 'this host is suspended', 'state'))
      if (a.state === 'denied')
        throw deny(
          new PolicyDenied(
            'approval_denied',
            `an operator denied this request${a.reason ? `: ${a.reason}` : ''}`,
            a.rule,
          ),
        )
      if (a.state === 'used')
        throw deny(new PolicyDenied('approval_used', 'this approval was already used', a.rule))
      if (a.state === 'expired' || (a.state === 'pending' && a.expiresAt <= now)) {
        if (a.state === 'pending') {
          await t.updateApproval(a.id, { state: 'expired', decidedAt: now })
          await audit(t, now, 'system', 'approval.expire', host.name, { approval: a.id })
        }
        throw deny(
          new PolicyDenied(
            'approval_expired',
            'the approval request expired before an operator approved it',
            a.rule,
          ),
        )
      }
      if (a.state === 'pending') return 'wait'
      // approved: release once, to this boot
      const volumes = await releaseBlobs(deps, t, host, a.volumes)
      await t.updateApproval(a.id, { state: 'used' })
      await recordRelease(
        t,
        host,
        { now, bootId, source },
        { rule: a.rule, approval: a.id, source, bootId, volumes: volumes.map((v) => v.name) },
      )
      return releasedAnswer(deps, p, volumes)
    },
    { host: hostId },
  )
}

export async function pollApproval(
  deps: ServerDeps,
  req: HostRequest<'poll'>,
  source: string,
  signal?: AbortSignal,
): Promise<UnlockResponse> {
  const { signer, payload: p } = req
  // Waiting is not being seen (see release.ts): lastSeenAt moves only when keys are released.
  await deps.store.tx((t) => consumeNonceOrThrow(t, p.nonce, deps.now()), { host: signer.id })
  const deadline = Date.now() + deps.settings.pollHold * 1000
  for (;;) {
    const r = await settle(deps, signer.id, p, source)
    if (r !== 'wait') return r
    const left = deadline - Date.now()
    const a = await deps.store.tx((t) => t.getApproval(p.approval), { host: signer.id })
    if (left <= 0 || signal?.aborted)
      return {
        status: 'pending',
        host: signer.id,
        approval: { id: p.approval, expiresAt: a?.expiresAt ?? 0, rule: a?.rule ?? '' },
      }
    // Wake on a decision in this process, or re-check the database every 2 s (other instances).
    const ac = new AbortController()
    const timer = setTimeout(() => ac.abort(), Math.min(left, 2000))
    try {
      await once(deps.events, `approval:${p.approval}`, { signal: ac.signal })
    } catch {
      /* timeout: re-check */
    } finally {
      clearTimeout(timer)
    }
  }
}
