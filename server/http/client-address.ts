/**
 * The client address that source-address policy (CIDRs) and the per-address limiter see.
 * It is the TCP peer, unless the peer is one of `settings.trustedProxies`: then it is the
 * rightmost X-Forwarded-For hop that is not itself a trusted proxy (each proxy appends the
 * address it saw, so everything left of that hop was written by the client and proves nothing).
 * With no trusted proxies configured, X-Forwarded-For is never read.
 */
import type { MiddlewareHandler } from 'hono'
import { cidrContains, parseCidr, parseIp, type Cidr } from '../../shared/util/cidr.ts'
import type { AppEnv } from './middleware.ts'

/** Hops examined from the right; a longer chain is cut there (bounded work per request). */
const MAX_HOPS = 32

function normalize(addr: string): string {
  return addr.startsWith('::ffff:') && addr.includes('.') ? addr.slice(7) : addr
}

/** One X-Forwarded-For entry as an address, or undefined when it is not one. */
function hopAddress(entry: string): string | undefined {
  let s = entry.trim()
  const bracketed = /^\[([0-9a-fA-F:.]+)\](?::\d{1,5})?$/.exec(s)
  if (bracketed) s = bracketed[1] as string
  else if (/^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$/.test(s)) s = s.slice(0, s.lastIndexOf(':'))
  return parseIp(s) === undefined ? undefined : normalize(s)
}

export function clientAddressOf(
  peer: string,
  forwardedFor: string | undefined,
  trusted: readonly Cidr[],
): string {
  const isTrusted = (a: string): boolean => trusted.some((c) => cidrContains(c, a))
  let addr = normalize(peer)
  if (trusted.length === 0 || forwardedFor === undefined || !isTrusted(addr)) return addr
  const hops = forwardedFor.split(',').slice(-MAX_HOPS).reverse()
  for (const entry of hops) {
    const hop = hopAddress(entry)
    // A hop a trusted proxy wrote that is not an address: trust stops at that proxy.
    if (hop === undefined) return addr
    addr = hop
    if (!isTrusted(hop)) return hop
  }
  return addr
}

export function parseTrustedProxies(cidrs: readonly string[]): Cidr[] {
  return cidrs.map((text) => {
    const c = parseCidr(text)
    if (c === undefined) throw new RangeError(`trusted proxy ${text} is not a CIDR`)
    return c
  })
}

/**
 * Resolve the client address once per request into `clientAddr` (read by `sourceAddress`).
 * app.request() in unit tests has no socket: its peer is loopback.
 */
export function clientAddress(trustedProxies: readonly string[]): MiddlewareHandler<AppEnv> {
  const trusted = parseTrustedProxies(trustedProxies)
  return async (c, next) => {
    const peer = c.env?.incoming?.socket?.remoteAddress ?? '127.0.0.1'
    c.set('clientAddr', clientAddressOf(peer, c.req.header('x-forwarded-for'), trusted))
    await next()
  }
}
