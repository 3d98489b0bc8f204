/**
 * Operator API for quorum actions, mounted inside adminRoutes (/v1/admin, bearer-authenticated):
 *   GET  /actions[?all=1]              pending and uncollected actions (or every action)
 *   GET  /actions/:id
 *   POST /actions/:id/approve          { code }            the caller's own TOTP code
 *   POST /actions/:id/deny             { reason?, code? }
 * Actions are opened by the loosening routes themselves (they answer 202 with `{ action }`).
 */
import { Hono, type Context } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import { ACTION_ID_RE } from '../../shared/protocol/actions.ts'
import { parseApproveBody, parseDenyBody } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { approveAction, denyAction, listActions, showAction } from '../approvals/quorum.ts'
import { jsonBody, type AppEnv } from '../http/middleware.ts'

export function actionId(v: string): string {
  if (!ACTION_ID_RE.test(v))
    throw new UnlockdError('bad_request', 'action id must look like qa_ followed by 22 characters')
  return v
}

async function optionalBody(c: Context<AppEnv>): Promise<unknown> {
  const len = c.req.header('content-length')
  return len && len !== '0' ? jsonBody(c, 4096) : {}
}

export function actionRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.get('/actions', async (c) => {
    const all = c.req.query('all')
    return c.json({ actions: await listActions(deps, all === '1' || all === 'true') })
  })
  r.get('/actions/:id', async (c) => c.json(await showAction(deps, actionId(c.req.param('id')))))
  r.post('/actions/:id/approve', async (c) => {
    const { code } = parseApproveBody(await jsonBody(c, 4096))
    return c.json(await approveAction(deps, c.get('operator'), actionId(c.req.param('id')), code))
  })
  r.post('/actions/:id/deny', async (c) => {
    const b = parseDenyBody(await optionalBody(c))
    return c.json(
      await denyAction(
        deps,
        c.get('operator'),
        actionId(c.req.param('id')),
        b.reason ?? null,
        b.code,
      ),
    )
  })
  return r
}
