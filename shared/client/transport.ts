/**
 * How protocol clients reach a server. The client logic is pure and takes a `Transport`; the
 * agent supplies one with certificate pinning (node:https), tests and the operator CLI can use
 * `fetchTransport`.
 */
import { UnlockdError } from '../errors.ts'
import { parseErrorBody } from '../protocol/messages.ts'

export interface TransportRequest {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE'
  path: string
  body?: unknown
  bearer?: string
  /** Extra request headers (e.g. the operator's TOTP code in X-Unlockd-Totp). */
  headers?: Readonly<Record<string, string>>
  timeoutMs?: number
  signal?: AbortSignal
}
export interface TransportResponse {
  status: number
  body: unknown
}
export type Transport = (req: TransportRequest) => Promise<TransportResponse>

const MAX_RESPONSE = 1024 * 1024

/**
 * A transport over the platform `fetch`: no redirects followed, bounded time and size.
 * @example const t = fetchTransport('http://127.0.0.1:8443')
 */
export function fetchTransport(baseUrl: string): Transport {
  const base = baseUrl.replace(/\/+$/, '')
  return async (req) => {
    const headers: Record<string, string> = { ...req.headers, accept: 'application/json' }
    if (req.body !== undefined) headers['content-type'] = 'application/json'
    if (req.bearer) headers['authorization'] = `Bearer ${req.bearer}`
    const signals = [AbortSignal.timeout(req.timeoutMs ?? 10_000)]
    if (req.signal) signals.push(req.signal)
    let res: Response
    try {
      res = await fetch(base + req.path, {
        method: req.method,
        headers,
        redirect: 'manual',
        signal: AbortSignal.any(signals),
        ...(req.body === undefined ? {} : { body: JSON.stringify(req.body) }),
      })
    } catch (cause) {
      throw new UnlockdError(
        'server_unreachable',
        `cannot reach ${base}: ${cause instanceof Error ? (cause.cause instanceof Error ? cause.cause.message : cause.message) : 'network error'}`,
        { cause },
      )
    }
    const text = await res.text()
    if (text.length > MAX_RESPONSE)
      throw new UnlockdError('protocol_invalid', 'server response too large')
    let body: unknown = undefined
    if (text.length > 0) {
      try {
        body = JSON.parse(text)
      } catch (cause) {
        throw new UnlockdError(
          'protocol_invalid',
          `server answered ${res.status} with a body that is not JSON`,
          { cause },
        )
      }
    }
    return { status: res.status, body }
  }
}

/** Turn a non-success response into the server's own error code and sentence. */
export function errorFromResponse(res: TransportResponse, what: string): UnlockdError {
  const e = parseErrorBody(res.body)
  if (e) {
    const details: Record<string, string | number> = { status: res.status }
    if (e.rule) details['rule'] = e.rule
    return new UnlockdError(e.error, e.message, { details })
  }
  return new UnlockdError('protocol_invalid', `${what}: unexpected HTTP ${res.status}`, {
    details: { status: res.status },
  })
}
