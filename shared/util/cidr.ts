/**
 * IPv4/IPv6 CIDR parsing and matching for source-network policy. IPv4-mapped IPv6 addresses
 * (`::ffff:10.0.0.1`, what Node reports on dual-stack sockets) match IPv4 ranges.
 */

export interface Cidr {
  readonly family: 4 | 6
  readonly bytes: Uint8Array
  readonly prefix: number
  readonly text: string
}

function parseV4(s: string): Uint8Array | undefined {
  const parts = s.split('.')
  if (parts.length !== 4) return undefined
  const out = new Uint8Array(4)
  for (let i = 0; i < 4; i++) {
    const p = parts[i] as string
    if (!/^(0|[1-9]\d{0,2})$/.test(p)) return undefined
    const n = Number(p)
    if (n > 255) return undefined
    out[i] = n
  }
  return out
}

function parseV6(s: string): Uint8Array | undefined {
  if (s.length > 45 || !/^[0-9a-fA-F:.]+$/.test(s)) return undefined
  let tail: Uint8Array | undefined
  let text = s
  const lastColon = s.lastIndexOf(':')
  if (s.includes('.')) {
    tail = parseV4(s.slice(lastColon + 1))
    if (!tail) return undefined
    text = s.slice(0, lastColon + 1) + '0:0'
  }
  const halves = text.split('::')
  if (halves.length > 2) return undefined
  const groups = (h: string): string[] => (h === '' ? [] : h.split(':'))
  const head = groups(halves[0] as string)
  const rear = halves.length === 2 ? groups(halves[1] as string) : []
  const missing = 8 - head.length - rear.length
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined
  const all = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...rear]
  const out = new Uint8Array(16)
  for (let i = 0; i < 8; i++) {
    const g = all[i] as string
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined
    const n = parseInt(g, 16)
    out[i * 2] = n >> 8
    out[i * 2 + 1] = n & 0xff
  }
  if (tail) out.set(tail, 12)
  return out
}

/** Parse an address; IPv4-mapped IPv6 becomes IPv4. */
export function parseIp(text: string): { family: 4 | 6; bytes: Uint8Array } | undefined {
  const v4 = parseV4(text)
  if (v4) return { family: 4, bytes: v4 }
  const v6 = parseV6(text)
  if (!v6) return undefined
  const mapped = v6.slice(0, 10).every((b) => b === 0) && v6[10] === 0xff && v6[11] === 0xff
  return mapped ? { family: 4, bytes: v6.slice(12) } : { family: 6, bytes: v6 }
}

export function parseCidr(text: string): Cidr | undefined {
  if (typeof text !== 'string' || text.length > 50) return undefined
  const [addr, len, extra] = text.split('/')
  if (addr === undefined || extra !== undefined) return undefined
  const ip = parseIp(addr)
  if (!ip) return undefined
  const max = ip.family === 4 ? 32 : 128
  const prefix = len === undefined ? max : /^\d{1,3}$/.test(len) ? Number(len) : NaN
  if (!Number.isInteger(prefix) || prefix < 0 || prefix > max) return undefined
  return { family: ip.family, bytes: ip.bytes, prefix, text: `${addr}/${prefix}` }
}

export function cidrContains(cidr: Cidr, ip: string): boolean {
  const a = parseIp(ip)
  if (!a || a.family !== cidr.family) return false
  let bits = cidr.prefix
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff
    if (((a.bytes[i] as number) & mask) !== ((cidr.bytes[i] as number) & mask)) return false
  }
  return true
}

/** True when every address of `inner` is inside `outer` (same family, no shorter prefix). */
export function cidrCovers(outer: Cidr, inner: Cidr): boolean {
  if (outer.family !== inner.family || inner.prefix < outer.prefix) return false
  let bits = outer.prefix
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff
    if (((inner.bytes[i] as number) & mask) !== ((outer.bytes[i] as number) & mask)) return false
  }
  return true
}

/** True when `ip` is in any of the CIDR texts (which must already be valid). */
export function ipInAny(ip: string, cidrs: readonly string[]): boolean {
  return cidrs.some((c) => {
    const parsed = parseCidr(c)
    return parsed !== undefined && cidrContains(parsed, ip)
  })
}

export function isLoopback(ip: string): boolean {
  return ipInAny(ip, ['127.0.0.0/8', '::1/128'])
}
