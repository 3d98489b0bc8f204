/**
 * Operator routes of crypto-shred under /v1/admin: crypto-shred, KEK rotation and status, escrow
 * export. Mounted inside adminRoutes, behind its one operator-token check; shred (not its dry run) also needs the
 * operator's TOTP code in the body.
 */
import { Hono } from 'hono'
import { parseShredRequest } from '../../shared/protocol/shred.ts'
import type { ServerDeps } from '../context.ts'
import { exportEscrow } from '../escrow/escrow-export.ts'
import { shred } from '../escrow/shred.ts'
import { kekStatus, rotateKek } from '../keys/rotation.ts'
import { hostNameParam, jsonBody, type AppEnv } from '../http/middleware.ts'

export function shredRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()

  r.post('/shred', async (c) =>
    c.json(await shred(deps, c.get('operator'), parseShredRequest(await jsonBody(c)))),
  )

  r.get('/kek', async (c) => c.json(await kekStatus(deps)))
  r.post('/kek/rotate', async (c) => {
    // Not destructive (survivors are re-wrapped first), so the operator token is enough.
    const rotated = await rotateKek(deps, `operator:${c.get('operator').name}`, 'operator')
    return c.json({
      ...(await kekStatus(deps)),
      rotated: { destroyed: rotated.destroyed, rewrapped: rotated.rewrapped },
    })
  })

  r.post('/hosts/:name/escrow-export', async (c) => {
    const name = hostNameParam(c.req.param('name'))
    c.header('Cache-Control', 'no-store')
    return c.json(await exportEscrow(deps, `operator:${c.get('operator').name}`, name))
  })
  return r
}
