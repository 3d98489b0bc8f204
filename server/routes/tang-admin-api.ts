/**
 * Operator routes for Tang hosts under /v1/admin: add a host served only through the
 * Tang endpoints, show its keys, rotate them and purge retired ones. Mounted inside adminRoutes,
 * behind its operator-token check. Adding a host and rotating (or purging) its keys decide who
 * can derive a key, so each needs the caller's own TOTP code in X-Unlockd-Totp.
 */
import { Hono, type Context } from 'hono'
import { parseAddHostRequest, parseRotateTangRequest } from '../../shared/protocol/tang.ts'
import { headerCode, TOTP_HEADER, verifyFactor } from '../approvals/factor.ts'
import type { ServerDeps } from '../context.ts'
import { hostNameParam, jsonBody, type AppEnv } from '../http/middleware.ts'
import { addTangHost, purgeTangKeys, rotateTangKeys, showTangHost } from '../tang/keys.ts'

export function tangAdminRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  const actor = (c: { get(k: 'operator'): { name: string } }) =>
    `operator:${c.get('operator').name}` as const

  const factor = (c: Context<AppEnv>, action: string, host: string | null) =>
    verifyFactor(deps, c.get('operator'), headerCode(c.req.header(TOTP_HEADER)), action, host)

  r.post('/hosts', async (c) => {
    const req = parseAddHostRequest(await jsonBody(c))
    await factor(c, 'host add --tang', req.name)
    return c.json(await addTangHost(deps, actor(c), req), 201)
  })
  r.get('/hosts/:name/tang', async (c) =>
    c.json(await showTangHost(deps, hostNameParam(c.req.param('name')))),
  )
  r.post('/hosts/:name/tang/rotate', async (c) => {
    const name = hostNameParam(c.req.param('name'))
    const body =
      c.req.header('content-length') && c.req.header('content-length') !== '0'
        ? parseRotateTangRequest(await jsonBody(c))
        : { purge: false }
    await factor(c, body.purge ? 'host rotate-tang --purge' : 'host rotate-tang', name)
    return c.json(
      body.purge
        ? await purgeTangKeys(deps, actor(c), name)
        : await rotateTangKeys(deps, actor(c), name),
    )
  })
  return r
}
