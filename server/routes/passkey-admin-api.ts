/**
 * POST /v1/admin/operators/:name/passkey { code } → { operator, url, expiresAt }: a one-time
 * link for registering the calling operator's own passkey on the phone page (passkeys.ts).
 */
import { Hono } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import { TOTP_CODE_RE } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { issuePasskeyLink } from '../approvals/passkeys.ts'
import { jsonBody, type AppEnv } from '../http/middleware.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'

export function passkeyAdminRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.post('/operators/:name/passkey', async (c) => {
    const name = c.req.param('name')
    if (!NAME_RE.test(name)) throw new UnlockdError('bad_request', 'that is not an operator name')
    const code = ((await jsonBody(c)) as { code?: unknown }).code
    if (typeof code !== 'string' || !TOTP_CODE_RE.test(code))
      throw new UnlockdError('totp_invalid', 'a passkey link needs your current TOTP code')
    return c.json(await issuePasskeyLink(deps, c.get('operator'), name, code), 201)
  })
  return r
}
