/**
 * Operator routes of crypto-shred under /v1/admin: crypto-shred, KEK rotation and status, escrow
 * export. Mounted inside adminRoutes, behind its one operator-token check; shred (not its dry run)
 * needs the operator's TOTP code in the body, KEK rotation and escrow export in X-Unlockd-Totp
 * and the quorum (./gate.ts). Shred only tightens: one operator with a valid code, never a quorum.
 */
import { Hono } from 'hono'
import { parseShredRequest } from '../../shared/protocol/shred.ts'
import { headerCode, TOTP_HEADER } from '../approvals/factor.ts'
import type { ServerDeps } from '../context.ts'
import { shred } from '../escrow/shred.ts'
import { kekStatus } from '../keys/rotation.ts'
import { gatedResponse } from './gate.ts'
import { hostNameParam, jsonBody, type AppEnv } from '../http/middleware.ts'

export function shredRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()

  r.post('/shred', async (c) =>
    c.json(await shred(deps, c.get('operator'), parseShredRequest(await jsonBody(c)))),
  )

  r.get('/kek', async (c) => c.json(await kekStatus(deps)))
  r.post('/kek/rotate', async (c) =>
    gatedResponse(
      deps,
      c,
      { kind: 'kek.rotate', host: null, payload: {} },
      headerCode(c.req.header(TOTP_HEADER)),
    ),
  )

  // The result goes to the requester only: with a quorum, they collect it once approved.
  r.post('/hosts/:name/escrow-export', async (c) =>
    gatedResponse(
      deps,
      c,
      { kind: 'escrow.export', host: hostNameParam(c.req.param('name')), payload: {} },
      headerCode(c.req.header(TOTP_HEADER)),
    ),
  )
  return r
}
