/**
 * Versioned migrations, applied in order at start. Each entry has the SQLite and PostgreSQL
 * spelling of the same change. Never edit a shipped migration; append a new one.
 */
export interface Migration {
  sqlite: string
  postgres: string
}

const v1Common = (blob: string, bigint: string): string => `
CREATE TABLE hosts (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('active','suspended','shredded')),
  state_reason TEXT,
  signing_jwk TEXT NOT NULL,
  sealing_jwk TEXT NOT NULL,
  policy TEXT NOT NULL,
  created_at ${bigint} NOT NULL,
  last_seen_at ${bigint},
  last_unlock_at ${bigint},
  last_boot_id TEXT,
  last_source TEXT,
  tang INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX hosts_live_name ON hosts (name) WHERE state <> 'shredded';
CREATE TABLE volumes (
  host_id TEXT NOT NULL REFERENCES hosts(id),
  name TEXT NOT NULL,
  kind TEXT NOT NULL,
  ref TEXT,
  kek_version INTEGER NOT NULL,
  iv ${blob} NOT NULL,
  ct ${blob} NOT NULL,
  created_at ${bigint} NOT NULL,
  PRIMARY KEY (host_id, name)
);
CREATE INDEX volumes_kek ON volumes (kek_version);
CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  hash TEXT NOT NULL UNIQUE,
  host_name TEXT NOT NULL,
  cidrs TEXT NOT NULL,
  created_at ${bigint} NOT NULL,
  expires_at ${bigint} NOT NULL,
  used_at ${bigint},
  used_by_host TEXT,
  revoked_at ${bigint},
  created_by TEXT NOT NULL
);
CREATE TABLE nonces (
  nonce TEXT PRIMARY KEY,
  expires_at ${bigint} NOT NULL,
  used_at ${bigint}
);
CREATE INDEX nonces_exp ON nonces (expires_at);
CREATE TABLE unlock_events (
  host_id TEXT NOT NULL,
  at ${bigint} NOT NULL,
  boot_id TEXT NOT NULL,
  source TEXT NOT NULL,
  outcome TEXT NOT NULL,
  code TEXT
);
CREATE INDEX unlock_events_host_at ON unlock_events (host_id, at);
CREATE TABLE operators (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  token_hash TEXT NOT NULL UNIQUE,
  totp_kek_version INTEGER,
  totp_iv ${blob},
  totp_ct ${blob},
  totp_last_step ${bigint},
  created_at ${bigint} NOT NULL,
  removed_at ${bigint}
);
CREATE UNIQUE INDEX operators_live_name ON operators (name) WHERE removed_at IS NULL;
CREATE TABLE totp_failures (
  operator_id TEXT NOT NULL,
  at ${bigint} NOT NULL
);
CREATE INDEX totp_failures_op ON totp_failures (operator_id, at);
CREATE TABLE approvals (
  id TEXT PRIMARY KEY,
  host_id TEXT NOT NULL,
  volumes TEXT NOT NULL,
  boot_id TEXT NOT NULL,
  source TEXT NOT NULL,
  rule TEXT NOT NULL,
  required INTEGER NOT NULL,
  created_at ${bigint} NOT NULL,
  expires_at ${bigint} NOT NULL,
  state TEXT NOT NULL,
  decided_at ${bigint},
  reason TEXT
);
CREATE INDEX approvals_state ON approvals (state);
CREATE TABLE approval_votes (
  approval_id TEXT NOT NULL,
  operator_id TEXT NOT NULL,
  at ${bigint} NOT NULL,
  PRIMARY KEY (approval_id, operator_id)
);
CREATE TABLE audit (
  seq ${bigint} PRIMARY KEY,
  at ${bigint} NOT NULL,
  actor TEXT NOT NULL,
  action TEXT NOT NULL,
  host TEXT,
  detail TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
`

/**
 * v2, the keyed audit chain (shared/audit.ts, server/escrow/audit-chain.ts): an entry MAC and a
 * chain position assigned by the sealer. Entries written before it keep pos NULL and mac NULL
 * and are adopted (keyed and chained, as they are then) by the first seal; the boundary of that
 * adoption is recorded so that no later unkeyed row is ever adopted. PostgreSQL numbers entries
 * from a sequence, so appends need no lock.
 */
const v2AuditCommon = (bigint: string): string => `
ALTER TABLE audit ADD COLUMN mac TEXT;
ALTER TABLE audit ADD COLUMN pos ${bigint};
CREATE UNIQUE INDEX audit_pos ON audit (pos);
CREATE INDEX audit_unsealed ON audit (seq) WHERE pos IS NULL;
INSERT INTO meta (key, value) SELECT 'audit_legacy_max_seq', CAST(COALESCE(max(seq), 0) AS TEXT) FROM audit;
`

/**
 * v3, passkeys (WebAuthn credentials per operator), their one-time registration links (stored
 * hashed), single-use WebAuthn challenges, and the phone page's own failure counters (per
 * operator and per source address; never the CLI's totp_failures).
 */
const v3Passkeys = (blob: string, bigint: string): string => `
CREATE TABLE passkeys (
  id TEXT PRIMARY KEY,
  operator_id TEXT NOT NULL,
  public_key ${blob} NOT NULL,
  counter ${bigint} NOT NULL,
  transports TEXT NOT NULL,
  rp_id TEXT NOT NULL,
  created_at ${bigint} NOT NULL,
  last_used_at ${bigint}
);
CREATE INDEX passkeys_operator ON passkeys (operator_id);
CREATE TABLE passkey_enrollments (
  token_hash TEXT PRIMARY KEY,
  operator_id TEXT NOT NULL,
  created_at ${bigint} NOT NULL,
  expires_at ${bigint} NOT NULL,
  used_at ${bigint}
);
CREATE TABLE webauthn_challenges (
  challenge TEXT PRIMARY KEY,
  purpose TEXT NOT NULL,
  binding TEXT NOT NULL,
  operator_id TEXT,
  expires_at ${bigint} NOT NULL
);
CREATE INDEX webauthn_challenges_exp ON webauthn_challenges (expires_at);
CREATE TABLE page_failures (
  scope TEXT PRIMARY KEY,
  failures INTEGER NOT NULL,
  last_at ${bigint} NOT NULL
);
`

/** v4: the latest state of each `unlockd encrypt` conversion a host reported. */
const v4Encryption = (bigint: string, real: string): string => `
CREATE TABLE encryption_progress (
  host_id TEXT NOT NULL REFERENCES hosts(id),
  volume TEXT NOT NULL,
  kind TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('running','done','failed')),
  phase TEXT NOT NULL,
  done_bytes ${bigint} NOT NULL,
  total_bytes ${bigint} NOT NULL,
  bytes_per_second ${real},
  eta_seconds ${real},
  message TEXT,
  started_at ${bigint} NOT NULL,
  updated_at ${bigint} NOT NULL,
  PRIMARY KEY (host_id, volume)
);
`

/**
 * v5, quorum actions: a loosening operator action (policy relaxation, resume, export, operator
 * and key changes) that waits for k distinct operators. `payload` is the validated request as
 * JSON, `eligible` the ids of the operators who held a factor when it opened (only they can vote),
 * and each vote is one row keyed by (action, operator).
 */
const v5Quorum = (bigint: string): string => `
CREATE TABLE quorum_actions (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  host TEXT,
  payload TEXT NOT NULL,
  requester_id TEXT NOT NULL,
  required INTEGER NOT NULL,
  eligible TEXT NOT NULL,
  created_at ${bigint} NOT NULL,
  expires_at ${bigint} NOT NULL,
  state TEXT NOT NULL,
  decided_at ${bigint},
  reason TEXT
);
CREATE INDEX quorum_actions_state ON quorum_actions (state);
CREATE TABLE quorum_votes (
  action_id TEXT NOT NULL,
  operator_id TEXT NOT NULL,
  at ${bigint} NOT NULL,
  PRIMARY KEY (action_id, operator_id)
);
`

/**
 * v6, operator enrollments: a one-time code (stored hashed) that lets an operator obtain its own
 * credentials. `add` (from `operator add`) gives the redeemer the new operator's API token and
 * TOTP secret; `reset` (from `operator totp` by another operator) gives a new TOTP secret and
 * needs the target's own API token as well. Nobody but the redeemer ever sees the secrets.
 */
const v6OperatorEnrollments = (bigint: string): string => `
CREATE TABLE operator_enrollments (
  code_hash TEXT PRIMARY KEY,
  operator_id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('add','reset')),
  created_by TEXT NOT NULL,
  created_at ${bigint} NOT NULL,
  expires_at ${bigint} NOT NULL,
  used_at ${bigint}
);
CREATE INDEX operator_enrollments_operator ON operator_enrollments (operator_id);
`

/**
 * v7: an approval remembers the ephemeral key of the unlock attempt that asked for it, so that
 * only a poll of that attempt collects it (server/escrow/poll.ts). Null for v1 requests.
 */
const v7ApprovalEpk = `
ALTER TABLE approvals ADD COLUMN epk TEXT;
`

export const MIGRATIONS: readonly Migration[] = [
  { sqlite: v1Common('BLOB', 'INTEGER'), postgres: v1Common('BYTEA', 'BIGINT') },
  {
    sqlite: v2AuditCommon('INTEGER'),
    postgres: `${v2AuditCommon('BIGINT')}
CREATE SEQUENCE audit_seq;
SELECT setval('audit_seq', COALESCE((SELECT max(seq) FROM audit), 0) + 1, false);
`,
  },
  { sqlite: v3Passkeys('BLOB', 'INTEGER'), postgres: v3Passkeys('BYTEA', 'BIGINT') },
  { sqlite: v4Encryption('INTEGER', 'REAL'), postgres: v4Encryption('BIGINT', 'DOUBLE PRECISION') },
  { sqlite: v5Quorum('INTEGER'), postgres: v5Quorum('BIGINT') },
  { sqlite: v6OperatorEnrollments('INTEGER'), postgres: v6OperatorEnrollments('BIGINT') },
  { sqlite: v7ApprovalEpk, postgres: v7ApprovalEpk },
]
