/**
 * Operator routes of crypto-shred under /v1/admin: crypto-shred, KEK rotation and status, escrow
 * export. Mounted inside adminRoutes, behind its one operator-token check; shred (not its dry run)
 * needs the operator's TOTP code in the body, KEK rotation and escrow export in X-Unlockd-Totp.
 */
import { Hono } from 'hono'
import { parseShredRequest } from '../../shared/protocol/shred.ts'
import { headerCode, TOTP_HEADER, verifyFactor } from '../approvals/factor.ts'
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
    // Not destructive (survivors are re-wrapped first), but it changes the key under every
    // secret, so it needs the caller's own code like every fleet-wide change.
    await verifyFactor(deps, c.get('operator'), headerCode(c.req.header(TOTP_HEADER)), 'kek rotate')
    const rotated = await rotateKek(deps, `operator:${c.get('operator').name}`, 'operator')
    return c.json({
      ...(await kekStatus(deps)),
      rotated: { destroyed: rotated.destroyed, rewrapped: rotated.rewrapped },
    })
  })

  r.post('/hosts/:name/escrow-export', async (c) => {
    const name = hostNameParam(c.req.param('name'))
    c.header('Cache-Control', 'no-store')
    return c.json(
      await exportEscrow(deps, c.get('operator'), name, headerCode(c.req.header(TOTP_HEADER))),
    )
  })
  return r
}
