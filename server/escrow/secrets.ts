/**
 * Bearer secrets (enrollment tokens `ue_…`, operator API tokens `uo_…`, operator enrollment
 * codes `oe_…`) and ids. Tokens carry 256 random bits, so a plain SHA-256 is a sufficient
 * at-rest hash; lookups go by hash and a constant-time compare confirms the match.
 */
import {
  b64uEncode,
  randomBytes,
  sha256Hex,
  timingSafeEqual,
  utf8,
} from '../../shared/crypto/bytes.ts'

export type TokenKind = 'ue' | 'uo' | 'oe'
const FORMAT: Record<TokenKind, RegExp> = {
  ue: /^ue_[A-Za-z0-9_-]{43}$/,
  uo: /^uo_[A-Za-z0-9_-]{43}$/,
  oe: /^oe_[A-Za-z0-9_-]{43}$/,
}

export function newToken(kind: TokenKind): string {
  return `${kind}_${b64uEncode(randomBytes(32))}`
}
export function tokenFormatOk(kind: TokenKind, token: string): boolean {
  return FORMAT[kind].test(token)
}
export function hashToken(token: string): Promise<string> {
  return sha256Hex(token)
}
export function hashesEqual(a: string, b: string): boolean {
  return timingSafeEqual(utf8(a), utf8(b))
}
export function newId(prefix: string, bytes = 16): string {
  return `${prefix}_${b64uEncode(randomBytes(bytes))}`
}
