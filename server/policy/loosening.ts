/**
 * Whether a policy change loosens a control: lets some request through (or through with less
 * scrutiny) that the old policy refused or sent to approval. Loosening needs the operator's own
 * second factor (and the quorum, where the host asks for approvers); tightening stays quick.
 * Pure and conservative: a change that cannot be shown to be no looser counts as loosening.
 */
import type { Policy } from '../../shared/protocol/policy.ts'
import { cidrCovers, parseCidr, type Cidr } from '../../shared/util/cidr.ts'
import { parseDuration } from '../../shared/util/duration.ts'

function cidrsOf(texts: readonly string[]): Cidr[] {
  return texts.map((t) => parseCidr(t)).filter((c): c is Cidr => c !== undefined)
}

/** An empty list means "any source"; otherwise every new network must lie inside an old one. */
function widensCidrs(old: readonly string[], next: readonly string[]): boolean {
  if (old.length === 0) return false
  if (next.length === 0) return true
  const outer = cidrsOf(old)
  return cidrsOf(next).some((n) => !outer.some((o) => cidrCovers(o, n)))
}

function idleOf(rule: string): number | undefined {
  return rule.startsWith('after-idle(') ? parseDuration(rule.slice(11, -1)) : undefined
}

/**
 * `always` asks for every request; `after-idle(D)` asks after D of silence (a longer D asks less);
 * `outside-cidrs` lets sources outside the networks through to approval where the other rules
 * refuse them, and lets sources inside through without approval; `never` asks for nothing.
 */
function relaxesApproval(old: Policy, next: Policy): boolean {
  const a = old.approval
  const b = next.approval
  if (a === b) return false
  if (b === 'always') return false
  if (b === 'never') return true
  const idleB = idleOf(b)
  if (idleB !== undefined) {
    if (a === 'never' || a === 'outside-cidrs') return false
    const idleA = idleOf(a)
    return idleA === undefined || idleB > idleA
  }
  // b is outside-cidrs: looser than anything but `never` with every source already inside.
  return !(a === 'never' && next.cidrs.length === 0)
}

function laterOrOff(old: number | null, next: number | null): boolean {
  if (old === null) return false
  return next === null || next > old
}

/** The fields whose change loosens the policy, in Policy order; empty when nothing loosens. */
export function loosenedFields(old: Policy, next: Policy): (keyof Policy)[] {
  const out: (keyof Policy)[] = []
  if (widensCidrs(old.cidrs, next.cidrs)) out.push('cidrs')
  if (
    old.maxUnlocks !== null &&
    (next.maxUnlocks === null ||
      next.maxUnlocks.count > old.maxUnlocks.count ||
      next.maxUnlocks.periodSeconds < old.maxUnlocks.periodSeconds)
  )
    out.push('maxUnlocks')
  if (old.notBefore !== null && (next.notBefore === null || next.notBefore < old.notBefore))
    out.push('notBefore')
  if (laterOrOff(old.notAfter, next.notAfter)) out.push('notAfter')
  if (relaxesApproval(old, next)) out.push('approval')
  if (next.approvers < old.approvers) out.push('approvers')
  if (laterOrOff(old.idleSuspendSeconds, next.idleSuspendSeconds)) out.push('idleSuspendSeconds')
  // A longer clone window catches more clones: only a shorter one, or none, loosens.
  if (
    old.cloneWindowSeconds !== null &&
    (next.cloneWindowSeconds === null || next.cloneWindowSeconds < old.cloneWindowSeconds)
  )
    out.push('cloneWindowSeconds')
  return out
}

export function isLoosening(old: Policy, next: Policy): boolean {
  return loosenedFields(old, next).length > 0
}
