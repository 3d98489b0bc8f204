/**
 * What the server's use cases need, injected so tests can freeze time and swap stores.
 */
import type { EventEmitter } from 'node:events'
import type { Keystore } from './keys/keystore.ts'
import type { Logger } from './log.ts'
import type { Store } from './store/store.ts'

export interface ServerSettings {
  /** Nonce lifetime, seconds. */
  nonceTtl: number
  /** Allowed |now - iat| for signed requests, seconds. */
  iatSkew: number
  /** Approval request lifetime, seconds. */
  approvalTtl: number
  /** Long-poll hold time for approval waits and watch connections, seconds. */
  pollHold: number
  /** TOTP failures allowed per window before an operator is locked out. */
  totpMaxFailures: number
  totpFailureWindow: number
  /** Scheduled KEK rotation period, seconds (0 disables). */
  kekRotationPeriod: number
  /** Public base URL used in notification links (e.g. https://escrow.example:8443). */
  publicUrl: string | null
  webhook: { url: string; secret: string | null } | null
  /**
   * Per-source-address token bucket on the public host and Tang routes (a DoS guard, not a
   * policy); null disables it. Raise it when many hosts share one address (NAT) or for load tests.
   */
  hostRateLimit: { perSecond: number; burst: number } | null
  /** SHA-256 (hex) of the read-only `/metrics` scrape token; null disables the endpoint. */
  metricsTokenHash: string | null
  /**
   * CIDRs of reverse proxies whose X-Forwarded-For is believed: behind one of them the client
   * address is the rightmost forwarded hop that is not a trusted proxy. Empty: never believed.
   */
  trustedProxies: string[]
  /**
   * The audit chain head is sealed and exported (log line, webhook `audit.head`) once this many
   * entries were added or this many seconds passed since the last export, checked at each
   * maintenance tick.
   */
  auditHead: { everyEntries: number; everySeconds: number }
}

export const DEFAULT_SETTINGS: ServerSettings = {
  nonceTtl: 60,
  iatSkew: 120,
  approvalTtl: 15 * 60,
  pollHold: 25,
  totpMaxFailures: 5,
  totpFailureWindow: 15 * 60,
  kekRotationPeriod: 30 * 86400,
  publicUrl: null,
  webhook: null,
  hostRateLimit: { perSecond: 200, burst: 400 },
  metricsTokenHash: null,
  trustedProxies: [],
  auditHead: { everyEntries: 1000, everySeconds: 300 },
}

export interface ServerDeps {
  store: Store
  keystore: Keystore
  log: Logger
  /** Current time in whole seconds since the epoch. */
  now: () => number
  settings: ServerSettings
  /** Wakes long-polls when an approval or a shred order changes (in-process fast path). */
  events: EventEmitter
}
