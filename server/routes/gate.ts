/**
 * A loosening route's answer through the quorum (server/approvals/quorum.ts): the action's own
 * answer when it runs now, or 202 `{ action }` when it waits for more operators. A requester
 * collects an approved action's result by asking again with `X-Unlockd-Action: ID`.
 */
import type { Context } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import { ACTION_HEADER, ACTION_ID_RE } from '../../shared/protocol/actions.ts'
import { gated, type ActionRequest } from '../approvals/quorum.ts'
import type { ServerDeps } from '../context.ts'
import type { AppEnv } from '../http/middleware.ts'

function collectId(c: Context<AppEnv>): string | undefined {
  const v = c.req.header(ACTION_HEADER)
  if (v === undefined || v === '') return undefined
  if (!ACTION_ID_RE.test(v))
    throw new UnlockdError('bad_request', 'X-Unlockd-Action must be an action id (qa_...)')
  return v
}

export async function gatedResponse(
  deps: ServerDeps,
  c: Context<AppEnv>,
  req: ActionRequest,
  code: string | undefined,
): Promise<Response> {
  const g = await gated(deps, c.get('operator'), code, collectId(c), req)
  c.header('Cache-Control', 'no-store')
  return c.json(g.body as Record<string, unknown>, g.status)
}
