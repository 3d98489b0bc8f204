/**
 * Routes a host (agent) calls: nonce, enroll, unlock, add volumes, approval poll, encryption
 * progress. Every signed
 * route but enroll takes one `hostRequest` step (signature, payload, signer, clock) first.
 */
import { Hono } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import type { ServerDeps } from '../context.ts'
import { enrollHost } from '../escrow/enroll.ts'
import { recordEncryption } from '../escrow/encryption.ts'
import { hostRequest, issueNonce } from '../escrow/host-auth.ts'
import { pollApproval } from '../escrow/poll.ts'
import { unlock } from '../escrow/release.ts'
import { addVolumes } from '../escrow/volumes.ts'
import { signingDenials } from '../escrow/verdicts.ts'
import { bearer, hostRateLimiter, jwsBody, sourceAddress, type AppEnv } from '../http/middleware.ts'

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
    // Not a hostRequest: the host is not enrolled yet, so enrollHost checks its own signature.
    return c.json(await enrollHost(deps, token, await jwsBody(c), sourceAddress(c)), 201)
  })
  r.post('/unlock', async (c) => {
    const req = await hostRequest(deps, await jwsBody(c), 'unlock')
    const res = await signingDenials(deps, req.payload, () => unlock(deps, req, sourceAddress(c)))
    c.header('Cache-Control', 'no-store')
    return c.json(res, res.status === 'released' ? 200 : 202)
  })
  r.post('/volumes', async (c) => {
    const req = await hostRequest(deps, await jwsBody(c), 'volumes')
    return c.json(await addVolumes(deps, req, sourceAddress(c)))
  })
  r.post('/approval/poll', async (c) => {
    const req = await hostRequest(deps, await jwsBody(c), 'poll')
    const res = await signingDenials(deps, req.payload, () =>
      pollApproval(deps, req, sourceAddress(c), c.req.raw.signal),
    )
    c.header('Cache-Control', 'no-store')
    return c.json(res, res.status === 'released' ? 200 : 202)
  })
  r.post('/encryption', async (c) => {
    const req = await hostRequest(deps, await jwsBody(c), 'encryption')
    return c.json(await recordEncryption(deps, req, sourceAddress(c)))
  })
  return r
}
