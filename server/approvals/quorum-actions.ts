/**
 * The loosening actions that a quorum can gate, each with its scope (who decides k), whether its
 * result goes back to the requester only (collected by asking again with the action id), and how
 * it runs. `run` gets the operator who asked and either their own code (k = 1: the action checks
 * it, as without a quorum) or the grant of the approved action. Stored payloads are parsed again
 * before they run.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { ActionKind } from '../../shared/protocol/actions.ts'
import { parsePolicyPatch } from '../../shared/protocol/messages.ts'
import { parseAddHostRequest } from '../../shared/protocol/tang.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import type { ServerDeps } from '../context.ts'
import { setHostPolicy, setHostState } from '../escrow/admin.ts'
import { exportEscrow } from '../escrow/escrow-export.ts'
import { kekStatus, rotateKek } from '../keys/rotation.ts'
import type { OperatorRow } from '../store/store.ts'
import { addTangHost, purgeTangKeys } from '../tang/keys.ts'
import { verifyFactor, type Authority } from './factor.ts'
import { addOperator, enrollTotp, removeOperator } from './operators.ts'

/**
 * `host`: k is the affected host's `approvers`. `fleet`: k is the largest `approvers` over all
 * live hosts. `grow`: like `fleet`, but never more than the operators who hold a factor, so
 * that adding operators stays possible while too few exist (see ./quorum.ts).
 */
export type ActionScope = 'host' | 'fleet' | 'grow'

export interface ActionDef {
  scope: ActionScope
  /** The result goes to the requester only, who collects it once approved. */
  collect: boolean
  /** HTTP status of the route's answer when the action runs. */
  status: 200 | 201
  summary(payload: Record<string, unknown>, host: string | null): string
  run(
    deps: ServerDeps,
    requester: OperatorRow,
    payload: Record<string, unknown>,
    host: string | null,
    auth: Authority,
  ): Promise<unknown>
}

const actor = (op: OperatorRow) => `operator:${op.name}` as const

function hostOf(host: string | null): string {
  if (host === null || !NAME_RE.test(host))
    throw new UnlockdError('store_failed', 'a host action was stored without its host')
  return host
}

function operatorOf(payload: Record<string, unknown>): string {
  const name = payload['name']
  if (typeof name !== 'string' || !NAME_RE.test(name))
    throw new UnlockdError('store_failed', 'an operator action was stored without its operator')
  return name
}

export const ACTIONS: Readonly<Record<ActionKind, ActionDef>> = {
  'host.policy': {
    scope: 'host',
    collect: false,
    status: 200,
    summary: (p, h) =>
      `relax the policy of host ${h ?? '?'}: ${Object.keys((p['patch'] as object | undefined) ?? {}).join(', ')}`,
    run: (deps, op, p, h, auth) =>
      setHostPolicy(deps, op, hostOf(h), parsePolicyPatch(p['patch']), auth),
  },
  'host.resume': {
    scope: 'host',
    collect: false,
    status: 200,
    summary: (_p, h) => `resume host ${h ?? '?'}`,
    run: (deps, op, _p, h, auth) => setHostState(deps, op, hostOf(h), 'active', null, auth),
  },
  'escrow.export': {
    scope: 'host',
    collect: true,
    status: 200,
    summary: (_p, h) => `export the escrow blobs of host ${h ?? '?'}`,
    run: (deps, op, _p, h, auth) => exportEscrow(deps, op, hostOf(h), auth),
  },
  'tang.add': {
    scope: 'fleet',
    collect: false,
    status: 201,
    summary: (_p, h) => `add Tang host ${h ?? '?'}`,
    run: async (deps, op, p, h, auth) => {
      const req = parseAddHostRequest(p['request'])
      await verifyFactor(deps, op, auth, 'host add --tang', hostOf(h))
      return addTangHost(deps, actor(op), req)
    },
  },
  'tang.purge': {
    scope: 'host',
    collect: false,
    status: 200,
    summary: (_p, h) => `purge the retired Tang keys of host ${h ?? '?'}`,
    run: async (deps, op, _p, h, auth) => {
      await verifyFactor(deps, op, auth, 'host rotate-tang --purge', hostOf(h))
      return purgeTangKeys(deps, actor(op), hostOf(h))
    },
  },
  'kek.rotate': {
    scope: 'fleet',
    collect: false,
    status: 200,
    summary: () => 'rotate the KEK',
    run: async (deps, op, _p, _h, auth) => {
      // Not destructive (survivors are re-wrapped first), but it changes the key under every
      // secret, so it needs the caller's own code like every fleet-wide change.
      await verifyFactor(deps, op, auth, 'kek rotate')
      const rotated = await rotateKek(deps, actor(op), 'operator')
      return {
        ...(await kekStatus(deps)),
        rotated: { destroyed: rotated.destroyed, rewrapped: rotated.rewrapped },
      }
    },
  },
  'operator.add': {
    scope: 'grow',
    collect: true,
    status: 201,
    summary: (p) => `add operator ${String(p['name'])}`,
    run: (deps, op, p, _h, auth) => addOperator(deps, op, operatorOf(p), auth),
  },
  'operator.remove': {
    scope: 'fleet',
    collect: false,
    status: 200,
    summary: (p) => `remove operator ${String(p['name'])}`,
    run: (deps, op, p, _h, auth) => removeOperator(deps, op, operatorOf(p), auth),
  },
  'operator.totp': {
    scope: 'fleet',
    collect: true,
    status: 200,
    summary: (p) => `reset the second factor of operator ${String(p['name'])}`,
    run: (deps, op, p, _h, auth) => enrollTotp(deps, op, operatorOf(p), auth),
  },
}
