/**
 * Quorum actions: a loosening operator action (policy relaxation, resume, escrow export, operator
 * changes, KEK rotation, Tang host add and key purge) that needs k distinct operators, each with
 * their own fresh second factor. The route that asks for it answers 202 with `{ action }` while
 * the quorum is short; other operators approve with `unlockd approve ID`.
 */
import * as v from 'valibot'
import { epochSeconds, name, parseWith } from './validate.ts'

export const ACTION_ID_RE = /^qa_[A-Za-z0-9_-]{22}$/
/** Header a requester sends to collect the result of an approved action (export, operators). */
export const ACTION_HEADER = 'x-unlockd-action'

export const ACTION_KINDS = [
  'host.policy',
  'host.resume',
  'escrow.export',
  'tang.add',
  'tang.purge',
  'kek.rotate',
  'operator.add',
  'operator.remove',
  'operator.totp',
] as const
export type ActionKind = (typeof ACTION_KINDS)[number]

export const ACTION_STATES = ['pending', 'approved', 'denied', 'expired', 'done', 'failed'] as const

export const ActionViewSchema = v.object({
  id: v.pipe(v.string(), v.regex(ACTION_ID_RE)),
  kind: v.picklist(ACTION_KINDS),
  /** What it does, in one line (`relax approval, cidrs of host web-1's policy`). */
  summary: v.pipe(v.string(), v.maxLength(300)),
  host: v.nullable(name),
  requestedBy: name,
  required: v.pipe(v.number(), v.integer(), v.minValue(1)),
  /** Operators whose votes count (removed operators' votes do not). */
  approvedBy: v.array(name),
  /** `pending` past its expiry is shown as `expired`. */
  state: v.picklist(ACTION_STATES),
  /** Whether the requester collects the result by asking again with the action id. */
  collect: v.boolean(),
  createdAt: epochSeconds,
  expiresAt: epochSeconds,
  ageSeconds: v.pipe(v.number(), v.integer()),
  decidedAt: v.nullable(epochSeconds),
  reason: v.nullable(v.string()),
})
export type ActionView = v.InferOutput<typeof ActionViewSchema>

export const parseActionView = (x: unknown): ActionView =>
  parseWith(ActionViewSchema, x, 'action', 'protocol_invalid')
export const parseActionList = (x: unknown): { actions: ActionView[] } =>
  parseWith(v.object({ actions: v.array(ActionViewSchema) }), x, 'action list', 'protocol_invalid')
/** The 202 answer of a route whose action now waits for a quorum. */
export const parseActionPending = (x: unknown): { action: ActionView } =>
  parseWith(v.object({ action: ActionViewSchema }), x, 'pending action', 'protocol_invalid')
