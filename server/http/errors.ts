/**
 * The HTTP edge of errors: take a code's status from the catalogue (shared/errors.ts ERRORS), render `{ error, message[, rule] }`,
 * and log the cause with the request id. Unknown errors are 500 "see server logs" and nothing
 * more: no stack trace or internal message ever reaches a client.
 */
import type { Context } from 'hono'
import type { ContentfulStatusCode } from 'hono/utils/http-status'
import { ERRORS, UnlockdError, type UnlockdErrorCode } from '../../shared/errors.ts'
import type { ErrorBody } from '../../shared/protocol/messages.ts'
import type { Logger } from '../log.ts'

/** The status of `code`, from the one catalogue in shared/errors.ts. */
export function statusFor(code: UnlockdErrorCode): ContentfulStatusCode {
  return ERRORS[code].status
}

export function errorBody(err: UnlockdError): ErrorBody {
  const body: ErrorBody = { error: err.code, message: err.message }
  const rule = (err as UnlockdError & { rule?: unknown }).rule
  if (typeof rule === 'string') body.rule = rule
  const verdict = (err as UnlockdError & { verdict?: unknown }).verdict
  if (typeof verdict === 'string') body.verdict = verdict
  return body
}

/**
 * True when the client went away mid-request (connection reset while its body was being read,
 * or the request's signal fired): nothing failed on our side, and nobody is left to answer.
 */
export function isClientAbort(c: Context, err: unknown): boolean {
  if (err instanceof UnlockdError) return false
  const e = err as { code?: unknown; name?: unknown; message?: unknown } | null
  if (e !== null && typeof e === 'object') {
    if (e.code === 'ECONNRESET' || e.code === 'ERR_STREAM_PREMATURE_CLOSE') return true
    if (e.code === 'ABORT_ERR' || e.name === 'AbortError') return true
    if (e.message === 'aborted') return true
  }
  return c.env !== undefined && (c.req.raw.signal as AbortSignal | undefined)?.aborted === true
}

export function renderError(c: Context, err: unknown, log: Logger): Response {
  const reqId = c.get('reqId' as never) as string | undefined
  if (isClientAbort(c, err)) {
    c.set('errCode' as never, 'client_aborted' as never)
    log.log('info', 'request aborted by client', {
      reqId,
      err: err instanceof Error ? err.message : String(err),
    })
    // 499 in the access log, as reverse proxies record it; no client reads this response.
    return c.body(null, 499 as ContentfulStatusCode)
  }
  if (err instanceof UnlockdError) {
    const status = statusFor(err.code)
    if (status >= 500) {
      log.log('error', 'request failed', {
        reqId,
        code: err.code,
        err: err.message,
        cause: err.cause instanceof Error ? err.cause.message : undefined,
      })
      return c.json(
        { error: err.code, message: 'internal error: see server logs' } satisfies ErrorBody,
        status,
      )
    }
    c.set('errCode' as never, err.code as never)
    return c.json(errorBody(err), status)
  }
  log.log('error', 'unhandled error', {
    reqId,
    err: err instanceof Error ? `${err.name}: ${err.message}` : String(err),
    stack: err instanceof Error ? err.stack?.split('\n').slice(0, 6).join(' | ') : undefined,
  })
  return c.json(
    { error: 'internal', message: 'internal error: see server logs' } satisfies ErrorBody,
    500,
  )
}
