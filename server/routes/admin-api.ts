/**
 * Operator API under /v1/admin: every route needs an operator bearer token. Routes that loosen a
 * control or release key material also need the caller's TOTP code in X-Unlockd-Totp.
 */
import { Hono } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import {
  parseAuditVerifyRequest,
  parseCreateToken,
  parsePolicyPatch,
} from '../../shared/protocol/messages.ts'
import { auditHead, sealAudit, verifyAudit } from '../escrow/audit-chain.ts'
import { headerCode, TOTP_HEADER } from '../approvals/factor.ts'
import type { ServerDeps } from '../context.ts'
import {
  createEnrollToken,
  listAudit,
  listHosts,
  listTokens,
  policyLoosens,
  revokeToken,
  setHostPolicy,
  setHostState,
  showHost,
} from '../escrow/admin.ts'
import { hostNameParam, jsonBody, operatorAuth, type AppEnv } from '../http/middleware.ts'
import { ACTION_HEADER } from '../../shared/protocol/actions.ts'
import { actionRoutes } from './action-api.ts'
import { approvalAdminRoutes } from './approval-api.ts'
import { gatedResponse } from './gate.ts'
import { passkeyAdminRoutes } from './passkey-admin-api.ts'
import { shredRoutes } from './shred-api.ts'
import { tangAdminRoutes } from './tang-admin-api.ts'

export function adminRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.use('*', operatorAuth(deps))
  const actor = (c: { get(k: 'operator'): { name: string } }) =>
    `operator:${c.get('operator').name}` as const

  r.get('/whoami', (c) => c.json({ operator: c.get('operator').name }))
  r.get('/hosts', async (c) => c.json({ hosts: await listHosts(deps) }))
  r.get('/hosts/:name', async (c) =>
    c.json(await showHost(deps, hostNameParam(c.req.param('name')))),
  )
  r.post('/hosts/:name/suspend', async (c) => {
    const body =
      c.req.header('content-length') && c.req.header('content-length') !== '0'
        ? await jsonBody(c)
        : {}
    const reason =
      typeof (body as { reason?: unknown }).reason === 'string'
        ? (body as { reason: string }).reason.slice(0, 200)
        : null
    return c.json(
      await setHostState(
        deps,
        c.get('operator'),
        hostNameParam(c.req.param('name')),
        'suspended',
        reason,
      ),
    )
  })
  // Resuming and loosening a policy lift controls: the caller's own code, and the host's quorum.
  r.post('/hosts/:name/resume', async (c) =>
    gatedResponse(
      deps,
      c,
      { kind: 'host.resume', host: hostNameParam(c.req.param('name')), payload: {} },
      headerCode(c.req.header(TOTP_HEADER)),
    ),
  )
  r.patch('/hosts/:name/policy', async (c) => {
    const name = hostNameParam(c.req.param('name'))
    const patch = parsePolicyPatch(await jsonBody(c))
    const code = headerCode(c.req.header(TOTP_HEADER))
    if (c.req.header(ACTION_HEADER) || (await policyLoosens(deps, name, patch)))
      return gatedResponse(deps, c, { kind: 'host.policy', host: name, payload: { patch } }, code)
    return c.json(await setHostPolicy(deps, c.get('operator'), name, patch, code))
  })

  r.post('/tokens', async (c) =>
    c.json(
      await createEnrollToken(deps, c.get('operator'), parseCreateToken(await jsonBody(c))),
      201,
    ),
  )
  r.get('/tokens', async (c) => c.json({ tokens: await listTokens(deps) }))
  r.delete('/tokens/:id', async (c) => {
    const id = c.req.param('id')
    if (!/^tok_[A-Za-z0-9_-]{12}$/.test(id))
      throw new UnlockdError('bad_request', 'token id must look like tok_XXXXXXXXXXXX')
    return c.json(await revokeToken(deps, actor(c), id))
  })

  r.get('/audit', async (c) => {
    const after = Number(c.req.query('after') ?? '0')
    const limit = Number(c.req.query('limit') ?? '1000')
    if (!Number.isSafeInteger(after) || after < 0)
      throw new UnlockdError('bad_request', 'after must be a non-negative integer')
    if (!Number.isSafeInteger(limit) || limit < 1 || limit > 10000)
      throw new UnlockdError('bad_request', 'limit must be 1..10000')
    await sealAudit(deps)
    return c.json({ entries: await listAudit(deps, after, limit) })
  })
  r.get('/audit/head', async (c) => c.json({ head: await auditHead(deps) }))
  r.post('/audit/verify', async (c) => {
    const { head } = parseAuditVerifyRequest(await jsonBody(c))
    return c.json(await verifyAudit(deps, head))
  })
  // Human approval and operators; behind the bearer check above.
  r.route('/', approvalAdminRoutes(deps))
  r.route('/', actionRoutes(deps))
  r.route('/', shredRoutes(deps))
  r.route('/', tangAdminRoutes(deps))
  r.route('/', passkeyAdminRoutes(deps))
  return r
}
