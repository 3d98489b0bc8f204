/**
 * Operator routes for Tang hosts under /v1/admin: add a host served only through the
 * Tang endpoints, show its keys, rotate them and purge retired ones. Mounted inside adminRoutes,
 * behind its operator-token check.
 */
import { Hono } from 'hono'
import { parseAddHostRequest, parseRotateTangRequest } from '../../shared/protocol/tang.ts'
import type { ServerDeps } from '../context.ts'
import { hostNameParam, jsonBody, type AppEnv } from '../http/middleware.ts'
import { addTangHost, purgeTangKeys, rotateTangKeys, showTangHost } from '../tang/keys.ts'

export function tangAdminRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  const actor = (c: { get(k: 'operator'): { name: string } }) =>
    `operator:${c.get('operator').name}` as const

  r.post('/hosts', async (c) =>
    c.json(await addTangHost(deps, actor(c), parseAddHostRequest(await jsonBody(c))), 201),
  )
  r.get('/hosts/:name/tang', async (c) =>
    c.json(await showTangHost(deps, hostNameParam(c.req.param('name')))),
  )
  r.post('/hosts/:name/tang/rotate', async (c) => {
    const name = hostNameParam(c.req.param('name'))
    const body =
      c.req.header('content-length') && c.req.header('content-length') !== '0'
        ? parseRotateTangRequest(await jsonBody(c))
        : { purge: false }
    return c.json(
      body.purge
        ? await purgeTangKeys(deps, actor(c), name)
        : await rotateTangKeys(deps, actor(c), name),
    )
  })
  return r
}
