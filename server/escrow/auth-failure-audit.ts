/**
 * Failed host authentication (unknown host, bad signature, replayed or unknown nonce, bad
 * enrollment token) leaves an audit trace without letting a client flood the log: per
 * (reason, source address) at most one `host.auth_failure` entry a minute, carrying how many
 * failures it stands for. The first failure of a pair is written at once; later ones in the
 * same minute are counted and written as one entry when the minute has passed (on the next
 * failure of that pair, on the maintenance tick, or when the server stops). Past
 * `MAX_PAIRS` pairs in a minute, further sources of a reason share one pair with source "*".
 */
import { UnlockdError, type UnlockdErrorCode } from '../../shared/errors.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from './audit-log.ts'

export const AUDITED_AUTH_FAILURES: ReadonlySet<UnlockdErrorCode> = new Set<UnlockdErrorCode>([
  'host_unknown',
  'bad_signature',
  'nonce_reused',
  'nonce_unknown',
  'nonce_expired',
  'iat_skew',
  'token_invalid',
  'token_used',
  'token_expired',
  'token_revoked',
])

export const SUMMARY_WINDOW = 60
export const MAX_PAIRS = 256

interface Pair {
  reason: string
  source: string
  /** Start of the current window, seconds. */
  since: number
  /** Failures in the current window not yet written. */
  pending: number
}

class AuthFailureAuditor {
  readonly #pairs = new Map<string, Pair>()
  readonly deps: ServerDeps

  constructor(deps: ServerDeps) {
    this.deps = deps
  }

  async record(reason: string, source: string): Promise<void> {
    const now = this.deps.now()
    let key = `${reason} ${source}`
    let p = this.#pairs.get(key)
    if (p === undefined && this.#pairs.size >= MAX_PAIRS) {
      key = `${reason} *`
      p = this.#pairs.get(key)
      source = '*'
    }
    if (p === undefined) {
      this.#pairs.set(key, { reason, source, since: now, pending: 0 })
      await this.#write(now, reason, source, 1, now)
    } else if (now < p.since + SUMMARY_WINDOW) {
      p.pending += 1
    } else {
      const count = p.pending + 1
      const since = p.since
      p.since = now
      p.pending = 0
      await this.#write(now, reason, p.source, count, since)
    }
  }

  /** Write the counts of every window that has passed (or of all of them); forget idle pairs. */
  async flush(all = false): Promise<void> {
    const now = this.deps.now()
    for (const [key, p] of this.#pairs) {
      if (!all && now < p.since + SUMMARY_WINDOW) continue
      if (p.pending === 0) {
        this.#pairs.delete(key)
        continue
      }
      const { pending, since } = p
      p.since = now
      p.pending = 0
      await this.#write(now, p.reason, p.source, pending, since)
    }
  }

  async #write(
    now: number,
    reason: string,
    source: string,
    count: number,
    since: number,
  ): Promise<void> {
    try {
      await this.deps.store.tx((t) =>
        audit(t, now, 'anonymous', 'host.auth_failure', null, { reason, source, count, since }),
      )
    } catch (err) {
      // Losing a summary must not turn a refusal into a 500.
      this.deps.log.log('warn', 'auth failure audit not written', {
        reason,
        err: err instanceof Error ? err.message : String(err),
      })
    }
  }
}

const auditors = new WeakMap<ServerDeps, AuthFailureAuditor>()

function auditorOf(deps: ServerDeps): AuthFailureAuditor {
  let a = auditors.get(deps)
  if (a === undefined) {
    a = new AuthFailureAuditor(deps)
    auditors.set(deps, a)
  }
  return a
}

/** Record `err` if it is a host authentication failure; anything else is ignored. */
export async function auditAuthFailure(
  deps: ServerDeps,
  err: unknown,
  source: string,
): Promise<void> {
  if (err instanceof UnlockdError && AUDITED_AUTH_FAILURES.has(err.code))
    await auditorOf(deps).record(err.code, source)
}

/** Write pending counts whose minute has passed; `all` at shutdown writes every one. */
export async function flushAuthFailureAudit(deps: ServerDeps, all = false): Promise<void> {
  await auditors.get(deps)?.flush(all)
}
