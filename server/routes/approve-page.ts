/**
 * `/approve/:id`: the phone-friendly approval page (GET shows the request, POST approves or
 * denies with an operator name and TOTP code). Rendering and the CSRF scheme are in
 * server/approvals/page.ts; the decisions are the same use cases as the admin API.
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
  renderApprovalPage,
  renderMessagePage,
  type PageNotice,
} from '../approvals/page.ts'
import { readBoundedBody } from '../http/body.ts'
import { statusFor } from '../http/errors.ts'
import { perAddressLimit, type AppEnv } from '../http/middleware.ts'

const MAX_FORM = 4096

/** What the page says for each refusal; name and code failures read the same (no oracle). */
function pageMessage(err: UnlockdError): string {
  switch (err.code) {
    case 'totp_invalid':
    case 'operator_unknown':
    case 'forbidden':
      return 'Operator name or code is not valid.'
    case 'totp_replayed':
      return 'That code was already used. Wait for the next code and try again.'
    case 'totp_locked':
      return 'Too many wrong codes for this operator. Try again later.'
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
    c.header('Content-Security-Policy', PAGE_CSP)
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

  const page = (
    c: Context<AppEnv>,
    a: ApprovalView,
    status: ContentfulStatusCode,
    notice?: PageNotice,
    operator = '',
  ) => c.html(renderApprovalPage(a, deps.now(), csrfFor(c, a.id), notice, operator), status)
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
    const code = (form.get('code') ?? '').replace(/\s+/g, '')
    const action = form.get('action')
    const reason = (form.get('reason') ?? '').trim()
    if (action !== 'approve' && action !== 'deny')
      return page(c, a, 400, { kind: 'error', text: 'Choose Approve or Deny.' }, operator)
    if (!NAME_RE.test(operator) || !TOTP_CODE_RE.test(code))
      return page(
        c,
        a,
        400,
        { kind: 'error', text: 'Enter your operator name and the 6-digit code.' },
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
      const op = await deps.store.tx((t) => t.getOperatorByName(operator))
      if (!op) throw new UnlockdError('totp_invalid', 'unknown operator')
      if (action === 'approve') {
        const after = await approveRequest(deps, op, a.id, code, 'page')
        // The state banner says it all once approved; a partial approval gets a word of its own.
        if (after.state === 'approved') return page(c, after, 200)
        return page(c, after, 200, {
          kind: 'pending',
          text: `Your approval is recorded (${after.approvedBy.length} of ${after.required}). Another operator must approve.`,
        })
      }
      return page(c, await denyRequest(deps, op, a.id, reason || null, code, 'page'), 200)
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
