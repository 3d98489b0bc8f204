/**
 * `/approve/:id`: the phone-friendly approval page (GET shows the request; the passkey button
 * approves through `/approve/:id/passkey/{options,verify}`; the form POST approves or denies
 * after an API-token login with a TOTP code). `/approve/register/:token` registers a passkey
 * from a one-time link. Rendering and the CSRF scheme are in server/approvals/page.ts, the
 * page login and its backoff in page-auth.ts, WebAuthn in passkeys.ts; the decisions are the
 * same use cases as the admin API.
 */
import { Hono, type Context } from 'hono'
import { getCookie, setCookie } from 'hono/cookie'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import { UnlockdError } from '../../shared/errors.ts'
import { APPROVAL_ID_RE, TOTP_CODE_RE, type ApprovalView } from '../../shared/protocol/messages.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import type { ServerDeps } from '../context.ts'
import { approveRequest, denyRequest, showApproval } from '../approvals/decide.ts'
import {
  CSRF_COOKIE,
  CSRF_COOKIE_SECURE,
  PAGE_CSP,
  csrfCookieOk,
  csrfToken,
  csrfValid,
  newCsrfCookie,
  newNonce,
  pageCspWithScript,
  renderApprovalPage,
  renderMessagePage,
  renderRegisterPage,
  type PageNotice,
} from '../approvals/page.ts'
import {
  checkSourceBackoff,
  countSourceFailure,
  pageTokenLogin,
  pageTotpFactor,
} from '../approvals/page-auth.ts'
import {
  approvalOptions,
  finishRegistration,
  passkeyLinkOperator,
  passkeysEnabled,
  registrationOptions,
  verifyApprovalAssertion,
} from '../approvals/passkeys.ts'
import { readBoundedBody } from '../http/body.ts'
import { statusFor } from '../http/errors.ts'
import { perAddressLimit, sourceAddress, type AppEnv } from '../http/middleware.ts'

const MAX_FORM = 4096
const MAX_JSON = 16 * 1024

/** What the page says for each refusal; name, token and code failures read the same (no oracle). */
function pageMessage(err: UnlockdError): string {
  switch (err.code) {
    case 'totp_invalid':
    case 'totp_replayed':
    case 'operator_unknown':
    case 'unauthorized':
      return 'Operator name, API token or code is not valid.'
    case 'forbidden':
      return err.message.charAt(0).toUpperCase() + err.message.slice(1) + '.'
    case 'rate_limited':
    case 'totp_locked':
      return err.message.charAt(0).toUpperCase() + err.message.slice(1) + '.'
    case 'approval_expired':
      return 'This request has expired. The host must ask again.'
    case 'already_approved':
      return err.message.charAt(0).toUpperCase() + err.message.slice(1) + '.'
    case 'approval_used':
      return 'This request was already approved and used.'
    case 'approval_denied':
      return 'This request was already denied.'
    default:
      return 'The request could not be completed.'
  }
}

export function approvePageRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  r.use('*', perAddressLimit(5, 30))
  r.use('*', async (c, next) => {
    await next()
    // A page with the passkey script set its own nonce CSP; everything else gets no script.
    if (!c.res.headers.has('Content-Security-Policy')) c.header('Content-Security-Policy', PAGE_CSP)
    c.header('X-Frame-Options', 'DENY')
    c.header('Cache-Control', 'no-store')
    c.header('Cross-Origin-Opener-Policy', 'same-origin')
    c.header('Cross-Origin-Resource-Policy', 'same-origin')
  })

  const secure = (c: Context<AppEnv>): boolean =>
    new URL(c.req.url).protocol === 'https:' || (deps.settings.publicUrl ?? '').startsWith('https:')
  const cookieName = (c: Context<AppEnv>): string => (secure(c) ? CSRF_COOKIE_SECURE : CSRF_COOKIE)

  /** Reuse the browser's CSRF cookie (several tabs keep working) or set a fresh one. */
  const csrfFor = (c: Context<AppEnv>, id: string): string => {
    let v = getCookie(c, cookieName(c))
    if (!csrfCookieOk(v)) {
      v = newCsrfCookie()
      setCookie(c, cookieName(c), v, {
        path: secure(c) ? '/' : '/approve',
        httpOnly: true,
        sameSite: 'Strict',
        secure: secure(c),
        maxAge: 12 * 3600,
      })
    }
    return csrfToken(deps.keystore, id, v)
  }

  /** A fresh nonce for this response's one script (the CSP header above picks it up). */
  const scriptNonce = (c: Context<AppEnv>): string => {
    const n = newNonce()
    c.header('Content-Security-Policy', pageCspWithScript(n))
    return n
  }
  const page = (
    c: Context<AppEnv>,
    a: ApprovalView,
    status: ContentfulStatusCode,
    notice?: PageNotice,
    operator = '',
  ) =>
    c.html(
      renderApprovalPage(
        a,
        deps.now(),
        csrfFor(c, a.id),
        notice,
        operator,
        passkeysEnabled(deps) && a.state === 'pending' ? scriptNonce(c) : undefined,
      ),
      status,
    )
  const message = (c: Context<AppEnv>, status: ContentfulStatusCode, title: string, text: string) =>
    c.html(renderMessagePage(title, text), status)

  const load = async (id: string): Promise<ApprovalView | undefined> => {
    if (!APPROVAL_ID_RE.test(id)) return undefined
    try {
      return await showApproval(deps, id)
    } catch (err) {
      if (err instanceof UnlockdError && err.code === 'approval_unknown') return undefined
      throw err
    }
  }

  /** Only this page may call its JSON endpoints: same origin, JSON body, bounded. */
  const jsonFromPage = async (c: Context<AppEnv>): Promise<Record<string, unknown>> => {
    const site = c.req.header('sec-fetch-site')
    if (site !== undefined && site !== 'same-origin')
      throw new UnlockdError('forbidden', 'this request must come from its own page')
    if (!/^application\/json(\s*;.*)?$/i.test(c.req.header('content-type') ?? ''))
      throw new UnlockdError('bad_request', 'send JSON from the page')
    const text = new TextDecoder().decode(await readBoundedBody(c, MAX_JSON))
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {
      throw new UnlockdError('bad_request', 'send JSON from the page')
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body))
      throw new UnlockdError('bad_request', 'send JSON from the page')
    return body as Record<string, unknown>
  }
  /** JSON endpoint: refusals answer `{ message }` with their status and count for the source. */
  const jsonRoute =
    (fn: (c: Context<AppEnv>) => Promise<Record<string, unknown>>) =>
    async (c: Context<AppEnv>) => {
      try {
        return c.json(await fn(c))
      } catch (err) {
        if (!(err instanceof UnlockdError) || statusFor(err.code) >= 500) throw err
        if (err.code === 'forbidden' || err.code === 'token_invalid')
          await countSourceFailure(deps, sourceAddress(c))
        return c.json(
          { error: err.code, message: pageMessage(err) },
          statusFor(err.code) as ContentfulStatusCode,
        )
      }
    }

  r.get('/register/:token', async (c) => {
    if (!passkeysEnabled(deps))
      return message(c, 404, 'Passkeys are off', 'This server has no public URL configured.')
    const op = await passkeyLinkOperator(deps, c.req.param('token'))
    if (!op)
      return message(
        c,
        404,
        'Link not valid',
        'This registration link was used, has expired or never existed. Run `unlockd operator passkey NAME` for a new one.',
      )
    return c.html(renderRegisterPage(op.name, c.req.param('token'), scriptNonce(c)), 200)
  })
  r.post(
    '/register/:token/options',
    jsonRoute(async (c) => {
      await jsonFromPage(c)
      await checkSourceBackoff(deps, sourceAddress(c))
      return { options: await registrationOptions(deps, c.req.param('token') ?? '') }
    }),
  )
  r.post(
    '/register/:token/verify',
    jsonRoute(async (c) => {
      const body = await jsonFromPage(c)
      await checkSourceBackoff(deps, sourceAddress(c))
      const done = await finishRegistration(
        deps,
        c.req.param('token') ?? '',
        body['credential'] as Parameters<typeof finishRegistration>[2],
      )
      return {
        ...done,
        message: `Passkey registered for ${done.operator}. Approval pages of this server now accept it.`,
      }
    }),
  )

  /** The approval for a JSON call, after the CSRF check; refusals as UnlockdError. */
  const pendingFor = async (c: Context<AppEnv>, body: Record<string, unknown>) => {
    const a = await load(c.req.param('id') ?? '')
    if (!a) throw new UnlockdError('approval_unknown', 'there is no approval request with this id')
    const csrf = typeof body['csrf'] === 'string' ? body['csrf'] : undefined
    if (!csrfValid(deps.keystore, a.id, getCookie(c, cookieName(c)), csrf))
      throw new UnlockdError('bad_request', 'this page expired; reload it and try again')
    return a
  }
  r.post(
    '/:id/passkey/options',
    jsonRoute(async (c) => {
      const body = await jsonFromPage(c)
      const a = await pendingFor(c, body)
      await checkSourceBackoff(deps, sourceAddress(c))
      const name = typeof body['operator'] === 'string' ? body['operator'] : undefined
      if (name !== undefined && !NAME_RE.test(name))
        throw new UnlockdError('bad_request', 'that is not an operator name')
      return { options: await approvalOptions(deps, a.id, name) }
    }),
  )
  r.post(
    '/:id/passkey/verify',
    jsonRoute(async (c) => {
      const body = await jsonFromPage(c)
      const a = await pendingFor(c, body)
      await checkSourceBackoff(deps, sourceAddress(c))
      const { op, factor } = await verifyApprovalAssertion(
        deps,
        a.id,
        body['credential'] as Parameters<typeof verifyApprovalAssertion>[2],
      )
      const after = await approveRequest(deps, op, a.id, factor, 'page')
      return {
        state: after.state,
        message:
          after.state === 'approved'
            ? `Approved by ${after.approvedBy.join(', ')}.`
            : `Your approval is recorded (${after.approvedBy.length} of ${after.required}). Another operator must approve.`,
      }
    }),
  )

  r.get('/:id', async (c) => {
    const a = await load(c.req.param('id'))
    if (!a) return message(c, 404, 'No such request', 'There is no approval request with this id.')
    return page(c, a, 200)
  })

  r.post('/:id', async (c) => {
    const id = c.req.param('id')
    // Browsers say where a request comes from; only this page may post to it.
    const site = c.req.header('sec-fetch-site')
    if (site !== undefined && site !== 'same-origin' && site !== 'none')
      return message(c, 403, 'Refused', 'This form must be sent from its own page.')
    if (!/^application\/x-www-form-urlencoded(\s*;.*)?$/i.test(c.req.header('content-type') ?? ''))
      return message(c, 400, 'Bad request', 'Send the form from the approval page.')
    let buf: Uint8Array
    try {
      buf = await readBoundedBody(c, MAX_FORM)
    } catch (err) {
      if (!(err instanceof UnlockdError) || err.code !== 'payload_too_large') throw err
      return message(c, 413, 'Too large', 'Send the form from the approval page.')
    }
    const form = new URLSearchParams(new TextDecoder().decode(buf))
    const a = await load(id)
    if (!a) return message(c, 404, 'No such request', 'There is no approval request with this id.')
    if (
      !csrfValid(deps.keystore, a.id, getCookie(c, cookieName(c)), form.get('csrf') ?? undefined)
    ) {
      return page(c, a, 403, {
        kind: 'error',
        text: 'This form expired or did not come from this page. Reload the page and try again.',
      })
    }

    const operator = (form.get('operator') ?? '').trim().toLowerCase()
    const token = (form.get('token') ?? '').trim()
    const code = (form.get('code') ?? '').replace(/\s+/g, '')
    const action = form.get('action')
    const reason = (form.get('reason') ?? '').trim()
    if (action !== 'approve' && action !== 'deny')
      return page(c, a, 400, { kind: 'error', text: 'Choose Approve or Deny.' }, operator)
    if (!NAME_RE.test(operator) || token === '' || token.length > 64 || !TOTP_CODE_RE.test(code))
      return page(
        c,
        a,
        400,
        { kind: 'error', text: 'Enter your operator name, your API token and the 6-digit code.' },
        NAME_RE.test(operator) ? operator : '',
      )
    if (reason.length > 200 || /\p{Cc}/u.test(reason))
      return page(
        c,
        a,
        400,
        { kind: 'error', text: 'The reason must be at most 200 plain characters.' },
        operator,
      )

    try {
      // The token login comes first; the code is looked at only after it (page-auth.ts).
      const source = sourceAddress(c)
      const op = await pageTokenLogin(deps, operator, token, source)
      const factor = pageTotpFactor(deps, code, source)
      if (action === 'approve') {
        const after = await approveRequest(deps, op, a.id, factor, 'page')
        // The state banner says it all once approved; a partial approval gets a word of its own.
        if (after.state === 'approved') return page(c, after, 200)
        return page(c, after, 200, {
          kind: 'pending',
          text: `Your approval is recorded (${after.approvedBy.length} of ${after.required}). Another operator must approve.`,
        })
      }
      return page(c, await denyRequest(deps, op, a.id, reason || null, factor, 'page'), 200)
    } catch (err) {
      if (!(err instanceof UnlockdError) || statusFor(err.code) >= 500) throw err
      const now = await load(a.id)
      return page(
        c,
        now ?? a,
        statusFor(err.code),
        { kind: 'error', text: pageMessage(err) },
        operator,
      )
    }
  })
  return r
}
