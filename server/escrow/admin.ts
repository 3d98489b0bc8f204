/**
 * Operator use cases shared by the HTTP admin API and the CLI: hosts, tokens, audit.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type {
  CreateTokenRequest,
  HostView,
  PolicyPatch,
  TokenView,
  AuditEntry,
} from '../../shared/protocol/messages.ts'
import { parsePolicy } from '../../shared/protocol/policy.ts'
import { requireEnrolled, requireFactor, type Authority } from '../approvals/factor.ts'
import type { ServerDeps } from '../context.ts'
import { loosenedFields } from '../policy/loosening.ts'
import type { HostRow, OperatorRow, StoreTx, TokenRow } from '../store/store.ts'
import { audit, type Actor } from './audit-log.ts'
import { encryptionView } from './encryption.ts'
import { hashToken, newId, newToken } from './secrets.ts'

export async function hostView(t: StoreTx, h: HostRow): Promise<HostView> {
  const vols = await t.listVolumes(h.id)
  const enc = await t.listEncryption(h.id)
  return {
    id: h.id,
    name: h.name,
    state: h.state,
    stateReason: h.stateReason,
    createdAt: h.createdAt,
    lastSeenAt: h.lastSeenAt,
    lastUnlockAt: h.lastUnlockAt,
    volumes: vols.map((v) => ({ name: v.name, kind: v.kind, ref: v.ref, createdAt: v.createdAt })),
    policy: h.policy,
    encryption: enc.map(encryptionView),
  }
}

export async function requireHost(t: StoreTx, name: string): Promise<HostRow> {
  const h = await t.getHostByName(name)
  if (!h) throw new UnlockdError('not_found', `no host named ${name}`)
  return h
}

/** Like requireHost, refusing a shredded host; `why` finishes the sentence that says so. */
export async function requireLiveHost(t: StoreTx, name: string, why?: string): Promise<HostRow> {
  const h = await requireHost(t, name)
  if (h.state === 'shredded')
    throw new UnlockdError('host_shredded', `host ${h.name} was shredded${why ? `; ${why}` : ''}`)
  return h
}

export function listHosts(deps: ServerDeps): Promise<HostView[]> {
  return deps.store.tx(async (t) => Promise.all((await t.listHosts()).map((h) => hostView(t, h))))
}

export function showHost(deps: ServerDeps, name: string): Promise<HostView> {
  return deps.store.tx(async (t) => hostView(t, await requireHost(t, name)))
}

/**
 * Suspend (quick: it only tightens) or resume a host. Resuming lifts a control, so it needs the
 * caller's own TOTP code.
 */
export function setHostState(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  state: 'active' | 'suspended',
  reason: string | null,
  code?: Authority,
): Promise<HostView> {
  const actor: Actor = `operator:${caller.name}`
  return deps.store.tx(async (t) => {
    const h = await requireLiveHost(
      t,
      name,
      `it cannot be ${state === 'active' ? 'resumed' : 'suspended'}`,
    )
    const now = deps.now()
    if (state === 'active') await requireFactor(deps, t, caller, code, now, 'host resume', h.name)
    // Resuming counts as contact so after-idle rules and auto-suspension start afresh.
    await t.updateHost(
      h.id,
      state === 'active'
        ? { state, stateReason: null, lastSeenAt: now }
        : { state, stateReason: reason ?? 'suspended by operator' },
    )
    await audit(
      t,
      now,
      actor,
      state === 'active' ? 'host.resume' : 'host.suspend',
      h.name,
      reason ? { reason } : {},
    )
    return hostView(t, (await t.getHost(h.id)) as HostRow)
  })
}

/** Whether `patch` would loosen host `name`'s current policy (a shredded host loosens nothing). */
export function policyLoosens(
  deps: ServerDeps,
  name: string,
  patch: PolicyPatch,
): Promise<boolean> {
  return deps.store.tx(async (t) => {
    const h = await t.getHostByName(name)
    if (!h || h.state === 'shredded') return false
    const next = parsePolicy({ ...h.policy, ...patch })
    return loosenedFields(h.policy, next).length > 0
  })
}

/**
 * Change a host's policy. A change that loosens any field (see policy/loosening.ts) needs the
 * caller's own TOTP code; a stricter policy goes through with the token alone.
 */
export function setHostPolicy(
  deps: ServerDeps,
  caller: OperatorRow,
  name: string,
  patch: PolicyPatch,
  code?: Authority,
): Promise<HostView> {
  const actor: Actor = `operator:${caller.name}`
  return deps.store.tx(async (t) => {
    const h = await requireLiveHost(t, name)
    const policy = parsePolicy({ ...h.policy, ...patch })
    if (
      policy.notBefore !== null &&
      policy.notAfter !== null &&
      policy.notAfter <= policy.notBefore
    ) {
      throw new UnlockdError('bad_request', 'policy: notAfter must be later than notBefore')
    }
    const now = deps.now()
    const loosened = loosenedFields(h.policy, policy)
    if (loosened.length > 0)
      await requireFactor(
        deps,
        t,
        caller,
        code,
        now,
        `loosening ${loosened.join(', ')} of the policy`,
        h.name,
      )
    await t.updateHost(h.id, { policy })
    await audit(t, now, actor, 'host.policy', h.name, {
      changed: Object.keys(patch),
      ...(loosened.length > 0 ? { loosened } : {}),
      policy,
    })
    return hostView(t, (await t.getHost(h.id)) as HostRow)
  })
}

export function tokenView(r: TokenRow, now: number): TokenView {
  const state =
    r.revokedAt !== null
      ? 'revoked'
      : r.usedAt !== null
        ? 'used'
        : r.expiresAt <= now
          ? 'expired'
          : 'unused'
  return {
    id: r.id,
    host: r.hostName,
    cidrs: r.cidrs,
    createdAt: r.createdAt,
    expiresAt: r.expiresAt,
    usedAt: r.usedAt,
    revokedAt: r.revokedAt,
    state,
  }
}

export async function createEnrollToken(
  deps: ServerDeps,
  caller: OperatorRow,
  req: CreateTokenRequest,
): Promise<TokenView & { token: string }> {
  const token = newToken('ue')
  const hash = await hashToken(token)
  const actor: Actor = `operator:${caller.name}`
  return deps.store.tx(async (t) => {
    // Minting a way onto the fleet is security-relevant: an operator whose factor was reset (or
    // never redeemed) cannot, even with its API token.
    const fresh = await t.getOperator(caller.id)
    if (!fresh || fresh.removedAt !== null)
      throw new UnlockdError('unauthorized', 'this operator was removed')
    requireEnrolled(fresh, 'create host enrollment tokens')
    const live = await t.getHostByName(req.host)
    if (live && live.state !== 'shredded')
      throw new UnlockdError(
        'host_exists',
        `host ${req.host} is already enrolled; shred it first or choose another name`,
      )
    const now = deps.now()
    const row: TokenRow = {
      id: newId('tok', 9),
      hash,
      hostName: req.host,
      cidrs: req.cidrs,
      createdAt: now,
      expiresAt: now + req.ttlSeconds,
      usedAt: null,
      usedByHost: null,
      revokedAt: null,
      createdBy: actor,
    }
    await t.insertToken(row)
    await audit(t, now, actor, 'token.create', req.host, {
      token: row.id,
      ttl: req.ttlSeconds,
      cidrs: req.cidrs,
    })
    return { ...tokenView(row, now), token }
  })
}

export function listTokens(deps: ServerDeps): Promise<TokenView[]> {
  return deps.store.tx(async (t) => (await t.listTokens()).map((r) => tokenView(r, deps.now())))
}

export function revokeToken(deps: ServerDeps, actor: Actor, id: string): Promise<TokenView> {
  return deps.store.tx(async (t) => {
    const row = await t.getToken(id)
    if (!row) throw new UnlockdError('not_found', `no token with id ${id}`)
    const now = deps.now()
    if (!(await t.revokeToken(id, now)))
      throw new UnlockdError('conflict', `token ${id} is already ${tokenView(row, now).state}`)
    await audit(t, now, actor, 'token.revoke', row.hostName, { token: id })
    return tokenView((await t.getToken(id)) as TokenRow, now)
  })
}

export function listAudit(deps: ServerDeps, after: number, limit: number): Promise<AuditEntry[]> {
  return deps.store.tx((t) => t.listAudit(after, limit))
}
