/**
 * The one storage interface. SQLite (embedded default) and PostgreSQL implement it; the same
 * store test suite runs against both. Every multi-step change runs inside `tx`, which is
 * serializable with respect to other transactions on the same database (SQLite: one writer;
 * PostgreSQL: one advisory lock per transaction, see postgres.ts), and single-use checks
 * (nonces, tokens, TOTP steps) are conditional updates, so they hold across server instances.
 */
import type { Policy } from '../../shared/protocol/policy.ts'
import type { AuditEntry, HostState, VolumeKind } from '../../shared/protocol/messages.ts'

export interface HostRow {
  id: string
  name: string
  state: HostState
  stateReason: string | null
  signingJwk: string
  sealingJwk: string
  policy: Policy
  createdAt: number
  lastSeenAt: number | null
  lastUnlockAt: number | null
  lastBootId: string | null
  lastSource: string | null
  /** Host served only through the Tang endpoints (no agent). */
  tang: boolean
}

export interface VolumeRow {
  hostId: string
  name: string
  kind: VolumeKind
  ref: string | null
  /** Version of the KEK that wraps `ct` (Tang key rows are wrapped the same way). */
  kekVersion: number
  iv: Uint8Array
  ct: Uint8Array
  createdAt: number
}

export interface TokenRow {
  id: string
  hash: string
  hostName: string
  cidrs: string[]
  createdAt: number
  expiresAt: number
  usedAt: number | null
  usedByHost: string | null
  revokedAt: number | null
  createdBy: string
}

export interface OperatorRow {
  id: string
  name: string
  tokenHash: string
  /** TOTP secret wrapped by the KEK (null until enrolled). */
  totpKekVersion: number | null
  totpIv: Uint8Array | null
  totpCt: Uint8Array | null
  /** Last TOTP time step accepted (replay guard). */
  totpLastStep: number | null
  createdAt: number
  removedAt: number | null
}

export interface UnlockEventRow {
  hostId: string
  at: number
  bootId: string
  source: string
  outcome: 'released' | 'denied' | 'approval'
  code: string | null
}

export interface ApprovalRow {
  id: string
  hostId: string
  volumes: string[]
  bootId: string
  source: string
  rule: string
  required: number
  createdAt: number
  expiresAt: number
  state: 'pending' | 'approved' | 'denied' | 'expired' | 'used'
  decidedAt: number | null
  reason: string | null
}

/** The latest reported state of one conversion (`unlockd encrypt`) on a host. */
export interface EncryptionRow {
  hostId: string
  volume: string
  kind: 'luks' | 'fscrypt'
  state: 'running' | 'done' | 'failed'
  phase: string
  doneBytes: number
  totalBytes: number
  bytesPerSecond: number | null
  etaSeconds: number | null
  message: string | null
  startedAt: number
  updatedAt: number
}

export type NonceResult = 'ok' | 'reused' | 'expired' | 'unknown'

export type NewAudit = Pick<AuditEntry, 'at' | 'actor' | 'action' | 'host' | 'detail'>

export interface StoreTx {
  // hosts
  getHost(id: string): Promise<HostRow | undefined>
  getHostByName(name: string): Promise<HostRow | undefined>
  listHosts(): Promise<HostRow[]>
  insertHost(row: HostRow): Promise<void>
  updateHost(id: string, patch: Partial<Omit<HostRow, 'id'>>): Promise<void>
  // volumes
  listVolumes(hostId: string): Promise<VolumeRow[]>
  upsertVolume(row: VolumeRow): Promise<void>
  deleteVolumes(hostId: string, names?: readonly string[]): Promise<number>
  /** Rows wrapped by a KEK older than `version` (for re-wrapping), bounded. */
  listVolumesWithKekBelow(version: number, limit: number): Promise<VolumeRow[]>
  countVolumesWithKekBelow(version: number): Promise<number>
  // enrollment tokens
  insertToken(row: TokenRow): Promise<void>
  getTokenByHash(hash: string): Promise<TokenRow | undefined>
  getToken(id: string): Promise<TokenRow | undefined>
  /** Atomically mark a token used; false when it was already used or revoked. */
  useToken(id: string, now: number, hostId: string): Promise<boolean>
  revokeToken(id: string, now: number): Promise<boolean>
  listTokens(): Promise<TokenRow[]>
  // nonces
  insertNonce(nonce: string, expiresAt: number): Promise<void>
  consumeNonce(nonce: string, now: number): Promise<NonceResult>
  purgeNonces(olderThan: number): Promise<number>
  // unlock history
  recordUnlock(row: UnlockEventRow): Promise<void>
  countUnlocks(hostId: string, since: number, outcome: UnlockEventRow['outcome']): Promise<number>
  recentBootIds(hostId: string, since: number): Promise<string[]>
  // operators
  insertOperator(row: OperatorRow): Promise<void>
  getOperatorByTokenHash(hash: string): Promise<OperatorRow | undefined>
  getOperatorByName(name: string): Promise<OperatorRow | undefined>
  getOperator(id: string): Promise<OperatorRow | undefined>
  listOperators(): Promise<OperatorRow[]>
  updateOperator(id: string, patch: Partial<Omit<OperatorRow, 'id'>>): Promise<void>
  /** Advance the TOTP replay guard only forward; false when `step` was already used. */
  claimTotpStep(operatorId: string, step: number): Promise<boolean>
  /** Failed-code bookkeeping for lockout. */
  recordTotpFailure(operatorId: string, at: number): Promise<void>
  countTotpFailures(operatorId: string, since: number): Promise<number>
  listOperatorsWithTotpKekBelow(version: number): Promise<OperatorRow[]>
  // approvals
  insertApproval(row: ApprovalRow): Promise<void>
  getApproval(id: string): Promise<ApprovalRow | undefined>
  listApprovals(state?: ApprovalRow['state']): Promise<ApprovalRow[]>
  updateApproval(id: string, patch: Partial<Omit<ApprovalRow, 'id'>>): Promise<void>
  /** Record one operator's vote; false if this operator already voted. */
  addApprovalVote(approvalId: string, operatorId: string, at: number): Promise<boolean>
  countApprovalVotes(approvalId: string): Promise<number>
  approvalVoters(approvalId: string): Promise<string[]>
  // audit
  appendAudit(entry: NewAudit): Promise<AuditEntry>
  listAudit(afterSeq: number, limit: number): Promise<AuditEntry[]>
  // encryption progress (one row per host and volume, replaced by each report)
  getEncryption(hostId: string, volume: string): Promise<EncryptionRow | undefined>
  upsertEncryption(row: EncryptionRow): Promise<void>
  /** One host's rows by volume, or every host's (by host, volume) when `hostId` is omitted. */
  listEncryption(hostId?: string): Promise<EncryptionRow[]>
  // small key/value for journals (shred, rotation) and schema facts
  getMeta(key: string): Promise<string | undefined>
  setMeta(key: string, value: string | undefined): Promise<void>
}

export interface TxOptions {
  /**
   * false: the commit need not survive a power loss (it may be lost, never torn or reordered
   * before a later durable commit). Only for rows whose loss is harmless, such as issued nonces
   * (the host fetches another). Default true. SQLite: synchronous=NORMAL for this commit.
   */
  durable?: boolean
  /**
   * The transaction touches only this host's rows (plus the single-use tables, whose operations
   * are atomic on their own). PostgreSQL then serializes it only against transactions of the
   * same host and against whole-store transactions, so instances unlock different hosts in
   * parallel. SQLite has one writer anyway and ignores it.
   */
  host?: string
}

export interface Store {
  readonly kind: 'sqlite' | 'postgres'
  /**
   * Run `fn` in one transaction: its return value commits; an exception rolls everything back
   * and is rethrown, except a refusal marked with `deny()` (denial.ts), which commits first.
   */
  tx<T>(fn: (t: StoreTx) => Promise<T>, opts?: TxOptions): Promise<T>
  /** Make deleted rows unrecoverable from the database files (SQLite: checkpoint + vacuum). */
  scrub(): Promise<void>
  close(): Promise<void>
}
