/**
 * Operator routes of issue 5 under /v1/admin: crypto-shred, KEK rotation and status, escrow
 * export. Every route needs an operator bearer token; shred (not its dry run) also needs the
 * operator's TOTP code in the body.
 */
import { Hono, type MiddlewareHandler } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import { parseShredRequest } from '../../shared/protocol/shred.ts'
import type { ServerDeps } from '../context.ts'
import { exportEscrow } from '../escrow/escrow-export.ts'
import { shred } from '../escrow/shred.ts'
import { kekStatus, rotateKek } from '../keys/rotation.ts'
import { jsonBody, operatorAuth, type AppEnv } from '../http/middleware.ts'

/** Operator auth, unless a router mounted on the same prefix already did it for this request. */
function requireOperator(deps: ServerDeps): MiddlewareHandler<AppEnv> {
  const auth = operatorAuth(deps)
  return async (c, next) => {
    if (c.get('operator')) return next()
    return auth(c, next)
  }
}

export function shredRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.use('*', requireOperator(deps))

  r.post('/shred', async (c) => c.json(await shred(deps, c.get('operator'), parseShredRequest(await jsonBody(c)))))

  r.get('/kek', async (c) => c.json(await kekStatus(deps)))
  r.post('/kek/rotate', async (c) => {
    // Not destructive (survivors are re-wrapped first), so the operator token is enough.
    const rotated = await rotateKek(deps, `operator:${c.get('operator').name}`, 'operator')
    return c.json({ ...(await kekStatus(deps)), rotated: { destroyed: rotated.destroyed, rewrapped: rotated.rewrapped } })
  })

  r.post('/hosts/:name/escrow-export', async (c) => {
    const name = c.req.param('name')
    if (!NAME_RE.test(name)) throw new UnlockdError('bad_request', 'host name must be 1-64 chars of a-z 0-9 _ . -')
    c.header('Cache-Control', 'no-store')
    return c.json(await exportEscrow(deps, `operator:${c.get('operator').name}`, name))
  })
  return r
}
