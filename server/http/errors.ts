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
  return body
}

export function renderError(c: Context, err: unknown, log: Logger): Response {
  const reqId = c.get('reqId' as never) as string | undefined
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
