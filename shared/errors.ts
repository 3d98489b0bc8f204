/**
 * The one error type of unlockd. Every failure that crosses a module boundary, the wire or the
 * CLI carries a stable `code` (part of the protocol: scripts and agents branch on it) and a human
 * sentence. Causes stay in `cause` and go to logs, never to the wire.
 *
 * Caller bugs (a wrong option passed by our own code) throw TypeError/RangeError instead.
 *
 * @example
 * ```ts
 * throw new UnlockdError('host_suspended', 'host web-1 is suspended')
 * ```
 */

/** Codes a server or agent may produce. Adding one is a protocol change: document it in README. */
export const ERROR_CODES = [
  // request shape
  'bad_request',
  'payload_too_large',
  'not_found',
  'method_not_allowed',
  // authentication / authorization
  'unauthorized',
  'forbidden',
  'token_invalid',
  'token_used',
  'token_expired',
  'token_revoked',
  // unlock decisions
  'host_unknown',
  'bad_signature',
  'nonce_reused',
  'nonce_unknown',
  'nonce_expired',
  'iat_skew',
  'cidr_denied',
  'rate_limited',
  'not_yet_valid',
  'expired',
  'host_suspended',
  'host_shredded',
  'volume_unknown',
  'clone_suspected',
  // approvals
  'approval_pending',
  'approval_denied',
  'approval_expired',
  'approval_unknown',
  'approval_used',
  'totp_invalid',
  'totp_replayed',
  'totp_locked',
  'already_approved',
  // enrollment / admin
  'host_exists',
  'operator_exists',
  'operator_unknown',
  'conflict',
  // keys and data
  'decryption_failed',
  'integrity_failed',
  'keystore_locked',
  'keystore_invalid',
  'kek_missing',
  'config_invalid',
  'store_failed',
  // agent side
  'server_unreachable',
  'tls_pin_mismatch',
  'protocol_invalid',
  'volume_invalid',
  'volume_busy',
  'luks_failed',
  'fscrypt_failed',
  'fscrypt_unsupported',
  'not_enrolled',
  'destructive_needs_force',
  'usage',
  'internal',
] as const

export type UnlockdErrorCode = (typeof ERROR_CODES)[number]

const CODE_SET: ReadonlySet<string> = new Set(ERROR_CODES)

/** True when `value` is one of our stable codes (used when parsing a server's error body). */
export function isErrorCode(value: unknown): value is UnlockdErrorCode {
  return typeof value === 'string' && CODE_SET.has(value)
}

export interface UnlockdErrorOptions {
  cause?: unknown
  /** Extra machine-readable facts safe to show to the caller (never secrets). */
  details?: Readonly<Record<string, string | number | boolean | null>>
}

export class UnlockdError extends Error {
  readonly code: UnlockdErrorCode
  readonly details: Readonly<Record<string, string | number | boolean | null>> | undefined

  constructor(code: UnlockdErrorCode, message: string, options: UnlockdErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'UnlockdError'
    this.code = code
    this.details = options.details
  }
}

/** Narrowing helper: `isUnlockdError(e, 'nonce_reused')`. */
export function isUnlockdError(err: unknown, code?: UnlockdErrorCode): err is UnlockdError {
  return err instanceof UnlockdError && (code === undefined || err.code === code)
}

/** Message of anything thrown, for logs. Never use it for wire bodies. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message
  return String(err)
}
