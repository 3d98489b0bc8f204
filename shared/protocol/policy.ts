/**
 * Host policy: what a host's unlock needs (source networks, validity dates, boots, approval).
 * Stored per host, edited with `unlockd host set`, evaluated on the server by a pure function.
 */
import * as v from 'valibot'
import { cidr, parseWith } from './validate.ts'
import { parseDuration } from '../util/duration.ts'

/** `never | always | outside-cidrs | after-idle(DURATION)` */
export const APPROVAL_RULE_RE = /^(never|always|outside-cidrs|after-idle\((\d+[smhdw])+\))$/

export const approvalRule = v.pipe(
  v.string('must be a string'),
  v.check(
    (s) =>
      APPROVAL_RULE_RE.test(s) &&
      (!s.startsWith('after-idle') || parseDuration(s.slice(11, -1)) !== undefined),
    'must be never, always, outside-cidrs or after-idle(DURATION)',
  ),
)

export const PolicySchema = v.strictObject({
  cidrs: v.pipe(v.array(cidr, 'must be an array of CIDRs'), v.maxLength(64)),
  maxUnlocks: v.nullable(
    v.strictObject({
      count: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1_000_000)),
      periodSeconds: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(366 * 86400)),
    }),
  ),
  notBefore: v.nullable(v.pipe(v.number(), v.integer(), v.minValue(0))),
  notAfter: v.nullable(v.pipe(v.number(), v.integer(), v.minValue(0))),
  approval: approvalRule,
  approvers: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(16)),
  /** Suspend the host automatically when unseen for this many seconds (Mandos-style checker). */
  idleSuspendSeconds: v.nullable(v.pipe(v.number(), v.integer(), v.minValue(60))),
  /** Ask for approval when one host asks from a second boot id within this window. */
  cloneWindowSeconds: v.nullable(v.pipe(v.number(), v.integer(), v.minValue(1))),
})

export type Policy = v.InferOutput<typeof PolicySchema>

export const DEFAULT_POLICY: Policy = {
  cidrs: [],
  maxUnlocks: null,
  notBefore: null,
  notAfter: null,
  approval: 'never',
  approvers: 1,
  idleSuspendSeconds: null,
  cloneWindowSeconds: null,
}

export function parsePolicy(
  input: unknown,
  code: 'bad_request' | 'store_failed' = 'bad_request',
): Policy {
  return parseWith(PolicySchema, input, 'policy', code)
}

/** Parse `N/PERIOD` as in `--max-unlocks 5/1h`. */
export function parseMaxUnlocks(
  text: string,
): { count: number; periodSeconds: number } | undefined {
  const m = /^(\d{1,7})\/(.+)$/.exec(text)
  if (!m) return undefined
  const periodSeconds = parseDuration(m[2] as string)
  const count = Number(m[1])
  if (periodSeconds === undefined || count < 1) return undefined
  return { count, periodSeconds }
}
