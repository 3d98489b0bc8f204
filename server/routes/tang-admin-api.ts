/**
 * Operator routes for Tang hosts under /v1/admin: add a host served only through the
 * Tang endpoints, show its keys, rotate them and purge retired ones. Mounted inside adminRoutes,
 * behind its operator-token check. Adding a host and rotating (or purging) its keys decide who
 * can derive a key, so each needs the caller's own TOTP code in X-Unlockd-Totp; adding a host
 * and purging retired keys also need the quorum (./gate.ts).
 */
import { Hono, type Context } from 'hono'
import { parseAddHostRequest, parseRotateTangRequest } from '../../shared/protocol/tang.ts'
import { headerCode, TOTP_HEADER, verifyFactor } from '../approvals/factor.ts'
import type { ServerDeps } from '../context.ts'
import { hostNameParam, jsonBody, type AppEnv } from '../http/middleware.ts'
import { rotateTangKeys, showTangHost } from '../tang/keys.ts'
import { gatedResponse } from './gate.ts'

export function tangAdminRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  const actor = (c: { get(k: 'operator'): { name: string } }) =>
    `operator:${c.get('operator').name}` as const

  const code = (c: Context<AppEnv>) => headerCode(c.req.header(TOTP_HEADER))

  // A new Tang host is a new way to derive a key: fleet-wide quorum.
  r.post('/hosts', async (c) => {
    const req = parseAddHostRequest(await jsonBody(c))
    return gatedResponse(
      deps,
      c,
      { kind: 'tang.add', host: req.name, payload: { request: req } },
      code(c),
    )
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
    // Purging destroys retired keys: the host's quorum. Rotating keeps them: the caller's code.
    if (body.purge)
      return gatedResponse(deps, c, { kind: 'tang.purge', host: name, payload: {} }, code(c))
    await verifyFactor(deps, c.get('operator'), code(c), 'host rotate-tang', name)
    return c.json(await rotateTangKeys(deps, actor(c), name))
  })
  return r
}
