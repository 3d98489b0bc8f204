/**
 * POST /v1/operator/enroll { code } → { operator, token?, otpauthUri }: redeem a one-time
 * operator enrollment code (approvals/operator-enroll.ts). Unauthenticated, since the code is
 * the credential; a reset enrollment also needs `Authorization: Bearer` with the operator's
 * own API token. Behind the /v1 routes' per-address DoS guard (host-api.ts), with per-source
 * backoff on failures.
 */
import { Hono } from 'hono'
import { parseRedeemEnrollment } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { redeemEnrollment } from '../approvals/operator-enroll.ts'
import { bearer, jsonBody, sourceAddress, type AppEnv } from '../http/middleware.ts'

export function operatorEnrollRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.post('/operator/enroll', async (c) => {
    const { code } = parseRedeemEnrollment(await jsonBody(c, 4096))
    c.header('Cache-Control', 'no-store')
    return c.json(await redeemEnrollment(deps, code, bearer(c), sourceAddress(c)), 201)
  })
  return r
}
