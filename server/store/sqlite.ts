/**
 * Embedded default store: one SQLite file (better-sqlite3) in WAL mode with synchronous=FULL
 * (a committed unlock, enrollment or shred survives power loss) and secure_delete=ON (deleted
 * blobs are overwritten with zeros in the page, which shred relies on).
 *
 * better-sqlite3 is synchronous; `tx` serializes transactions with an async mutex so an
 * `await` inside one transaction can never interleave another's statements.
 */
import Database from 'better-sqlite3'
import { chmodSync, existsSync } from 'node:fs'
import { AUDIT_GENESIS, auditHash } from '../../shared/audit.ts'
import { UnlockdError } from '../../shared/errors.ts'
import { parsePolicy } from '../../shared/protocol/policy.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import type {
  ApprovalRow,
  HostRow,
  NewAudit,
  NonceResult,
  OperatorRow,
  Store,
  StoreTx,
  TokenRow,
  TxOptions,
  UnlockEventRow,
  VolumeRow,
} from './store.ts'
import { MIGRATIONS } from './schema.ts'

type Row = Record<string, unknown>

const num = (v: unknown): number => Number(v)
const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v))
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v))
const bytes = (v: unknown): Uint8Array => new Uint8Array(v as Buffer)
const bytesOrNull = (v: unknown): Uint8Array | null =>
  v === null || v === undefined ? null : new Uint8Array(v as Buffer)

function jsonCol<T>(v: unknown, what: string): T {
  try {
    return JSON.parse(String(v)) as T
  } catch (cause) {
    throw new UnlockdError('store_failed', `stored ${what} is not valid JSON`, { cause })
  }
}

export function hostFromRow(r: Row): HostRow {
  return {
    id: String(r['id']),
    name: String(r['name']),
    state: String(r['state']) as HostRow['state'],
    stateReason: strOrNull(r['state_reason']),
    signingJwk: String(r['signing_jwk']),
    sealingJwk: String(r['sealing_jwk']),
    policy: parsePolicy(jsonCol(r['policy'], 'policy'), 'store_failed'),
    createdAt: num(r['created_at']),
    lastSeenAt: numOrNull(r['last_seen_at']),
    lastUnlockAt: numOrNull(r['last_unlock_at']),
    lastBootId: strOrNull(r['last_boot_id']),
    lastSource: strOrNull(r['last_source']),
    tang: Boolean(num(r['tang'])),
  }
}
export function volumeFromRow(r: Row): VolumeRow {
  return {
    hostId: String(r['host_id']),
    name: String(r['name']),
    kind: String(r['kind']) as VolumeRow['kind'],
    ref: strOrNull(r['ref']),
    kekVersion: num(r['kek_version']),
    iv: bytes(r['iv']),
    ct: bytes(r['ct']),
    createdAt: num(r['created_at']),
  }
}
export function tokenFromRow(r: Row): TokenRow {
  return {
    id: String(r['id']),
    hash: String(r['hash']),
    hostName: String(r['host_name']),
    cidrs: jsonCol<string[]>(r['cidrs'], 'token cidrs'),
    createdAt: num(r['created_at']),
    expiresAt: num(r['expires_at']),
    usedAt: numOrNull(r['used_at']),
    usedByHost: strOrNull(r['used_by_host']),
    revokedAt: numOrNull(r['revoked_at']),
    createdBy: String(r['created_by']),
  }
}
export function operatorFromRow(r: Row): OperatorRow {
  return {
    id: String(r['id']),
    name: String(r['name']),
    tokenHash: String(r['token_hash']),
    totpKekVersion: numOrNull(r['totp_kek_version']),
    totpIv: bytesOrNull(r['totp_iv']),
    totpCt: bytesOrNull(r['totp_ct']),
    totpLastStep: numOrNull(r['totp_last_step']),
    createdAt: num(r['created_at']),
    removedAt: numOrNull(r['removed_at']),
  }
}
export function approvalFromRow(r: Row): ApprovalRow {
  return {
    id: String(r['id']),
    hostId: String(r['host_id']),
    volumes: jsonCol<string[]>(r['volumes'], 'approval volumes'),
    bootId: String(r['boot_id']),
    source: String(r['source']),
    rule: String(r['rule']),
    required: num(r['required']),
    createdAt: num(r['created_at']),
    expiresAt: num(r['expires_at']),
    state: String(r['state']) as ApprovalRow['state'],
    decidedAt: numOrNull(r['decided_at']),
    reason: strOrNull(r['reason']),
  }
}
export function auditFromRow(r: Row): AuditEntry {
  return {
    seq: num(r['seq']),
    at: num(r['at']),
    actor: String(r['actor']),
    action: String(r['action']),
    host: strOrNull(r['host']),
    detail: jsonCol<Record<string, unknown>>(r['detail'], 'audit detail'),
    prevHash: String(r['prev_hash']),
    hash: String(r['hash']),
  }
}

/** Column names for partial updates (camelCase field → column). */
export const HOST_COLS: Record<string, string> = {
  name: 'name',
  state: 'state',
  stateReason: 'state_reason',
  signingJwk: 'signing_jwk',
  sealingJwk: 'sealing_jwk',
  policy: 'policy',
  createdAt: 'created_at',
  lastSeenAt: 'last_seen_at',
  lastUnlockAt: 'last_unlock_at',
  lastBootId: 'last_boot_id',
  lastSource: 'last_source',
  tang: 'tang',
}
export const OPERATOR_COLS: Record<string, string> = {
  name: 'name',
  tokenHash: 'token_hash',
  totpKekVersion: 'totp_kek_version',
  totpIv: 'totp_iv',
  totpCt: 'totp_ct',
  totpLastStep: 'totp_last_step',
  createdAt: 'created_at',
  removedAt: 'removed_at',
}
export const APPROVAL_COLS: Record<string, string> = {
  state: 'state',
  decidedAt: 'decided_at',
  reason: 'reason',
  expiresAt: 'expires_at',
  volumes: 'volumes',
}

export function toDbValue(key: string, v: unknown): unknown {
  if (v === undefined) return null
  if (key === 'policy' || key === 'volumes') return JSON.stringify(v)
  if (key === 'tang') return v ? 1 : 0
  if (v instanceof Uint8Array) return Buffer.from(v)
  return v
}

class Mutex {
  #tail: Promise<void> = Promise.resolve()
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn)
    this.#tail = result.then(
      () => undefined,
      () => undefined,
    )
    return result
  }
}

export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const
  readonly path: string
  #db: Database.Database
  #mutex = new Mutex()
  #stmts = new Map<string, Database.Statement>()

  constructor(path: string) {
    this.path = path
    const fresh = path !== ':memory:' && !existsSync(path)
    try {
      this.#db = new Database(path)
    } catch (cause) {
      throw new UnlockdError('store_failed', `cannot open database ${path}`, { cause })
    }
    if (fresh) chmodSync(path, 0o600)
    this.#db.pragma('journal_mode = WAL')
    this.#db.pragma('synchronous = FULL')
    this.#db.pragma('secure_delete = ON')
    this.#db.pragma('foreign_keys = ON')
    this.#db.pragma('busy_timeout = 5000')
    this.#migrate()
  }

  #migrate(): void {
    this.#db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)')
    const row = this.#db.prepare('SELECT version FROM schema_version').get() as
      { version: number } | undefined
    const current = row?.version ?? 0
    if (current > MIGRATIONS.length) {
      throw new UnlockdError(
        'store_failed',
        `database schema version ${current} is newer than this unlockd (${MIGRATIONS.length}); upgrade unlockd`,
      )
    }
    const apply = this.#db.transaction(() => {
      for (let v = current; v < MIGRATIONS.length; v++)
        this.#db.exec((MIGRATIONS[v] as { sqlite: string }).sqlite)
      if (row) this.#db.prepare('UPDATE schema_version SET version = ?').run(MIGRATIONS.length)
      else
        this.#db.prepare('INSERT INTO schema_version (version) VALUES (?)').run(MIGRATIONS.length)
    })
    apply.immediate()
  }

  #s(sql: string): Database.Statement {
    let st = this.#stmts.get(sql)
    if (!st) {
      st = this.#db.prepare(sql)
      this.#stmts.set(sql, st)
    }
    return st
  }

  tx<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    const volatile = opts.durable === false
    return this.#mutex.run(async () => {
      // In WAL mode NORMAL skips this commit's fsync; the next FULL commit syncs the WAL up to
      // and including it, so order is kept and nothing is ever torn.
      if (volatile) this.#db.pragma('synchronous = NORMAL')
      try {
        this.#db.exec('BEGIN IMMEDIATE')
        try {
          const out = await fn(this.#txApi)
          this.#db.exec('COMMIT')
          return out
        } catch (err) {
          if (this.#db.inTransaction) this.#db.exec('ROLLBACK')
          // Database failures become one typed error (like the PostgreSQL store); ours pass through.
          if (err instanceof Database.SqliteError)
            throw new UnlockdError('store_failed', `database error (${err.code})`, { cause: err })
          throw err
        }
      } finally {
        if (volatile) this.#db.pragma('synchronous = FULL')
      }
    })
  }

  async scrub(): Promise<void> {
    await this.#mutex.run(async () => {
      // secure_delete already zeroed the cells; the WAL may still hold old page images.
      this.#db.pragma('wal_checkpoint(TRUNCATE)')
      this.#db.exec('VACUUM')
      this.#db.pragma('wal_checkpoint(TRUNCATE)')
    })
  }

  async close(): Promise<void> {
    await this.#mutex.run(async () => {
      if (this.#db.open) {
        this.#db.pragma('wal_checkpoint(TRUNCATE)')
        this.#db.close()
      }
    })
  }

  #update(
    table: string,
    cols: Record<string, string>,
    idCol: string,
    id: string,
    patch: Record<string, unknown>,
  ): void {
    const keys = Object.keys(patch).filter(
      (k) =>
        (cols[k] !== undefined && patch[k] !== undefined) || (cols[k] !== undefined && k in patch),
    )
    if (keys.length === 0) return
    const sql = `UPDATE ${table} SET ${keys.map((k) => `${cols[k]} = ?`).join(', ')} WHERE ${idCol} = ?`
    this.#s(sql).run(...keys.map((k) => toDbValue(k, patch[k])), id)
  }

  readonly #txApi: StoreTx = {
    getHost: async (id) => {
      const r = this.#s('SELECT * FROM hosts WHERE id = ?').get(id) as Row | undefined
      return r && hostFromRow(r)
    },
    getHostByName: async (name) => {
      // A live host wins over shredded tombstones of the same name.
      const r = this.#s(
        "SELECT * FROM hosts WHERE name = ? ORDER BY (state = 'shredded'), created_at DESC LIMIT 1",
      ).get(name) as Row | undefined
      return r && hostFromRow(r)
    },
    listHosts: async () =>
      (this.#s('SELECT * FROM hosts ORDER BY name, created_at, id').all() as Row[]).map(
        hostFromRow,
      ),
    insertHost: async (h) => {
      this.#s(
        `INSERT INTO hosts (id, name, state, state_reason, signing_jwk, sealing_jwk, policy, created_at, last_seen_at, last_unlock_at, last_boot_id, last_source, tang)
        VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`,
      ).run(
        h.id,
        h.name,
        h.state,
        h.stateReason,
        h.signingJwk,
        h.sealingJwk,
        JSON.stringify(h.policy),
        h.createdAt,
        h.lastSeenAt,
        h.lastUnlockAt,
        h.lastBootId,
        h.lastSource,
        h.tang ? 1 : 0,
      )
    },
    updateHost: async (id, patch) => this.#update('hosts', HOST_COLS, 'id', id, patch),

    listVolumes: async (hostId) =>
      (this.#s('SELECT * FROM volumes WHERE host_id = ? ORDER BY name').all(hostId) as Row[]).map(
        volumeFromRow,
      ),
    upsertVolume: async (v) => {
      this.#s(
        `INSERT INTO volumes (host_id, name, kind, ref, kek_version, iv, ct, created_at) VALUES (?,?,?,?,?,?,?,?)
        ON CONFLICT (host_id, name) DO UPDATE SET kind = excluded.kind, ref = excluded.ref, kek_version = excluded.kek_version, iv = excluded.iv, ct = excluded.ct`,
      ).run(
        v.hostId,
        v.name,
        v.kind,
        v.ref,
        v.kekVersion,
        Buffer.from(v.iv),
        Buffer.from(v.ct),
        v.createdAt,
      )
    },
    deleteVolumes: async (hostId, names) => {
      if (names === undefined)
        return this.#s('DELETE FROM volumes WHERE host_id = ?').run(hostId).changes
      let n = 0
      for (const name of names)
        n += this.#s('DELETE FROM volumes WHERE host_id = ? AND name = ?').run(hostId, name).changes
      return n
    },
    listVolumesWithKekBelow: async (version, limit) =>
      (
        this.#s('SELECT * FROM volumes WHERE kek_version < ? ORDER BY host_id, name LIMIT ?').all(
          version,
          limit,
        ) as Row[]
      ).map(volumeFromRow),
    countVolumesWithKekBelow: async (version) =>
      num(
        (this.#s('SELECT count(*) AS n FROM volumes WHERE kek_version < ?').get(version) as Row)[
          'n'
        ],
      ),

    insertToken: async (t) => {
      this.#s(
        'INSERT INTO tokens (id, hash, host_name, cidrs, created_at, expires_at, used_at, used_by_host, revoked_at, created_by) VALUES (?,?,?,?,?,?,?,?,?,?)',
      ).run(
        t.id,
        t.hash,
        t.hostName,
        JSON.stringify(t.cidrs),
        t.createdAt,
        t.expiresAt,
        t.usedAt,
        t.usedByHost,
        t.revokedAt,
        t.createdBy,
      )
    },
    getTokenByHash: async (hash) => {
      const r = this.#s('SELECT * FROM tokens WHERE hash = ?').get(hash) as Row | undefined
      return r && tokenFromRow(r)
    },
    getToken: async (id) => {
      const r = this.#s('SELECT * FROM tokens WHERE id = ?').get(id) as Row | undefined
      return r && tokenFromRow(r)
    },
    useToken: async (id, now, hostId) =>
      this.#s(
        'UPDATE tokens SET used_at = ?, used_by_host = ? WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL',
      ).run(now, hostId, id).changes === 1,
    revokeToken: async (id, now) =>
      this.#s(
        'UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL AND used_at IS NULL',
      ).run(now, id).changes === 1,
    listTokens: async () =>
      (this.#s('SELECT * FROM tokens ORDER BY created_at DESC, id').all() as Row[]).map(
        tokenFromRow,
      ),

    insertNonce: async (nonce, exp) => {
      this.#s('INSERT INTO nonces (nonce, expires_at, used_at) VALUES (?, ?, NULL)').run(nonce, exp)
    },
    consumeNonce: async (nonce, now): Promise<NonceResult> => {
      if (
        this.#s(
          'UPDATE nonces SET used_at = ? WHERE nonce = ? AND used_at IS NULL AND expires_at > ?',
        ).run(now, nonce, now).changes === 1
      )
        return 'ok'
      const r = this.#s('SELECT used_at, expires_at FROM nonces WHERE nonce = ?').get(nonce) as
        Row | undefined
      if (!r) return 'unknown'
      return r['used_at'] !== null ? 'reused' : 'expired'
    },
    purgeNonces: async (olderThan) =>
      this.#s('DELETE FROM nonces WHERE expires_at < ?').run(olderThan).changes,

    recordUnlock: async (u: UnlockEventRow) => {
      this.#s(
        'INSERT INTO unlock_events (host_id, at, boot_id, source, outcome, code) VALUES (?,?,?,?,?,?)',
      ).run(u.hostId, u.at, u.bootId, u.source, u.outcome, u.code)
    },
    countUnlocks: async (hostId, since, outcome) =>
      num(
        (
          this.#s(
            'SELECT count(*) AS n FROM unlock_events WHERE host_id = ? AND at >= ? AND outcome = ?',
          ).get(hostId, since, outcome) as Row
        )['n'],
      ),
    recentBootIds: async (hostId, since) =>
      (
        this.#s(
          "SELECT DISTINCT boot_id FROM unlock_events WHERE host_id = ? AND at >= ? AND outcome = 'released' ORDER BY boot_id",
        ).all(hostId, since) as Row[]
      ).map((r) => String(r['boot_id'])),

    insertOperator: async (o) => {
      this.#s(
        'INSERT INTO operators (id, name, token_hash, totp_kek_version, totp_iv, totp_ct, totp_last_step, created_at, removed_at) VALUES (?,?,?,?,?,?,?,?,?)',
      ).run(
        o.id,
        o.name,
        o.tokenHash,
        o.totpKekVersion,
        o.totpIv && Buffer.from(o.totpIv),
        o.totpCt && Buffer.from(o.totpCt),
        o.totpLastStep,
        o.createdAt,
        o.removedAt,
      )
    },
    getOperatorByTokenHash: async (h) => {
      const r = this.#s('SELECT * FROM operators WHERE token_hash = ? AND removed_at IS NULL').get(
        h,
      ) as Row | undefined
      return r && operatorFromRow(r)
    },
    getOperatorByName: async (n) => {
      const r = this.#s('SELECT * FROM operators WHERE name = ? AND removed_at IS NULL').get(n) as
        Row | undefined
      return r && operatorFromRow(r)
    },
    getOperator: async (id) => {
      const r = this.#s('SELECT * FROM operators WHERE id = ?').get(id) as Row | undefined
      return r && operatorFromRow(r)
    },
    listOperators: async () =>
      (
        this.#s('SELECT * FROM operators WHERE removed_at IS NULL ORDER BY name, id').all() as Row[]
      ).map(operatorFromRow),
    updateOperator: async (id, patch) => this.#update('operators', OPERATOR_COLS, 'id', id, patch),
    claimTotpStep: async (id, step) =>
      this.#s(
        'UPDATE operators SET totp_last_step = ? WHERE id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)',
      ).run(step, id, step).changes === 1,
    recordTotpFailure: async (id, at) => {
      this.#s('INSERT INTO totp_failures (operator_id, at) VALUES (?, ?)').run(id, at)
    },
    countTotpFailures: async (id, since) =>
      num(
        (
          this.#s('SELECT count(*) AS n FROM totp_failures WHERE operator_id = ? AND at >= ?').get(
            id,
            since,
          ) as Row
        )['n'],
      ),
    listOperatorsWithTotpKekBelow: async (version) =>
      (
        this.#s(
          'SELECT * FROM operators WHERE totp_kek_version IS NOT NULL AND totp_kek_version < ? ORDER BY name, id',
        ).all(version) as Row[]
      ).map(operatorFromRow),

    insertApproval: async (a: ApprovalRow) => {
      this.#s(
        'INSERT INTO approvals (id, host_id, volumes, boot_id, source, rule, required, created_at, expires_at, state, decided_at, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)',
      ).run(
        a.id,
        a.hostId,
        JSON.stringify(a.volumes),
        a.bootId,
        a.source,
        a.rule,
        a.required,
        a.createdAt,
        a.expiresAt,
        a.state,
        a.decidedAt,
        a.reason,
      )
    },
    getApproval: async (id) => {
      const r = this.#s('SELECT * FROM approvals WHERE id = ?').get(id) as Row | undefined
      return r && approvalFromRow(r)
    },
    listApprovals: async (state) =>
      (state === undefined
        ? (this.#s('SELECT * FROM approvals ORDER BY created_at, id').all() as Row[])
        : (this.#s('SELECT * FROM approvals WHERE state = ? ORDER BY created_at, id').all(
            state,
          ) as Row[])
      ).map(approvalFromRow),
    updateApproval: async (id, patch) => this.#update('approvals', APPROVAL_COLS, 'id', id, patch),
    addApprovalVote: async (aid, oid, at) =>
      this.#s(
        'INSERT INTO approval_votes (approval_id, operator_id, at) VALUES (?,?,?) ON CONFLICT DO NOTHING',
      ).run(aid, oid, at).changes === 1,
    countApprovalVotes: async (aid) =>
      num(
        (this.#s('SELECT count(*) AS n FROM approval_votes WHERE approval_id = ?').get(aid) as Row)[
          'n'
        ],
      ),
    approvalVoters: async (aid) =>
      (
        this.#s(
          'SELECT o.name FROM approval_votes v JOIN operators o ON o.id = v.operator_id WHERE v.approval_id = ? ORDER BY v.at, o.name',
        ).all(aid) as Row[]
      ).map((r) => String(r['name'])),

    appendAudit: async (e: NewAudit) => {
      const head = this.#s('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1').get() as
        Row | undefined
      const fields = {
        seq: head ? num(head['seq']) + 1 : 1,
        prevHash: head ? String(head['hash']) : AUDIT_GENESIS,
        ...e,
      }
      const entry: AuditEntry = { ...fields, hash: await auditHash(fields) }
      this.#s(
        'INSERT INTO audit (seq, at, actor, action, host, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?)',
      ).run(
        entry.seq,
        entry.at,
        entry.actor,
        entry.action,
        entry.host,
        JSON.stringify(entry.detail),
        entry.prevHash,
        entry.hash,
      )
      return entry
    },
    listAudit: async (afterSeq, limit) =>
      (
        this.#s('SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?').all(
          afterSeq,
          limit,
        ) as Row[]
      ).map(auditFromRow),

    getMeta: async (key) => {
      const r = this.#s('SELECT value FROM meta WHERE key = ?').get(key) as Row | undefined
      return r ? String(r['value']) : undefined
    },
    setMeta: async (key, value) => {
      if (value === undefined) this.#s('DELETE FROM meta WHERE key = ?').run(key)
      else
        this.#s(
          'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
        ).run(key, value)
    },
  }
}
