/** Host routes of the kill switch: POST /v1/watch (long-poll for orders) and POST /v1/report. */
import { Hono } from 'hono'
import { parseJwsBody } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { report, watch } from '../escrow/watch.ts'
import { jsonBody, sourceAddress, type AppEnv } from '../http/middleware.ts'

export function watchRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.post('/watch', async (c) => {
    const { jws } = parseJwsBody(await jsonBody(c))
    const res = await watch(deps, jws, c.req.raw.signal)
    c.header('Cache-Control', 'no-store')
    return c.json(res)
  })
  r.post('/report', async (c) => {
    const { jws } = parseJwsBody(await jsonBody(c))
    return c.json(await report(deps, jws, sourceAddress(c)))
  })
  return r
}
