/**
 * k-of-n quorum for loosening operator actions (a two-person rule, like Vault's control groups).
 *
 * - k: the affected host's `approvers` for host actions (policy relaxation, resume, escrow
 *   export, Tang key purge); the largest `approvers` over all live hosts for fleet-wide ones
 *   (operator add/remove/factor reset, KEK rotation, Tang host add).
 * - k = 1: the action runs at once, checked against the caller's own fresh factor as before.
 * - k > 1: the caller's factor is checked and counts as the first vote; the validated request is
 *   stored as a pending action. Other operators approve it with their own fresh factor
 *   (`unlockd approve ID`); at the k-th counting vote it runs, as the requester, with a grant
 *   in place of the code. Results meant for the requester only (escrow export, operator
 *   secrets) are collected by the requester asking again with the action id and a fresh code.
 * - A vote counts only if its operator held a factor when the action opened (so operators added
 *   later never count) and is not removed when it is decided (votes of removed operators stop
 *   counting). Actions expire (ACTION_TTL_SECONDS) and can be denied.
 * - No deadlock: while fewer than k operators hold a factor, no action that needs k can open;
 *   only `operator add` stays possible, needing min(k, operators holding a factor) votes.
 *   Emergency shred never comes here: it only tightens.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { ActionKind, ActionView } from '../../shared/protocol/actions.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from '../escrow/audit-log.ts'
import { newId } from '../escrow/secrets.ts'
import { deny } from '../store/denial.ts'
import type { ActionRow, ActionVoteRow, OperatorRow, StoreTx } from '../store/store.ts'
import { quorumGrant, requireEnrolled, requireFactor } from './factor.ts'
import { ACTIONS, type ActionDef } from './quorum-actions.ts'

/** How long an action waits for its quorum (and, once approved, for its requester). */
export const ACTION_TTL_SECONDS = 3600

export interface ActionRequest {
  kind: ActionKind
  /** The affected (or, for `tang.add`, the new) host's name; null for fleet-wide actions. */
  host: string | null
  /** The validated request. */
  payload: Record<string, unknown>
}

export interface Gated {
  status: 200 | 201 | 202
  body: unknown
}

const holdsFactor = (o: OperatorRow): boolean => o.totpCt !== null && o.removedAt === null

/** k for `def` now. */
export async function requiredVotes(
  t: StoreTx,
  def: ActionDef,
  host: string | null,
): Promise<number> {
  if (def.scope === 'host') {
    const h = host === null ? undefined : await t.getHostByName(host)
    return h && h.state !== 'shredded' ? h.policy.approvers : 1
  }
  const fleet = Math.max(
    1,
    ...(await t.listHosts()).filter((h) => h.state !== 'shredded').map((h) => h.policy.approvers),
  )
  if (def.scope === 'fleet') return fleet
  const holders = (await t.listOperators()).filter(holdsFactor).length
  return Math.max(1, Math.min(fleet, holders))
}

/** Votes that count: by operators eligible when it opened and not removed since. */
function counted(a: ActionRow, votes: readonly ActionVoteRow[]): ActionVoteRow[] {
  return votes.filter((v) => v.removedAt === null && a.eligible.includes(v.operatorId))
}

async function actionView(t: StoreTx, a: ActionRow, now: number): Promise<ActionView> {
  const def = ACTIONS[a.kind as ActionKind]
  return {
    id: a.id,
    kind: a.kind as ActionKind,
    summary: def.summary(a.payload, a.host),
    host: a.host,
    requestedBy: (await t.getOperator(a.requesterId))?.name ?? 'unknown',
    required: a.required,
    approvedBy: counted(a, await t.actionVotes(a.id)).map((v) => v.name),
    state: a.state === 'pending' && a.expiresAt <= now ? 'expired' : a.state,
    collect: def.collect,
    createdAt: a.createdAt,
    expiresAt: a.expiresAt,
    ageSeconds: Math.max(0, now - a.createdAt),
    decidedAt: a.decidedAt,
    reason: a.reason,
  }
}

function knownKind(a: ActionRow): ActionDef {
  const def = (ACTIONS as Record<string, ActionDef | undefined>)[a.kind]
  if (!def) throw new UnlockdError('store_failed', `action ${a.id} has an unknown kind ${a.kind}`)
  return def
}

const expiredError = (): UnlockdError =>
  new UnlockdError('approval_expired', 'this action has expired; ask for it again')

/** Inside a transaction: the action, refusing unknown ones and marking an expired one. */
async function loadAction(t: StoreTx, id: string, now: number): Promise<ActionRow> {
  const a = await t.getAction(id)
  if (!a) throw deny(new UnlockdError('approval_unknown', `no action ${id}`))
  knownKind(a)
  if ((a.state === 'pending' || a.state === 'approved') && a.expiresAt <= now) {
    await t.moveAction(a.id, a.state, { state: 'expired', decidedAt: now })
    await audit(t, now, 'system', 'action.expire', a.host, { action: a.id, kind: a.kind })
    throw deny(expiredError())
  }
  return a
}

function refuseDecided(a: ActionRow): never {
  switch (a.state) {
    case 'expired':
      throw deny(expiredError())
    case 'denied':
      throw deny(new UnlockdError('approval_denied', `action ${a.id} was denied`))
    case 'approved':
      throw deny(new UnlockdError('already_approved', `action ${a.id} is already approved`))
    default:
      throw deny(new UnlockdError('approval_used', `action ${a.id} already ran (${a.state})`))
  }
}

/**
 * Run `req` as `caller` if the quorum allows it now, else open it as a pending action (202).
 * `collectId` (the X-Unlockd-Action header) asks for the result of an approved action instead.
 */
export async function gated(
  deps: ServerDeps,
  caller: OperatorRow,
  code: string | undefined,
  collectId: string | undefined,
  req: ActionRequest,
): Promise<Gated> {
  const def = ACTIONS[req.kind]
  if (collectId !== undefined) return collect(deps, caller, code, collectId, req)
  const opened = await deps.store.tx(async (t) => {
    const now = deps.now()
    const k = await requiredVotes(t, def, req.host)
    if (k <= 1) return undefined
    const summary = def.summary(req.payload, req.host)
    const fresh = await requireFactor(deps, t, caller, code, now, summary, req.host)
    const holders = (await t.listOperators()).filter(holdsFactor)
    if (holders.length < k)
      throw deny(
        new UnlockdError(
          'conflict',
          `${summary} needs ${k} operators with a second factor, and only ${holders.length} hold one; add operators first (\`unlockd operator add\` stays possible)`,
        ),
      )
    const row: ActionRow = {
      id: newId('qa'),
      kind: req.kind,
      host: req.host,
      payload: req.payload,
      requesterId: fresh.id,
      required: k,
      eligible: holders.map((o) => o.id),
      createdAt: now,
      expiresAt: now + ACTION_TTL_SECONDS,
      state: 'pending',
      decidedAt: null,
      reason: null,
    }
    await t.insertAction(row)
    await t.addActionVote(row.id, fresh.id, now)
    await audit(t, now, `operator:${fresh.name}`, 'action.open', req.host, {
      action: row.id,
      kind: req.kind,
      summary,
      required: k,
    })
    return actionView(t, row, now)
  })
  if (opened) return { status: 202, body: { action: opened } }
  return { status: def.status, body: await def.run(deps, caller, req.payload, req.host, code) }
}

/** Run an approved action as its requester with the quorum's grant; record how it ended. */
async function execute(
  deps: ServerDeps,
  a: ActionRow,
  approvers: readonly string[],
  from: 'approved' | 'done',
): Promise<unknown> {
  const def = knownKind(a)
  const requester = await deps.store.tx((t) => t.getOperator(a.requesterId))
  try {
    if (!requester) throw new UnlockdError('operator_unknown', 'the requester no longer exists')
    const result = await def.run(deps, requester, a.payload, a.host, quorumGrant(a.id, approvers))
    await deps.store.tx(async (t) => {
      const now = deps.now()
      if (from === 'approved')
        await t.moveAction(a.id, 'approved', { state: 'done', decidedAt: now })
      await audit(t, now, 'system', 'action.done', a.host, {
        action: a.id,
        kind: a.kind,
        operators: approvers,
      })
    })
    return result
  } catch (err) {
    const reason = (err instanceof Error ? err.message : String(err)).slice(0, 200)
    await deps.store.tx(async (t) => {
      const now = deps.now()
      await t.moveAction(a.id, from, { state: 'failed', decidedAt: now, reason })
      await audit(t, now, 'system', 'action.fail', a.host, {
        action: a.id,
        kind: a.kind,
        operators: approvers,
        reason,
      })
    })
    throw err
  }
}

/**
 * Approve action `id` as `op` with their own fresh code. At the k-th counting vote the action
 * runs (or, for results that go to the requester, waits for the requester to collect it).
 */
export async function approveAction(
  deps: ServerDeps,
  op: OperatorRow,
  id: string,
  code: string,
): Promise<ActionView> {
  const decided = await deps.store.tx(async (t) => {
    const now = deps.now()
    const a = await loadAction(t, id, now)
    if (a.state !== 'pending') refuseDecided(a)
    // k-of-n must mean k people: an operator minted (or enrolled) after the action opened,
    // possibly by the requester, does not count toward it.
    if (!a.eligible.includes(op.id))
      throw deny(
        new UnlockdError(
          'forbidden',
          `operator ${op.name} did not hold a second factor when action ${a.id} was opened, so it cannot count toward its ${a.required} approvers`,
        ),
      )
    if ((await t.actionVotes(a.id)).some((v) => v.operatorId === op.id))
      throw deny(
        new UnlockdError(
          'already_approved',
          `operator ${op.name} already voted for action ${a.id}; it needs ${a.required} distinct operators`,
        ),
      )
    const fresh = await requireFactor(deps, t, op, code, now, `approve action ${a.id}`, a.host)
    await t.addActionVote(a.id, fresh.id, now)
    const voters = counted(a, await t.actionVotes(a.id)).map((v) => v.name)
    const actor = `operator:${fresh.name}` as const
    if (voters.length < a.required) {
      await audit(t, now, actor, 'action.vote', a.host, {
        action: a.id,
        kind: a.kind,
        votes: voters.length,
        required: a.required,
      })
      return { a, voters, run: false }
    }
    if (!(await t.moveAction(a.id, 'pending', { state: 'approved', decidedAt: now })))
      throw deny(new UnlockdError('conflict', `action ${a.id} was decided meanwhile`))
    await audit(t, now, actor, 'action.approve', a.host, {
      action: a.id,
      kind: a.kind,
      operators: voters,
      required: a.required,
    })
    return { a, voters, run: !knownKind(a).collect }
  })
  if (decided.run) {
    try {
      await execute(deps, decided.a, decided.voters, 'approved')
    } catch {
      // Recorded as `failed` with its reason; the view below shows it.
    }
  }
  return showAction(deps, id)
}

/** The requester collects an approved action's result, with a fresh code of their own. */
async function collect(
  deps: ServerDeps,
  caller: OperatorRow,
  code: string | undefined,
  id: string,
  req: ActionRequest,
): Promise<Gated> {
  const def = ACTIONS[req.kind]
  const { a, voters } = await deps.store.tx(async (t) => {
    const now = deps.now()
    const a = await loadAction(t, id, now)
    if (a.requesterId !== caller.id)
      throw deny(
        new UnlockdError(
          'forbidden',
          `only the operator who asked for action ${a.id} can collect its result`,
        ),
      )
    if (a.kind !== req.kind || a.host !== req.host)
      throw deny(
        new UnlockdError(
          'conflict',
          `action ${a.id} is not this request (${a.kind}); check the id`,
        ),
      )
    if (a.state === 'pending')
      throw deny(
        new UnlockdError(
          'approval_pending',
          `action ${a.id} still waits for approvals; another operator runs \`unlockd approve ${a.id}\``,
        ),
      )
    if (a.state !== 'approved' || !def.collect) refuseDecided({ ...a, state: 'done' })
    const fresh = await requireFactor(deps, t, caller, code, now, `collect action ${a.id}`, a.host)
    // Decided now: an approver removed since the k-th vote no longer counts.
    const voters = counted(a, await t.actionVotes(a.id)).map((v) => v.name)
    if (voters.length < a.required)
      throw deny(
        new UnlockdError(
          'forbidden',
          `action ${a.id} no longer has ${a.required} approvers (an approver was removed); ask for it again`,
        ),
      )
    if (!(await t.moveAction(a.id, 'approved', { state: 'done', decidedAt: now })))
      throw deny(new UnlockdError('approval_used', `action ${a.id} was already collected`))
    await audit(t, now, `operator:${fresh.name}`, 'action.collect', a.host, {
      action: a.id,
      kind: a.kind,
      operators: voters,
    })
    return { a, voters }
  })
  return { status: def.status, body: await execute(deps, a, voters, 'done') }
}

/** Deny (or, for the requester, withdraw) a pending or uncollected action. */
export async function denyAction(
  deps: ServerDeps,
  op: OperatorRow,
  id: string,
  reason: string | null,
  code: string | undefined,
): Promise<ActionView> {
  await deps.store.tx(async (t) => {
    const now = deps.now()
    const a = await loadAction(t, id, now)
    if (a.state !== 'pending' && a.state !== 'approved') refuseDecided(a)
    if (!a.eligible.includes(op.id) && a.requesterId !== op.id)
      throw deny(new UnlockdError('forbidden', `operator ${op.name} has no vote on action ${a.id}`))
    const fresh = await t.getOperator(op.id)
    if (!fresh || fresh.removedAt !== null)
      throw deny(new UnlockdError('unauthorized', 'this operator was removed'))
    requireEnrolled(fresh, 'deny an action')
    if (code !== undefined) await requireFactor(deps, t, fresh, code, now, `deny action ${a.id}`)
    if (!(await t.moveAction(a.id, a.state, { state: 'denied', decidedAt: now, reason })))
      throw deny(new UnlockdError('conflict', `action ${a.id} was decided meanwhile`))
    await audit(t, now, `operator:${fresh.name}`, 'action.deny', a.host, {
      action: a.id,
      kind: a.kind,
      ...(reason ? { reason } : {}),
    })
  })
  return showAction(deps, id)
}

/** Pending (not expired) and uncollected actions, oldest first; `all` adds every other one. */
export function listActions(deps: ServerDeps, all = false): Promise<ActionView[]> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    const rows = (await t.listActions()).filter(
      (a) => all || ((a.state === 'pending' || a.state === 'approved') && a.expiresAt > now),
    )
    return Promise.all(rows.map((a) => actionView(t, a, now)))
  })
}

export function showAction(deps: ServerDeps, id: string): Promise<ActionView> {
  return deps.store.tx(async (t) => {
    const a = await t.getAction(id)
    if (!a) throw new UnlockdError('approval_unknown', `no action ${id}`)
    return actionView(t, a, deps.now())
  })
}

/** Maintenance: mark actions past their expiry. */
export async function expireActions(deps: ServerDeps): Promise<number> {
  return deps.store.tx(async (t) => {
    const now = deps.now()
    let n = 0
    const open = [...(await t.listActions('pending')), ...(await t.listActions('approved'))]
    for (const a of open) {
      if (a.expiresAt > now) continue
      if (await t.moveAction(a.id, a.state, { state: 'expired', decidedAt: now })) {
        await audit(t, now, 'system', 'action.expire', a.host, { action: a.id, kind: a.kind })
        n++
      }
      if (n >= 500) break
    }
    return n
  })
}
