/**
 * Operator routes for Tang hosts (issue 8) under /v1/admin: add a host served only through the
 * Tang endpoints, show its keys, rotate them and purge retired ones.
 */
import { Hono, type MiddlewareHandler } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import { parseAddHostRequest, parseRotateTangRequest } from '../../shared/protocol/tang.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import type { ServerDeps } from '../context.ts'
import { jsonBody, operatorAuth, type AppEnv } from '../http/middleware.ts'
import { addTangHost, purgeTangKeys, rotateTangKeys, showTangHost } from '../tang/keys.ts'

/** Operator auth, unless a router mounted on the same prefix already did it for this request. */
function requireOperator(deps: ServerDeps): MiddlewareHandler<AppEnv> {
  const auth = operatorAuth(deps)
  return async (c, next) => {
    if (c.get('operator')) return next()
    return auth(c, next)
  }
}

function hostName(v: string): string {
  if (!NAME_RE.test(v)) throw new UnlockdError('bad_request', 'host name must be 1-64 chars of a-z 0-9 _ . -')
  return v
}

export function tangAdminRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.use('*', requireOperator(deps))
  const actor = (c: { get(k: 'operator'): { name: string } }) => `operator:${c.get('operator').name}` as const

  r.post('/hosts', async (c) => c.json(await addTangHost(deps, actor(c), parseAddHostRequest(await jsonBody(c))), 201))
  r.get('/hosts/:name/tang', async (c) => c.json(await showTangHost(deps, hostName(c.req.param('name')))))
  r.post('/hosts/:name/tang/rotate', async (c) => {
    const name = hostName(c.req.param('name'))
    const body = c.req.header('content-length') && c.req.header('content-length') !== '0' ? parseRotateTangRequest(await jsonBody(c)) : { purge: false }
    return c.json(body.purge ? await purgeTangKeys(deps, actor(c), name) : await rotateTangKeys(deps, actor(c), name))
  })
  return r
}
