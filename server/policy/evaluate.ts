/**
 * Policy evaluation (shared/protocol/policy.ts): a pure function of the request, the host, its history and its
 * policy, returning the decision and the rule that made it. No I/O, no clock: `now` is input.
 */
import type { UnlockdErrorCode } from '../../shared/errors.ts'
import type { Policy } from '../../shared/protocol/policy.ts'
import type { HostState } from '../../shared/protocol/messages.ts'
import { ipInAny } from '../../shared/util/cidr.ts'
import { parseDuration } from '../../shared/util/duration.ts'
import { IDLE_SUSPEND_RULE, idleExpired, isIdleSuspended } from './idle.ts'

export interface PolicyInput {
  now: number
  source: string
  bootId: string
  host: {
    state: HostState
    stateReason?: string | null
    lastSeenAt: number | null
    createdAt: number
  }
  policy: Policy
  history: {
    /** Released unlocks inside the rate window (only read when maxUnlocks is set). */
    releasesInWindow: number
    /** Boot ids that were released keys inside the clone window. */
    recentBootIds: readonly string[]
  }
}

export type Decision =
  | { kind: 'allow'; rule: string }
  | { kind: 'approval'; rule: string }
  | { kind: 'deny'; code: UnlockdErrorCode; rule: string; message: string }

export function evaluatePolicy(i: PolicyInput): Decision {
  const p = i.policy
  if (i.host.state === 'shredded')
    return {
      kind: 'deny',
      code: 'host_shredded',
      rule: 'state',
      message: 'this host was shredded; its keys no longer exist',
    }
  // A host suspended for idleness may still be let in by an operator (approval below).
  const idle = isIdleSuspended(i.host) || idleExpired(i.host, p, i.now)
  if (i.host.state === 'suspended' && !idle)
    return {
      kind: 'deny',
      code: 'host_suspended',
      rule: 'state',
      message: 'this host is suspended; an operator must run `unlockd host resume`',
    }
  if (p.notBefore !== null && i.now < p.notBefore)
    return {
      kind: 'deny',
      code: 'not_yet_valid',
      rule: 'notBefore',
      message: 'the host policy is not valid yet',
    }
  if (p.notAfter !== null && i.now >= p.notAfter)
    return {
      kind: 'deny',
      code: 'expired',
      rule: 'notAfter',
      message: 'the host policy has expired',
    }

  const inCidrs = p.cidrs.length === 0 || ipInAny(i.source, p.cidrs)
  if (!inCidrs && p.approval !== 'outside-cidrs') {
    return {
      kind: 'deny',
      code: 'cidr_denied',
      rule: 'cidrs',
      message: `source address ${i.source} is outside the host's allowed networks`,
    }
  }
  if (p.maxUnlocks !== null && i.history.releasesInWindow >= p.maxUnlocks.count) {
    return {
      kind: 'deny',
      code: 'rate_limited',
      rule: 'maxUnlocks',
      message: `more than ${p.maxUnlocks.count} unlocks in ${p.maxUnlocks.periodSeconds}s`,
    }
  }

  // Approval rules: the first that fires names itself.
  if (idle) return { kind: 'approval', rule: IDLE_SUSPEND_RULE }
  if (p.approval === 'always') return { kind: 'approval', rule: 'approval:always' }
  if (p.approval === 'outside-cidrs' && !inCidrs)
    return { kind: 'approval', rule: 'approval:outside-cidrs' }
  if (p.approval.startsWith('after-idle(')) {
    const idle = parseDuration(p.approval.slice('after-idle('.length, -1)) ?? 0
    const last = i.host.lastSeenAt ?? i.host.createdAt
    if (i.now - last > idle) return { kind: 'approval', rule: `approval:${p.approval}` }
  }
  if (p.cloneWindowSeconds !== null && i.history.recentBootIds.some((b) => b !== i.bootId)) {
    return { kind: 'approval', rule: 'clone-detection' }
  }
  return {
    kind: 'allow',
    rule: p.approval === 'never' ? 'policy' : `policy (${p.approval} not triggered)`,
  }
}
