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

/** v2: the latest state of each `unlockd encrypt` conversion a host reported. */
const v2Encryption = (bigint: string, real: string): string => `
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

export const MIGRATIONS: readonly Migration[] = [
  { sqlite: v1Common('BLOB', 'INTEGER'), postgres: v1Common('BYTEA', 'BIGINT') },
  { sqlite: v2Encryption('INTEGER', 'REAL'), postgres: v2Encryption('BIGINT', 'DOUBLE PRECISION') },
]
