/**
 * The one storage interface. SQLite (embedded default) and PostgreSQL implement it; the same
 * store test suite runs against both. Every multi-step change runs inside `tx`, which is
 * serializable with respect to other transactions on the same database (SQLite: one writer;
 * PostgreSQL: one advisory lock per transaction, see postgres.ts), and single-use checks
 * (nonces, tokens, TOTP steps) are conditional updates, so they hold across server instances.
 */
import type { Policy } from '../../shared/protocol/policy.ts'
import type { AuditEntry, HostState, VolumeKind } from '../../shared/protocol/messages.ts'
import type { AuditKeySource } from './sql-tx.ts'

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
  /**
   * The public X25519 key (`x`, base64url) of the unlock attempt that asked (v2); only a poll
   * signed with the same key collects the approval. Null for a v1 request.
   */
  epk: string | null
}

/**
 * A loosening operator action waiting for a quorum (server/approvals/quorum.ts). `approved`
 * waits for the requester to collect the result (escrow export, operator secrets); `done` and
 * `failed` are final once it ran.
 */
export interface ActionRow {
  id: string
  kind: string
  /** The affected host's name, or null for a fleet-wide action. */
  host: string | null
  /** The validated request, as JSON. */
  payload: Record<string, unknown>
  requesterId: string
  required: number
  /** Operators (ids) that held a factor when the action opened: the only ones who can vote. */
  eligible: string[]
  createdAt: number
  expiresAt: number
  state: 'pending' | 'approved' | 'denied' | 'expired' | 'done' | 'failed'
  decidedAt: number | null
  reason: string | null
}

/** One vote on a quorum action, with the voter as they stand now. */
export interface ActionVoteRow {
  operatorId: string
  name: string
  at: number
  removedAt: number | null
}

/**
 * A one-time operator enrollment code, stored by hash. `add`: the redeemer becomes the new
 * operator (API token and TOTP secret). `reset`: the redeemer, authenticated with the
 * operator's own API token, gets a new TOTP secret.
 */
export interface OperatorEnrollmentRow {
  codeHash: string
  operatorId: string
  kind: 'add' | 'reset'
  /** Name of the operator who opened it. */
  createdBy: string
  createdAt: number
  expiresAt: number
  usedAt: number | null
}

/** A WebAuthn credential registered by an operator on the phone page. */
export interface PasskeyRow {
  /** Credential id, base64url. */
  id: string
  operatorId: string
  /** COSE public key. */
  publicKey: Uint8Array
  /** Signature counter last seen (0 when the authenticator keeps none). */
  counter: number
  transports: string[]
  rpId: string
  createdAt: number
  lastUsedAt: number | null
}

/** A one-time passkey registration link (`/approve/register/TOKEN`), stored by hash. */
export interface PasskeyEnrollmentRow {
  tokenHash: string
  operatorId: string
  createdAt: number
  expiresAt: number
  usedAt: number | null
}

/** A WebAuthn challenge issued once, for one purpose and one thing (an approval or enrollment). */
export interface WebauthnChallengeRow {
  challenge: string
  purpose: 'register' | 'approve'
  /** Approval id, or the enrollment's token hash. */
  binding: string
  /** The operator the ceremony is for, when known when it starts. */
  operatorId: string | null
  expiresAt: number
}

/** Failures on the phone page for one scope (`op:ID` or `src:ADDRESS`). */
export interface PageFailureRow {
  scope: string
  failures: number
  lastAt: number
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

export interface AuditSeal {
  sealed: number
  head: { pos: number; seq: number; hash: string } | null
}

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
  // operator enrollments (one-time codes for an operator's own credentials)
  insertOperatorEnrollment(row: OperatorEnrollmentRow): Promise<void>
  getOperatorEnrollment(codeHash: string): Promise<OperatorEnrollmentRow | undefined>
  /** Atomically mark an enrollment used; false when it was already used. */
  useOperatorEnrollment(codeHash: string, now: number): Promise<boolean>
  /** The operator's unused, unexpired enrollment, if any (the newest). */
  openOperatorEnrollment(
    operatorId: string,
    now: number,
  ): Promise<OperatorEnrollmentRow | undefined>
  /** Drop the operator's unused enrollments (a new one replaces them); returns how many. */
  dropOperatorEnrollments(operatorId: string): Promise<number>
  /**
   * Delete the operator's votes on approval requests that are still pending; returns the ids
   * of the requests that lost a vote.
   */
  deletePendingApprovalVotes(operatorId: string): Promise<string[]>
  // passkeys (phone page)
  insertPasskey(row: PasskeyRow): Promise<void>
  getPasskey(id: string): Promise<PasskeyRow | undefined>
  listPasskeys(operatorId: string): Promise<PasskeyRow[]>
  /**
   * Record a use with the authenticator's new counter: only forward (or 0 with 0, for
   * authenticators without a counter); false when the stored counter is not below `counter`.
   */
  usePasskey(id: string, counter: number, at: number): Promise<boolean>
  insertPasskeyEnrollment(row: PasskeyEnrollmentRow): Promise<void>
  getPasskeyEnrollment(tokenHash: string): Promise<PasskeyEnrollmentRow | undefined>
  /** Atomically mark a registration link used; false when it was already used. */
  usePasskeyEnrollment(tokenHash: string, now: number): Promise<boolean>
  /** Delete the operator's passkeys and unused registration links; returns the passkeys deleted. */
  deleteOperatorPasskeys(operatorId: string): Promise<number>
  insertWebauthnChallenge(row: WebauthnChallengeRow): Promise<void>
  /** Take (delete) a challenge; undefined when unknown or already taken. Expiry is the caller's. */
  takeWebauthnChallenge(challenge: string): Promise<WebauthnChallengeRow | undefined>
  purgeWebauthnChallenges(olderThan: number): Promise<number>
  getPageFailures(scope: string): Promise<PageFailureRow | undefined>
  /** One more failure for `scope`; returns the new count. */
  recordPageFailure(scope: string, at: number): Promise<number>
  clearPageFailures(scope: string): Promise<void>
  // approvals
  insertApproval(row: ApprovalRow): Promise<void>
  getApproval(id: string): Promise<ApprovalRow | undefined>
  listApprovals(state?: ApprovalRow['state']): Promise<ApprovalRow[]>
  updateApproval(id: string, patch: Partial<Omit<ApprovalRow, 'id'>>): Promise<void>
  /** Record one operator's vote; false if this operator already voted. */
  addApprovalVote(approvalId: string, operatorId: string, at: number): Promise<boolean>
  /** Votes of operators not removed: a removed operator's vote no longer counts. */
  countApprovalVotes(approvalId: string): Promise<number>
  /** Names of the operators (not removed) who voted, in vote order. */
  approvalVoters(approvalId: string): Promise<string[]>
  // quorum actions
  insertAction(row: ActionRow): Promise<void>
  getAction(id: string): Promise<ActionRow | undefined>
  listActions(state?: ActionRow['state']): Promise<ActionRow[]>
  /** Move `id` from state `from` (atomically); false when it is no longer in `from`. */
  moveAction(
    id: string,
    from: ActionRow['state'],
    patch: Pick<ActionRow, 'state' | 'decidedAt'> & { reason?: string | null },
  ): Promise<boolean>
  /** Record one operator's vote; false if this operator already voted. */
  addActionVote(actionId: string, operatorId: string, at: number): Promise<boolean>
  /**
   * Delete the operator's votes on quorum actions that are still pending; returns the ids of
   * the actions that lost a vote.
   */
  deletePendingActionVotes(operatorId: string): Promise<string[]>
  /** Every vote in vote order, removed voters included (the caller decides what counts). */
  actionVotes(actionId: string): Promise<ActionVoteRow[]>
  // audit
  /** Append one entry, MAC'd with the store's audit key; chained later by `sealAudit`. */
  appendAudit(entry: NewAudit): Promise<AuditEntry>
  /**
   * Chain up to `limit` committed, unsealed entries (in sequence order) after the current head;
   * returns how many and the new head.
   */
  sealAudit(key: Uint8Array, limit: number): Promise<AuditSeal>
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
  /**
   * The work only reads, and needs no snapshot across its statements (one lookup). PostgreSQL
   * runs it as autocommit statements: no BEGIN, lock or COMMIT round trip. SQLite runs it on
   * the writer like any other (it may read what a batch member wrote, so it waits for that
   * batch's commit before it answers).
   */
  readOnly?: boolean
}

export interface Store {
  readonly kind: 'sqlite' | 'postgres'
  /**
   * Run `fn` in one transaction: its return value commits; an exception rolls everything back
   * and is rethrown, except a refusal marked with `deny()` (denial.ts), which commits first.
   */
  tx<T>(fn: (t: StoreTx) => Promise<T>, opts?: TxOptions): Promise<T>
  /** The audit MAC key for every later append (the server sets it from its keystore). */
  useAuditKey(key: AuditKeySource): void
  /** Make deleted rows unrecoverable from the database files (SQLite: checkpoint + vacuum). */
  scrub(): Promise<void>
  close(): Promise<void>
  /** Counters since opening: transactions, commits, commits that synced, database round trips. */
  commitStats(): CommitStats
}

export interface CommitStats {
  transactions: number
  commits: number
  syncedCommits: number
  /** PostgreSQL only: statements (and statement batches) sent; 0 on SQLite. */
  roundTrips: number
}
