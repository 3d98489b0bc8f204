/**
 * Cross-cutting HTTP concerns: request ids and access logs, the source address, JSON bodies
 * with a size bound, operator bearer authentication, and a per-address limiter on the public
 * host routes (nonce flooding would otherwise cost a database write each).
 */
import type { Context, MiddlewareHandler } from 'hono'
import type { IncomingMessage } from 'node:http'
import { UnlockdError } from '../../shared/errors.ts'
import { parseJwsBody } from '../../shared/protocol/messages.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import type { ServerDeps } from '../context.ts'
import type { OperatorRow } from '../store/store.ts'
import { readBoundedBody } from './body.ts'
import { AddressBuckets } from './rate-limit.ts'
import { hashToken, hashesEqual, newId, tokenFormatOk } from '../escrow/secrets.ts'

export type AppEnv = {
  Bindings: { incoming?: IncomingMessage }
  Variables: { reqId: string; operator: OperatorRow; errCode: string; clientAddr: string }
}

/** The client address for policy and limits: see client-address.ts (trusted proxies). */
export function sourceAddress(c: Context<AppEnv>): string {
  const resolved = c.get('clientAddr') as string | undefined
  if (resolved !== undefined) return resolved
  const addr = c.env?.incoming?.socket?.remoteAddress
  if (!addr) return '127.0.0.1' // app.request() in unit tests has no socket
  return addr.startsWith('::ffff:') ? addr.slice(7) : addr
}

export function accessLog(deps: ServerDeps): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const reqId = newId('req', 9)
    c.set('reqId', reqId)
    const t0 = performance.now()
    await next()
    c.header('X-Request-Id', reqId)
    deps.log.log('info', 'request', {
      reqId,
      method: c.req.method,
      path: new URL(c.req.url).pathname.replace(/\/(ue|uo)_[A-Za-z0-9_-]+/g, '/$1_…'),
      status: c.res.status,
      ms: Math.round((performance.now() - t0) * 10) / 10,
      ip: sourceAddress(c),
      code: c.get('errCode'),
    })
  }
}

/** A host name from a route parameter, checked before it reaches a use case. */
export function hostNameParam(v: string): string {
  if (!NAME_RE.test(v))
    throw new UnlockdError('bad_request', 'host name must be 1-64 chars of a-z 0-9 _ . -')
  return v
}

export const MAX_BODY = 256 * 1024

/** Parse a JSON body with a hard size limit; malformed JSON is a 400 with a code. */
export async function jsonBody(c: Context<AppEnv>, max = MAX_BODY): Promise<unknown> {
  const ct = c.req.header('content-type') ?? ''
  if (!/^application\/json(\s*;.*)?$/i.test(ct))
    throw new UnlockdError('bad_request', 'content-type must be application/json')
  const buf = await readBoundedBody(c, max)
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(buf)) as unknown
  } catch (cause) {
    throw new UnlockdError('bad_request', 'request body is not valid JSON', { cause })
  }
}

/** The `{ jws }` body every host-signed route takes. */
export async function jwsBody(c: Context<AppEnv>): Promise<string> {
  return parseJwsBody(await jsonBody(c)).jws
}

export function bearer(c: Context<AppEnv>): string | undefined {
  const h = c.req.header('authorization')
  if (!h) return undefined
  const m = /^Bearer ([A-Za-z0-9_-]{1,128})$/.exec(h)
  return m ? m[1] : ''
}

export function operatorAuth(deps: ServerDeps): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const token = bearer(c)
    if (token === undefined)
      throw new UnlockdError(
        'unauthorized',
        'operator API token required (Authorization: Bearer uo_…)',
      )
    if (!tokenFormatOk('uo', token))
      throw new UnlockdError('unauthorized', 'malformed operator token')
    const hash = await hashToken(token)
    const op = await deps.store.tx((t) => t.getOperatorByTokenHash(hash))
    if (!op || !hashesEqual(op.tokenHash, hash))
      throw new UnlockdError('unauthorized', 'operator token is not valid')
    c.set('operator', op)
    await next()
  }
}

/** The per-address guard's own status for `rate_limited` (see ERRORS.rate_limited). */
const GUARD_STATUS = 429

/** Token bucket per source address, in process memory: a DoS guard, not a policy. */
export function perAddressLimit(ratePerSec: number, burst: number): MiddlewareHandler<AppEnv> {
  const buckets = new AddressBuckets({ ratePerSec, burst })
  return async (c, next) => {
    if (!buckets.take(sourceAddress(c), performance.now() / 1000)) {
      c.header('Retry-After', '1')
      // 429 here, where a policy rate limit is 403 (ERRORS.rate_limited): kept per use, since
      // unifying the two statuses of this code is a protocol change.
      return c.json(
        { error: 'rate_limited', message: 'too many requests from this address; slow down' },
        GUARD_STATUS,
      )
    }
    await next()
    return undefined
  }
}

const hostLimiters = new WeakMap<ServerDeps, MiddlewareHandler<AppEnv>>()

/**
 * The limiter of the public host and Tang routes, from `settings.hostRateLimit` (one bucket
 * table per server, shared by both route groups); a pass-through when the setting is null.
 */
export function hostRateLimiter(deps: ServerDeps): MiddlewareHandler<AppEnv> {
  let m = hostLimiters.get(deps)
  if (m === undefined) {
    const lim = deps.settings.hostRateLimit
    m =
      lim === null
        ? async (_c, next) => {
            await next()
          }
        : perAddressLimit(lim.perSecond, lim.burst)
    hostLimiters.set(deps, m)
  }
  return m
}
