/**
 * Unlock (POST /v1/unlock), once the route's `hostRequest` authenticated it: spend the nonce,
 * evaluate policy, and either release the blobs (KEK layer removed; still sealed to the host, and
 * for v2 wrapped to the attempt's ephemeral key, ./release-answer.ts),
 * open an approval request (202), or deny with a stable code. The nonce, the decision, the
 * history row and the audit entry commit together, so a replay is refused even if the response
 * was lost.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { fromUtf8 } from '../../shared/crypto/bytes.ts'
import { parseEscrowBlob } from '../../shared/crypto/blob.ts'
import type { ReleasedVolume, UnlockResponse } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { blobAad, unwrap } from '../keys/kek-wrap.ts'
import { evaluatePolicy, type Decision } from '../policy/evaluate.ts'
import { deny } from '../store/denial.ts'
import type { HostRow, StoreTx, UnlockEventRow } from '../store/store.ts'
import { audit } from './audit-log.ts'
import { consumeNonceOrThrow, type HostRequest } from './host-auth.ts'
import { releasedAnswer } from './release-answer.ts'
import { openApproval } from './approval-seam.ts'
import { IDLE_SUSPEND_RULE } from '../policy/idle.ts'
import { suspendIdle } from '../approvals/liveness.ts'
import { reopenIfNamed } from './shred.ts'

/** Denial carrying the rule that decided, for the 403 body and the agent's diagnostics. */
export class PolicyDenied extends UnlockdError {
  readonly rule: string
  constructor(code: UnlockdError['code'], message: string, rule: string) {
    super(code, message)
    this.rule = rule
  }
}

export async function releaseBlobs(
  deps: ServerDeps,
  t: StoreTx,
  host: HostRow,
  names: readonly string[],
): Promise<ReleasedVolume[]> {
  const vols = await t.listVolumes(host.id)
  const wanted = names.length === 0 ? vols : vols.filter((v) => names.includes(v.name))
  for (const n of names)
    if (!vols.some((v) => v.name === n))
      throw new PolicyDenied(
        'volume_unknown',
        `volume ${n} is not enrolled for this host`,
        'volumes',
      )
  const out: ReleasedVolume[] = []
  for (const v of wanted) {
    if (v.kind === 'tang') continue
    const plain = unwrap(
      deps.keystore.kek(v.kekVersion),
      v.iv,
      v.ct,
      blobAad(host.id, v.name, v.kekVersion),
    )
    out.push({ name: v.name, kind: v.kind, blob: parseEscrowBlob(JSON.parse(fromUtf8(plain))) })
  }
  return out
}

export async function decide(
  t: StoreTx,
  host: HostRow,
  bootId: string,
  source: string,
  now: number,
): Promise<Decision> {
  const p = host.policy
  const releasesInWindow = p.maxUnlocks
    ? await t.countUnlocks(host.id, now - p.maxUnlocks.periodSeconds, 'released')
    : 0
  const recentBootIds = p.cloneWindowSeconds
    ? await t.recentBootIds(host.id, now - p.cloneWindowSeconds)
    : []
  return evaluatePolicy({
    now,
    source,
    bootId,
    host,
    policy: p,
    history: { releasesInWindow, recentBootIds },
  })
}

/** When, from which boot and from where an unlock was asked. */
export interface Attempt {
  now: number
  bootId: string
  source: string
}

/** The unlock history row of an attempt. */
export function historyRow(
  host: HostRow,
  at: Attempt,
  outcome: UnlockEventRow['outcome'],
  code: string | null = null,
): UnlockEventRow {
  return { hostId: host.id, at: at.now, bootId: at.bootId, source: at.source, outcome, code }
}

/**
 * A release: the history row, the host's last contact and unlock, and the audit entry with
 * `detail` (the caller's, in the order it is stored).
 */
export async function recordRelease(
  t: StoreTx,
  host: HostRow,
  at: Attempt,
  detail: Record<string, unknown>,
): Promise<void> {
  const { now, bootId, source } = at
  await t.recordUnlock(historyRow(host, at, 'released'))
  await t.updateHost(host.id, {
    lastSeenAt: now,
    lastSource: source,
    lastUnlockAt: now,
    lastBootId: bootId,
  })
  await audit(t, now, `host:${host.name}`, 'unlock.release', host.name, detail)
}

/**
 * A policy refusal of an unlock: the history row and the audit entry, and the error to throw,
 * marked as a denial so that they commit with it. `detail` adds to the audit entry.
 */
export async function recordDenial(
  t: StoreTx,
  host: HostRow,
  decision: Extract<Decision, { kind: 'deny' }>,
  at: Attempt,
  detail: Record<string, unknown> = { bootId: at.bootId },
): Promise<PolicyDenied> {
  const { now, source } = at
  await t.recordUnlock(historyRow(host, at, 'denied', decision.code))
  await audit(t, now, `host:${host.name}`, 'unlock.deny', host.name, {
    code: decision.code,
    rule: decision.rule,
    source,
    ...detail,
  })
  return deny(new PolicyDenied(decision.code, decision.message, decision.rule))
}

export async function unlock(
  deps: ServerDeps,
  req: HostRequest<'unlock'>,
  source: string,
): Promise<UnlockResponse> {
  const { signer, payload } = req
  const now = deps.now()
  // Its own transaction: the unlock below may roll back (an unknown volume), the reopening not.
  if (payload.volumes.length > 0)
    await deps.store.tx(
      async (t) => {
        const host = (await t.getHost(signer.id)) as HostRow
        if (await reopenIfNamed(t, host, payload.volumes, now)) deps.events.emit(`shred:${host.id}`)
      },
      { host: signer.id },
    )

  return deps.store.tx(
    async (t): Promise<UnlockResponse> => {
      await consumeNonceOrThrow(t, payload.nonce, now)
      const host = (await t.getHost(signer.id)) as HostRow // re-read inside the transaction
      const decision = await decide(t, host, payload.bootId, source, now)
      // A denial: the nonce, the history row and the audit entry commit.
      if (decision.kind === 'deny')
        throw await recordDenial(t, host, decision, { now, bootId: payload.bootId, source })
      if (decision.kind === 'approval') {
        // Asking is not being seen: bumping lastSeenAt here would let a second request slip past
        // after-idle and idle suspension. An idle host is suspended now, so it stays so until an
        // operator approves (or resumes it), whether or not the maintenance job got there first.
        await t.updateHost(host.id, { lastSource: source })
        if (decision.rule === IDLE_SUSPEND_RULE && host.state === 'active')
          await suspendIdle(t, host, now)
        const ticket = await openApproval(deps, t, host, payload, source, decision.rule, now)
        await t.recordUnlock(historyRow(host, { now, bootId: payload.bootId, source }, 'approval'))
        return { status: 'approval_required', host: host.id, approval: ticket }
      }
      const volumes = await releaseBlobs(deps, t, host, payload.volumes)
      await recordRelease(
        t,
        host,
        { now, bootId: payload.bootId, source },
        {
          rule: decision.rule,
          source,
          bootId: payload.bootId,
          volumes: volumes.map((v) => v.name),
        },
      )
      return releasedAnswer(deps, payload, volumes)
    },
    { host: signer.id },
  )
}
