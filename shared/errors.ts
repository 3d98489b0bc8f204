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

/**
 * Codes a server or agent may produce. Adding one is a protocol change: decide its entry in
 * `ERRORS` below (the compiler asks for it) and document it in README.
 */
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
  'approval_key_mismatch',
  'totp_invalid',
  'totp_required',
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
  'verdict_unsigned',
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

/** The HTTP statuses an error answer may carry. */
export type ErrorStatus = 400 | 401 | 403 | 404 | 405 | 409 | 413 | 429 | 500 | 503

/**
 * CLI exit class of a code (platform/cli/exit.ts maps it to the documented number): `refused`
 * by the server (policy, auth, approval denied), `unreachable` server or TLS failure, `pending`
 * approval, `usage` error, or any other runtime `error`.
 */
export type ExitClass = 'error' | 'usage' | 'refused' | 'unreachable' | 'pending'

/** Everything each edge decides about a code. Adding a code means deciding each of these. */
export interface ErrorInfo {
  /** HTTP status the server answers with (5xx bodies say only "see server logs"). */
  readonly status: ErrorStatus
  /** What the CLI exits with. */
  readonly exit: ExitClass
  /** The agent keeps waiting on an approval through this failure (a restarting server). */
  readonly retry: boolean
  /**
   * How informative the failure is when several servers answer and none releases: the agent
   * reports the highest. A decision (3) beats a malformed answer (2), a TLS pin failure (1) and
   * an unreachable server (0).
   */
  readonly rank: 0 | 1 | 2 | 3
  /** The sentence the CLI prints under the error, or null when the message already says it. */
  readonly remedy: string | null
}

const TOKEN_REMEDY = 'Create a fresh one-time token: `unlockd token create --host NAME`.'

/**
 * The one catalogue of error facts, one line per code: HTTP status, CLI exit class, whether the
 * agent keeps waiting through it, its rank among several servers' failures, and the remedy.
 */
export const ERRORS = {
  bad_request: { status: 400, exit: 'error', retry: false, rank: 3, remedy: null },
  payload_too_large: { status: 413, exit: 'error', retry: false, rank: 3, remedy: null },
  not_found: { status: 404, exit: 'error', retry: false, rank: 3, remedy: null },
  method_not_allowed: { status: 405, exit: 'error', retry: false, rank: 3, remedy: null },
  unauthorized: {
    status: 401,
    exit: 'refused',
    retry: false,
    rank: 3,
    remedy:
      'Set UNLOCKD_TOKEN (or UNLOCKD_TOKEN_FILE) to an operator API token printed by `unlockd server init` or `unlockd operator add`.',
  },
  forbidden: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  token_invalid: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: TOKEN_REMEDY },
  token_used: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: TOKEN_REMEDY },
  token_expired: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: TOKEN_REMEDY },
  token_revoked: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: TOKEN_REMEDY },
  host_unknown: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  bad_signature: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  nonce_reused: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  nonce_unknown: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  nonce_expired: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  iat_skew: {
    status: 400,
    exit: 'error',
    retry: false,
    rank: 3,
    remedy: 'Fix the clock on this host (systemd-timesyncd or chrony).',
  },
  cidr_denied: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  // A policy rate limit (a host over its unlock budget) is 403, while the per-address DoS guard in
  // server/http/middleware.ts answers 429 with the same code. Unifying the two is a protocol change
  // (agents and scripts see the status), so each use keeps its own status for now.
  rate_limited: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  not_yet_valid: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  expired: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  host_suspended: {
    status: 403,
    exit: 'refused',
    retry: false,
    rank: 3,
    remedy: 'An operator can run `unlockd host resume NAME` after checking why it was suspended.',
  },
  host_shredded: {
    status: 403,
    exit: 'refused',
    retry: false,
    rank: 3,
    remedy:
      'This host was crypto-shredded; its data cannot be unlocked. Re-provision it and enroll new keys.',
  },
  volume_unknown: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  clone_suspected: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  approval_pending: { status: 403, exit: 'pending', retry: false, rank: 3, remedy: null },
  approval_denied: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  approval_expired: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  approval_unknown: { status: 404, exit: 'error', retry: false, rank: 3, remedy: null },
  approval_used: { status: 409, exit: 'error', retry: false, rank: 3, remedy: null },
  approval_key_mismatch: {
    status: 403,
    exit: 'refused',
    retry: false,
    rank: 3,
    remedy:
      'Only the unlock attempt that asked can collect this approval: poll with the same agent run, or ask for a new unlock (and approval).',
  },
  totp_invalid: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  totp_required: {
    status: 403,
    exit: 'refused',
    retry: false,
    rank: 3,
    remedy: 'Give your current TOTP code: the CLI asks for it, or reads the first line of stdin.',
  },
  totp_replayed: { status: 403, exit: 'refused', retry: false, rank: 3, remedy: null },
  totp_locked: { status: 429, exit: 'refused', retry: false, rank: 3, remedy: null },
  already_approved: { status: 409, exit: 'error', retry: false, rank: 3, remedy: null },
  host_exists: { status: 409, exit: 'error', retry: false, rank: 3, remedy: null },
  operator_exists: { status: 409, exit: 'error', retry: false, rank: 3, remedy: null },
  operator_unknown: { status: 404, exit: 'error', retry: false, rank: 3, remedy: null },
  conflict: { status: 409, exit: 'error', retry: false, rank: 3, remedy: null },
  decryption_failed: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  integrity_failed: { status: 500, exit: 'error', retry: false, rank: 3, remedy: null },
  keystore_locked: {
    status: 503,
    exit: 'error',
    retry: false,
    rank: 3,
    remedy:
      'Give the keystore passphrase with --passphrase-file, UNLOCKD_PASSPHRASE, or a systemd credential named unlockd-passphrase.',
  },
  keystore_invalid: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  kek_missing: { status: 500, exit: 'error', retry: false, rank: 3, remedy: null },
  config_invalid: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  store_failed: { status: 500, exit: 'error', retry: false, rank: 3, remedy: null },
  server_unreachable: {
    status: 403,
    exit: 'unreachable',
    retry: true,
    rank: 0,
    remedy:
      'Check the server URL, that `unlockd server start` is running, and the network path (firewall, ip= on the kernel command line).',
  },
  tls_pin_mismatch: {
    status: 403,
    exit: 'unreachable',
    retry: false,
    rank: 1,
    remedy:
      'The server certificate does not match the pinned CA/key: re-copy the CA with --ca, or re-enroll if the server key was replaced on purpose.',
  },
  verdict_unsigned: {
    status: 403,
    exit: 'unreachable',
    retry: true,
    rank: 1,
    remedy:
      'A reply that would shred this host was not signed by a pinned server key and was ignored. If the server really shredded it, re-enroll; hosts enrolled before signed verdicts pin the key at their next successful unlock (or re-enroll them).',
  },
  protocol_invalid: { status: 400, exit: 'error', retry: true, rank: 2, remedy: null },
  volume_invalid: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  volume_busy: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  luks_failed: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  fscrypt_failed: { status: 403, exit: 'error', retry: false, rank: 3, remedy: null },
  fscrypt_unsupported: {
    status: 403,
    exit: 'error',
    retry: false,
    rank: 3,
    remedy: 'Enable the feature on the unmounted filesystem: tune2fs -O encrypt /dev/DEVICE',
  },
  not_enrolled: {
    status: 403,
    exit: 'error',
    retry: false,
    rank: 3,
    remedy: 'Run `unlockd enroll --server URL --token TOKEN ...` first.',
  },
  destructive_needs_force: {
    status: 403,
    exit: 'error',
    retry: false,
    rank: 3,
    remedy: 'Re-run interactively, or add --yes to confirm.',
  },
  usage: { status: 403, exit: 'usage', retry: false, rank: 3, remedy: null },
  internal: { status: 500, exit: 'error', retry: true, rank: 3, remedy: null },
} as const satisfies Record<UnlockdErrorCode, ErrorInfo>

/** The catalogue entry of `code`. */
export function errorInfo(code: UnlockdErrorCode): ErrorInfo {
  return ERRORS[code]
}

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
