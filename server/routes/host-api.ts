/** Routes a host (agent) calls: nonce, enroll, unlock, add volumes, approval poll. */
import { Hono } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import { parseJwsBody } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { enrollHost } from '../escrow/enroll.ts'
import { issueNonce } from '../escrow/host-auth.ts'
import { pollApproval } from '../escrow/poll.ts'
import { unlock } from '../escrow/release.ts'
import { addVolumes } from '../escrow/volumes.ts'
import {
  bearer,
  hostRateLimiter,
  jsonBody,
  sourceAddress,
  type AppEnv,
} from '../http/middleware.ts'

export function hostRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.use('*', hostRateLimiter(deps))
  r.get('/nonce', async (c) => {
    c.header('Cache-Control', 'no-store')
    return c.json(await issueNonce(deps))
  })
  r.post('/enroll', async (c) => {
    const token = bearer(c)
    if (!token)
      throw new UnlockdError(
        'token_invalid',
        'enrollment token required (Authorization: Bearer ue_…)',
      )
    const { jws } = parseJwsBody(await jsonBody(c))
    return c.json(await enrollHost(deps, token, jws, sourceAddress(c)), 201)
  })
  r.post('/unlock', async (c) => {
    const { jws } = parseJwsBody(await jsonBody(c))
    const res = await unlock(deps, jws, sourceAddress(c))
    c.header('Cache-Control', 'no-store')
    return c.json(res, res.status === 'released' ? 200 : 202)
  })
  r.post('/volumes', async (c) => {
    const { jws } = parseJwsBody(await jsonBody(c))
    return c.json(await addVolumes(deps, jws, sourceAddress(c)))
  })
  r.post('/approval/poll', async (c) => {
    const { jws } = parseJwsBody(await jsonBody(c))
    const res = await pollApproval(deps, jws, sourceAddress(c), c.req.raw.signal)
    c.header('Cache-Control', 'no-store')
    return c.json(res, res.status === 'released' ? 200 : 202)
  })
  return r
}
