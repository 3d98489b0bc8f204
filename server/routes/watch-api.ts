/** Host routes of the kill switch: POST /v1/watch (long-poll for orders) and POST /v1/report. */
import { Hono } from 'hono'
import type { ServerDeps } from '../context.ts'
import { hostRequest } from '../escrow/host-auth.ts'
import { report, watch } from '../escrow/watch.ts'
import { signingDenials } from '../escrow/verdicts.ts'
import { jwsBody, sourceAddress, type AppEnv } from '../http/middleware.ts'

export function watchRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.post('/watch', async (c) => {
    const req = await hostRequest(deps, await jwsBody(c), 'watch')
    const res = await signingDenials(deps, req.payload, () => watch(deps, req, c.req.raw.signal))
    c.header('Cache-Control', 'no-store')
    return c.json(res)
  })
  r.post('/report', async (c) => {
    const req = await hostRequest(deps, await jwsBody(c), 'report')
    return c.json(await report(deps, req, sourceAddress(c)))
  })
  return r
}
