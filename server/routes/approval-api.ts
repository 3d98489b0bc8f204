/**
 * Operator API for human approval, mounted inside adminRoutes (/v1/admin, bearer-authenticated):
 *   GET  /approvals[?all=1]            pending requests (or every request)
 *   GET  /approvals/:id
 *   POST /approvals/:id/approve        { code }            the caller's TOTP code
 *   POST /approvals/:id/deny           { reason?, code? }
 *   GET  /operators
 *   POST /operators                    { name, code }      → a one-time enrollment code only
 *   POST /operators/:name/totp         { code }            your own: new otpauth URI; another's:
 *                                                          factor cleared, enrollment code only
 *   POST /operators/:name/remove       { code }
 * `code` on operator changes is the caller's own current TOTP code. No answer here ever carries
 * another operator's token or secret (see approvals/operators.ts). Operator changes also need
 * the fleet-wide quorum (../approvals/quorum.ts): with k > 1 they answer 202 `{ action }`.
 */
import { Hono, type Context } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import {
  APPROVAL_ID_RE,
  parseAddOperator,
  parseApproveBody,
  parseDenyBody,
  parseOperatorCode,
} from '../../shared/protocol/messages.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import type { ServerDeps } from '../context.ts'
import { approveRequest, denyRequest, listApprovals, showApproval } from '../approvals/decide.ts'
import { listOperators } from '../approvals/operators.ts'
import { jsonBody, type AppEnv } from '../http/middleware.ts'
import type { OperatorRow } from '../store/store.ts'
import { gatedResponse } from './gate.ts'

function approvalId(v: string): string {
  if (!APPROVAL_ID_RE.test(v))
    throw new UnlockdError(
      'bad_request',
      'approval id must look like ap_ followed by 22 characters',
    )
  return v
}
function operatorName(v: string): string {
  if (!NAME_RE.test(v))
    throw new UnlockdError('bad_request', 'operator name must be 1-64 chars of a-z 0-9 _ . -')
  return v
}

/** Empty bodies are allowed where every field is optional. */
async function optionalBody(c: Context<AppEnv>): Promise<unknown> {
  const len = c.req.header('content-length')
  return len && len !== '0' ? jsonBody(c, 4096) : {}
}

export function approvalAdminRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  // Defence in depth: this router relies on adminRoutes' bearer check; refuse if it is missing.
  const operator = (c: Context<AppEnv>): OperatorRow => {
    const op = c.get('operator') as OperatorRow | undefined
    if (!op) throw new UnlockdError('unauthorized', 'operator API token required')
    return op
  }

  r.get('/approvals', async (c) => {
    operator(c)
    const all = c.req.query('all')
    return c.json({ approvals: await listApprovals(deps, all === '1' || all === 'true') })
  })
  r.get('/approvals/:id', async (c) => {
    operator(c)
    return c.json(await showApproval(deps, approvalId(c.req.param('id'))))
  })
  r.post('/approvals/:id/approve', async (c) => {
    const op = operator(c)
    const { code } = parseApproveBody(await jsonBody(c, 4096))
    return c.json(await approveRequest(deps, op, approvalId(c.req.param('id')), code, 'api'))
  })
  r.post('/approvals/:id/deny', async (c) => {
    const op = operator(c)
    const b = parseDenyBody(await optionalBody(c))
    return c.json(
      await denyRequest(deps, op, approvalId(c.req.param('id')), b.reason ?? null, b.code, 'api'),
    )
  })

  r.get('/operators', async (c) => {
    operator(c)
    return c.json({ operators: await listOperators(deps) })
  })
  // Operator changes decide who may vote: the caller's own code and the fleet-wide quorum.
  r.post('/operators', async (c) => {
    operator(c)
    const b = parseAddOperator(await jsonBody(c, 4096))
    return gatedResponse(
      deps,
      c,
      { kind: 'operator.add', host: null, payload: { name: b.name } },
      b.code,
    )
  })
  r.post('/operators/:name/totp', async (c) => {
    operator(c)
    const b = parseOperatorCode(await optionalBody(c))
    const name = operatorName(c.req.param('name'))
    return gatedResponse(deps, c, { kind: 'operator.totp', host: null, payload: { name } }, b.code)
  })
  r.post('/operators/:name/remove', async (c) => {
    operator(c)
    const b = parseOperatorCode(await optionalBody(c))
    const name = operatorName(c.req.param('name'))
    return gatedResponse(
      deps,
      c,
      { kind: 'operator.remove', host: null, payload: { name } },
      b.code,
    )
  })
  return r
}
