/**
 * `StoreTx` written once, over the few things an SQL database must do for it (`SqlDriver`).
 * The SQLite and PostgreSQL stores supply a driver per transaction and keep only what really
 * differs between them: how a transaction begins, locks and commits, array parameters, the
 * audit-head lock, scrubbing and migrations.
 *
 * Statements use `?` placeholders; a driver with numbered ones (`$1`) gets them renumbered.
 * Every list has one total order (ties broken by a unique column), the same on every store.
 */
import { AUDIT_GENESIS, auditEntryMac, auditLinkMac } from '../../shared/audit.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import {
  APPROVAL_COLS,
  actionFromRow,
  HOST_COLS,
  OPERATOR_COLS,
  approvalFromRow,
  auditFromRow,
  encryptionFromRow,
  hostFromRow,
  operatorEnrollmentFromRow,
  operatorFromRow,
  passkeyEnrollmentFromRow,
  passkeyFromRow,
  toDbValue,
  tokenFromRow,
  volumeFromRow,
  webauthnChallengeFromRow,
  type Row,
} from './rows.ts'
import type { NonceResult, StoreTx } from './store.ts'

export interface SqlDriver {
  /** `?` (SQLite) or `$1, $2, ...` (PostgreSQL). */
  readonly placeholders: '?' | '$n'
  rows(sql: string, params: readonly unknown[]): Promise<Row[]>
  one(sql: string, params: readonly unknown[]): Promise<Row | undefined>
  /** Rows changed by an INSERT, UPDATE or DELETE. */
  changes(sql: string, params: readonly unknown[]): Promise<number>
  /** `column <this>`: "is one of `values`", as SQL (with `?`) and its parameters. */
  oneOf(values: readonly string[]): { sql: string; params: unknown[] }
  /** The next audit sequence number, without a lock (PostgreSQL: a sequence; gaps allowed). */
  nextAuditSeq(): Promise<number>
  /**
   * Taken by the sealer only, before reading the chain head; held until the (short) sealing
   * transaction ends, so two sealers cannot fork the chain. Appends never take it. A
   * single-writer database needs nothing here.
   */
  lockAuditHead(): Promise<void>
}

/** The audit MAC key while it is needed; unset on a store opened without a keystore. */
export type AuditKeySource = () => Uint8Array | undefined

const numbered = new Map<string, string>()

/** `?` → `$1, $2, ...` (the statements hold no `?` inside literals). */
function toNumbered(sql: string): string {
  let out = numbered.get(sql)
  if (out === undefined) {
    let n = 0
    out = sql.replace(/\?/g, () => `$${++n}`)
    numbered.set(sql, out)
  }
  return out
}

const blob = (b: Uint8Array | null): Buffer | null => (b === null ? null : Buffer.from(b))

/**
 * The transaction API over `d`, and `end()`, after which every call throws (a `StoreTx`
 * kept past its transaction would otherwise run statements outside it, or inside another).
 */
export function sqlStoreTx(
  d: SqlDriver,
  auditKey: AuditKeySource = () => undefined,
): { tx: StoreTx; end(): void } {
  let ended = false
  const live = (): void => {
    if (ended) throw new TypeError('StoreTx used after its transaction ended')
  }
  const sqlOf = (sql: string): string => {
    live()
    return d.placeholders === '$n' ? toNumbered(sql) : sql
  }
  const rows = async (sql: string, params: readonly unknown[] = []): Promise<Row[]> =>
    d.rows(sqlOf(sql), params)
  const one = async (sql: string, params: readonly unknown[] = []): Promise<Row | undefined> =>
    d.one(sqlOf(sql), params)
  const changes = async (sql: string, params: readonly unknown[] = []): Promise<number> =>
    d.changes(sqlOf(sql), params)
  const exec = async (sql: string, params: readonly unknown[] = []): Promise<void> => {
    await changes(sql, params)
  }
  const count = async (sql: string, params: readonly unknown[]): Promise<number> =>
    Number((await one(sql, params))?.['n'] ?? 0)
  const update = async (
    table: string,
    cols: Readonly<Record<string, string>>,
    id: string,
    patch: Record<string, unknown>,
  ): Promise<void> => {
    // Column names come from the fixed maps, never from the patch.
    const keys = Object.keys(patch).filter((k) => cols[k] !== undefined)
    if (keys.length === 0) return
    const sets = keys.map((k) => `${cols[k] as string} = ?`).join(', ')
    await exec(`UPDATE ${table} SET ${sets} WHERE id = ?`, [
      ...keys.map((k) => toDbValue(k, patch[k])),
      id,
    ])
  }

  const tx: StoreTx = {
    getHost: async (id) => {
      const r = await one('SELECT * FROM hosts WHERE id = ?', [id])
      return r && hostFromRow(r)
    },
    getHostByName: async (name) => {
      // A live host wins over shredded tombstones of the same name.
      const r = await one(
        "SELECT * FROM hosts WHERE name = ? ORDER BY (state = 'shredded'), created_at DESC LIMIT 1",
        [name],
      )
      return r && hostFromRow(r)
    },
    listHosts: async () =>
      (await rows('SELECT * FROM hosts ORDER BY name, created_at, id')).map(hostFromRow),
    insertHost: (h) =>
      exec(
        `INSERT INTO hosts (id, name, state, state_reason, signing_jwk, sealing_jwk, policy, created_at, last_seen_at, last_unlock_at, last_boot_id, last_source, tang)
        VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)`,
        [
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
        ],
      ),
    updateHost: (id, patch) => update('hosts', HOST_COLS, id, patch),

    listVolumes: async (hostId) =>
      (await rows('SELECT * FROM volumes WHERE host_id = ? ORDER BY name', [hostId])).map(
        volumeFromRow,
      ),
    upsertVolume: (v) =>
      exec(
        `INSERT INTO volumes (host_id, name, kind, ref, kek_version, iv, ct, created_at) VALUES (?,?,?,?,?,?,?,?)
        ON CONFLICT (host_id, name) DO UPDATE SET kind = excluded.kind, ref = excluded.ref, kek_version = excluded.kek_version, iv = excluded.iv, ct = excluded.ct`,
        [v.hostId, v.name, v.kind, v.ref, v.kekVersion, blob(v.iv), blob(v.ct), v.createdAt],
      ),
    deleteVolumes: async (hostId, names) => {
      if (names === undefined) return changes('DELETE FROM volumes WHERE host_id = ?', [hostId])
      if (names.length === 0) return 0
      const inNames = d.oneOf(names)
      return changes(`DELETE FROM volumes WHERE host_id = ? AND name ${inNames.sql}`, [
        hostId,
        ...inNames.params,
      ])
    },
    listVolumesWithKekBelow: async (version, limit) =>
      (
        await rows('SELECT * FROM volumes WHERE kek_version < ? ORDER BY host_id, name LIMIT ?', [
          version,
          limit,
        ])
      ).map(volumeFromRow),
    countVolumesWithKekBelow: (version) =>
      count('SELECT count(*) AS n FROM volumes WHERE kek_version < ?', [version]),

    insertToken: (t) =>
      exec(
        'INSERT INTO tokens (id, hash, host_name, cidrs, created_at, expires_at, used_at, used_by_host, revoked_at, created_by) VALUES (?,?,?,?,?,?,?,?,?,?)',
        [
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
        ],
      ),
    getTokenByHash: async (hash) => {
      const r = await one('SELECT * FROM tokens WHERE hash = ?', [hash])
      return r && tokenFromRow(r)
    },
    getToken: async (id) => {
      const r = await one('SELECT * FROM tokens WHERE id = ?', [id])
      return r && tokenFromRow(r)
    },
    // Single-use operations are one conditional statement each: a concurrent second caller
    // (PostgreSQL: blocked on the row lock, then re-checking the WHERE) changes nothing.
    useToken: async (id, now, hostId) =>
      (await changes(
        'UPDATE tokens SET used_at = ?, used_by_host = ? WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL',
        [now, hostId, id],
      )) === 1,
    revokeToken: async (id, now) =>
      (await changes(
        'UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL AND used_at IS NULL',
        [now, id],
      )) === 1,
    listTokens: async () =>
      (await rows('SELECT * FROM tokens ORDER BY created_at DESC, id')).map(tokenFromRow),

    insertNonce: (nonce, exp) =>
      exec('INSERT INTO nonces (nonce, expires_at, used_at) VALUES (?, ?, NULL)', [nonce, exp]),
    consumeNonce: async (nonce, now): Promise<NonceResult> => {
      if (
        (await changes(
          'UPDATE nonces SET used_at = ? WHERE nonce = ? AND used_at IS NULL AND expires_at > ?',
          [now, nonce, now],
        )) === 1
      )
        return 'ok'
      const r = await one('SELECT used_at, expires_at FROM nonces WHERE nonce = ?', [nonce])
      if (!r) return 'unknown'
      return r['used_at'] !== null ? 'reused' : 'expired'
    },
    purgeNonces: (olderThan) => changes('DELETE FROM nonces WHERE expires_at < ?', [olderThan]),

    recordUnlock: (u) =>
      exec(
        'INSERT INTO unlock_events (host_id, at, boot_id, source, outcome, code) VALUES (?,?,?,?,?,?)',
        [u.hostId, u.at, u.bootId, u.source, u.outcome, u.code],
      ),
    countUnlocks: (hostId, since, outcome) =>
      count(
        'SELECT count(*) AS n FROM unlock_events WHERE host_id = ? AND at >= ? AND outcome = ?',
        [hostId, since, outcome],
      ),
    recentBootIds: async (hostId, since) =>
      (
        await rows(
          "SELECT DISTINCT boot_id FROM unlock_events WHERE host_id = ? AND at >= ? AND outcome = 'released' ORDER BY boot_id",
          [hostId, since],
        )
      ).map((r) => String(r['boot_id'])),

    insertOperator: (o) =>
      exec(
        'INSERT INTO operators (id, name, token_hash, totp_kek_version, totp_iv, totp_ct, totp_last_step, created_at, removed_at) VALUES (?,?,?,?,?,?,?,?,?)',
        [
          o.id,
          o.name,
          o.tokenHash,
          o.totpKekVersion,
          blob(o.totpIv),
          blob(o.totpCt),
          o.totpLastStep,
          o.createdAt,
          o.removedAt,
        ],
      ),
    getOperatorByTokenHash: async (h) => {
      const r = await one('SELECT * FROM operators WHERE token_hash = ? AND removed_at IS NULL', [
        h,
      ])
      return r && operatorFromRow(r)
    },
    getOperatorByName: async (n) => {
      const r = await one('SELECT * FROM operators WHERE name = ? AND removed_at IS NULL', [n])
      return r && operatorFromRow(r)
    },
    getOperator: async (id) => {
      const r = await one('SELECT * FROM operators WHERE id = ?', [id])
      return r && operatorFromRow(r)
    },
    listOperators: async () =>
      (await rows('SELECT * FROM operators WHERE removed_at IS NULL ORDER BY name, id')).map(
        operatorFromRow,
      ),
    updateOperator: (id, patch) => update('operators', OPERATOR_COLS, id, patch),
    claimTotpStep: async (id, step) =>
      (await changes(
        'UPDATE operators SET totp_last_step = ? WHERE id = ? AND (totp_last_step IS NULL OR totp_last_step < ?)',
        [step, id, step],
      )) === 1,
    recordTotpFailure: (id, at) =>
      exec('INSERT INTO totp_failures (operator_id, at) VALUES (?, ?)', [id, at]),
    countTotpFailures: (id, since) =>
      count('SELECT count(*) AS n FROM totp_failures WHERE operator_id = ? AND at >= ?', [
        id,
        since,
      ]),
    listOperatorsWithTotpKekBelow: async (version) =>
      (
        await rows(
          'SELECT * FROM operators WHERE totp_kek_version IS NOT NULL AND totp_kek_version < ? ORDER BY name, id',
          [version],
        )
      ).map(operatorFromRow),

    insertOperatorEnrollment: (e) =>
      exec(
        'INSERT INTO operator_enrollments (code_hash, operator_id, kind, created_by, created_at, expires_at, used_at) VALUES (?,?,?,?,?,?,?)',
        [e.codeHash, e.operatorId, e.kind, e.createdBy, e.createdAt, e.expiresAt, e.usedAt],
      ),
    getOperatorEnrollment: async (h) => {
      const r = await one('SELECT * FROM operator_enrollments WHERE code_hash = ?', [h])
      return r && operatorEnrollmentFromRow(r)
    },
    useOperatorEnrollment: async (h, now) =>
      (await changes(
        'UPDATE operator_enrollments SET used_at = ? WHERE code_hash = ? AND used_at IS NULL',
        [now, h],
      )) === 1,
    openOperatorEnrollment: async (oid, now) => {
      const r = await one(
        'SELECT * FROM operator_enrollments WHERE operator_id = ? AND used_at IS NULL AND expires_at > ? ORDER BY created_at DESC, code_hash LIMIT 1',
        [oid, now],
      )
      return r && operatorEnrollmentFromRow(r)
    },
    dropOperatorEnrollments: (oid) =>
      changes('DELETE FROM operator_enrollments WHERE operator_id = ? AND used_at IS NULL', [oid]),
    deletePendingApprovalVotes: async (oid) => {
      const ids = (
        await rows(
          "SELECT v.approval_id FROM approval_votes v JOIN approvals a ON a.id = v.approval_id WHERE v.operator_id = ? AND a.state = 'pending' ORDER BY v.approval_id",
          [oid],
        )
      ).map((r) => String(r['approval_id']))
      for (const id of ids)
        await exec('DELETE FROM approval_votes WHERE approval_id = ? AND operator_id = ?', [
          id,
          oid,
        ])
      return ids
    },
    insertPasskey: (p) =>
      exec(
        'INSERT INTO passkeys (id, operator_id, public_key, counter, transports, rp_id, created_at, last_used_at) VALUES (?,?,?,?,?,?,?,?)',
        [
          p.id,
          p.operatorId,
          blob(p.publicKey),
          p.counter,
          JSON.stringify(p.transports),
          p.rpId,
          p.createdAt,
          p.lastUsedAt,
        ],
      ),
    getPasskey: async (id) => {
      const r = await one('SELECT * FROM passkeys WHERE id = ?', [id])
      return r && passkeyFromRow(r)
    },
    listPasskeys: async (operatorId) =>
      (
        await rows('SELECT * FROM passkeys WHERE operator_id = ? ORDER BY created_at, id', [
          operatorId,
        ])
      ).map(passkeyFromRow),
    usePasskey: async (id, counter, at) =>
      (await changes(
        'UPDATE passkeys SET counter = ?, last_used_at = ? WHERE id = ? AND (counter < ? OR (counter = 0 AND ? = 0))',
        [counter, at, id, counter, counter],
      )) === 1,
    insertPasskeyEnrollment: (e) =>
      exec(
        'INSERT INTO passkey_enrollments (token_hash, operator_id, created_at, expires_at, used_at) VALUES (?,?,?,?,?)',
        [e.tokenHash, e.operatorId, e.createdAt, e.expiresAt, e.usedAt],
      ),
    getPasskeyEnrollment: async (h) => {
      const r = await one('SELECT * FROM passkey_enrollments WHERE token_hash = ?', [h])
      return r && passkeyEnrollmentFromRow(r)
    },
    usePasskeyEnrollment: async (h, now) =>
      (await changes(
        'UPDATE passkey_enrollments SET used_at = ? WHERE token_hash = ? AND used_at IS NULL',
        [now, h],
      )) === 1,
    deleteOperatorPasskeys: async (oid) => {
      await exec('DELETE FROM passkey_enrollments WHERE operator_id = ? AND used_at IS NULL', [oid])
      return changes('DELETE FROM passkeys WHERE operator_id = ?', [oid])
    },
    insertWebauthnChallenge: (c) =>
      exec(
        'INSERT INTO webauthn_challenges (challenge, purpose, binding, operator_id, expires_at) VALUES (?,?,?,?,?)',
        [c.challenge, c.purpose, c.binding, c.operatorId, c.expiresAt],
      ),
    takeWebauthnChallenge: async (challenge) => {
      const r = await one('SELECT * FROM webauthn_challenges WHERE challenge = ?', [challenge])
      if (!r) return undefined
      const gone = await changes('DELETE FROM webauthn_challenges WHERE challenge = ?', [challenge])
      return gone === 1 ? webauthnChallengeFromRow(r) : undefined
    },
    purgeWebauthnChallenges: (olderThan) =>
      changes('DELETE FROM webauthn_challenges WHERE expires_at < ?', [olderThan]),
    getPageFailures: async (scope) => {
      const r = await one('SELECT * FROM page_failures WHERE scope = ?', [scope])
      return r && { scope, failures: Number(r['failures']), lastAt: Number(r['last_at']) }
    },
    recordPageFailure: async (scope, at) => {
      await exec(
        'INSERT INTO page_failures (scope, failures, last_at) VALUES (?, 1, ?) ON CONFLICT (scope) DO UPDATE SET failures = page_failures.failures + 1, last_at = excluded.last_at',
        [scope, at],
      )
      return count('SELECT failures AS n FROM page_failures WHERE scope = ?', [scope])
    },
    clearPageFailures: (scope) => exec('DELETE FROM page_failures WHERE scope = ?', [scope]),

    insertApproval: (a) =>
      exec(
        'INSERT INTO approvals (id, host_id, volumes, boot_id, source, rule, required, created_at, expires_at, state, decided_at, reason, epk) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)',
        [
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
          a.epk,
        ],
      ),
    getApproval: async (id) => {
      const r = await one('SELECT * FROM approvals WHERE id = ?', [id])
      return r && approvalFromRow(r)
    },
    listApprovals: async (state) =>
      (state === undefined
        ? await rows('SELECT * FROM approvals ORDER BY created_at, id')
        : await rows('SELECT * FROM approvals WHERE state = ? ORDER BY created_at, id', [state])
      ).map(approvalFromRow),
    updateApproval: (id, patch) => update('approvals', APPROVAL_COLS, id, patch),
    // The primary key (approval_id, operator_id) decides: a concurrent duplicate waits for the
    // first insert to commit, then does nothing.
    addApprovalVote: async (aid, oid, at) =>
      (await changes(
        'INSERT INTO approval_votes (approval_id, operator_id, at) VALUES (?,?,?) ON CONFLICT DO NOTHING',
        [aid, oid, at],
      )) === 1,
    countApprovalVotes: (aid) =>
      count(
        'SELECT count(*) AS n FROM approval_votes v JOIN operators o ON o.id = v.operator_id WHERE v.approval_id = ? AND o.removed_at IS NULL',
        [aid],
      ),
    approvalVoters: async (aid) =>
      (
        await rows(
          'SELECT o.name FROM approval_votes v JOIN operators o ON o.id = v.operator_id WHERE v.approval_id = ? AND o.removed_at IS NULL ORDER BY v.at, o.name',
          [aid],
        )
      ).map((r) => String(r['name'])),

    insertAction: (a) =>
      exec(
        'INSERT INTO quorum_actions (id, kind, host, payload, requester_id, required, eligible, created_at, expires_at, state, decided_at, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)',
        [
          a.id,
          a.kind,
          a.host,
          JSON.stringify(a.payload),
          a.requesterId,
          a.required,
          JSON.stringify(a.eligible),
          a.createdAt,
          a.expiresAt,
          a.state,
          a.decidedAt,
          a.reason,
        ],
      ),
    getAction: async (id) => {
      const r = await one('SELECT * FROM quorum_actions WHERE id = ?', [id])
      return r && actionFromRow(r)
    },
    listActions: async (state) =>
      (state === undefined
        ? await rows('SELECT * FROM quorum_actions ORDER BY created_at, id')
        : await rows('SELECT * FROM quorum_actions WHERE state = ? ORDER BY created_at, id', [
            state,
          ])
      ).map(actionFromRow),
    moveAction: async (id, from, patch) =>
      (await changes(
        'UPDATE quorum_actions SET state = ?, decided_at = ?, reason = COALESCE(?, reason) WHERE id = ? AND state = ?',
        [patch.state, patch.decidedAt, patch.reason ?? null, id, from],
      )) === 1,
    deletePendingActionVotes: async (oid) => {
      const ids = (
        await rows(
          "SELECT v.action_id FROM quorum_votes v JOIN quorum_actions a ON a.id = v.action_id WHERE v.operator_id = ? AND a.state = 'pending' ORDER BY v.action_id",
          [oid],
        )
      ).map((r) => String(r['action_id']))
      for (const id of ids)
        await exec('DELETE FROM quorum_votes WHERE action_id = ? AND operator_id = ?', [id, oid])
      return ids
    },
    addActionVote: async (aid, oid, at) =>
      (await changes(
        'INSERT INTO quorum_votes (action_id, operator_id, at) VALUES (?,?,?) ON CONFLICT DO NOTHING',
        [aid, oid, at],
      )) === 1,
    actionVotes: async (aid) =>
      (
        await rows(
          'SELECT v.operator_id, v.at, o.name, o.removed_at FROM quorum_votes v JOIN operators o ON o.id = v.operator_id WHERE v.action_id = ? ORDER BY v.at, o.name, v.operator_id',
          [aid],
        )
      ).map((r) => ({
        operatorId: String(r['operator_id']),
        name: String(r['name']),
        at: Number(r['at']),
        removedAt:
          r['removed_at'] === null || r['removed_at'] === undefined
            ? null
            : Number(r['removed_at']),
      })),

    appendAudit: async (e) => {
      live()
      const fields = { seq: await d.nextAuditSeq(), ...e }
      const key = auditKey()
      const entry: AuditEntry = {
        ...fields,
        mac: key ? auditEntryMac(key, fields) : null,
        pos: null,
        prevHash: '',
        hash: '',
      }
      await exec(
        'INSERT INTO audit (seq, at, actor, action, host, detail, mac, pos, prev_hash, hash) VALUES (?,?,?,?,?,?,?,NULL,?,?)',
        [
          entry.seq,
          entry.at,
          entry.actor,
          entry.action,
          entry.host,
          JSON.stringify(entry.detail),
          entry.mac,
          entry.prevHash,
          entry.hash,
        ],
      )
      return entry
    },
    sealAudit: async (key, limit) => {
      live()
      await d.lockAuditHead()
      const top = await one('SELECT * FROM audit WHERE pos IS NOT NULL ORDER BY pos DESC LIMIT 1')
      let head = top ? auditFromRow(top) : undefined
      const legacyMax = Number(
        (await one("SELECT value FROM meta WHERE key = 'audit_legacy_max_seq'"))?.['value'] ?? 0,
      )
      const pending = (
        await rows('SELECT * FROM audit WHERE pos IS NULL ORDER BY seq LIMIT ?', [limit])
      ).map(auditFromRow)
      for (const e of pending) {
        // Rows from before keyed audit are keyed as they are now; any other unkeyed row is
        // chained without a MAC, and verify names it.
        const mac = e.mac ?? (e.seq <= legacyMax ? auditEntryMac(key, e) : null)
        const pos = (head?.pos ?? 0) + 1
        const prevHash = head?.hash ?? AUDIT_GENESIS
        const hash = auditLinkMac(key, { pos, seq: e.seq, mac: mac ?? '', prevHash })
        await exec(
          'UPDATE audit SET mac = ?, pos = ?, prev_hash = ?, hash = ? WHERE seq = ? AND pos IS NULL',
          [mac, pos, prevHash, hash, e.seq],
        )
        head = { ...e, mac, pos, prevHash, hash }
      }
      return {
        sealed: pending.length,
        head: head?.pos ? { pos: head.pos, seq: head.seq, hash: head.hash } : null,
      }
    },
    listAudit: async (afterSeq, limit) =>
      (await rows('SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?', [afterSeq, limit])).map(
        auditFromRow,
      ),

    getEncryption: async (hostId, volume) => {
      const r = await one('SELECT * FROM encryption_progress WHERE host_id = ? AND volume = ?', [
        hostId,
        volume,
      ])
      return r && encryptionFromRow(r)
    },
    upsertEncryption: (e) =>
      exec(
        `INSERT INTO encryption_progress (host_id, volume, kind, state, phase, done_bytes, total_bytes, bytes_per_second, eta_seconds, message, started_at, updated_at)
        VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
        ON CONFLICT (host_id, volume) DO UPDATE SET kind = excluded.kind, state = excluded.state, phase = excluded.phase, done_bytes = excluded.done_bytes, total_bytes = excluded.total_bytes, bytes_per_second = excluded.bytes_per_second, eta_seconds = excluded.eta_seconds, message = excluded.message, started_at = excluded.started_at, updated_at = excluded.updated_at`,
        [
          e.hostId,
          e.volume,
          e.kind,
          e.state,
          e.phase,
          e.doneBytes,
          e.totalBytes,
          e.bytesPerSecond,
          e.etaSeconds,
          e.message,
          e.startedAt,
          e.updatedAt,
        ],
      ),
    listEncryption: async (hostId) =>
      (hostId === undefined
        ? await rows('SELECT * FROM encryption_progress ORDER BY host_id, volume')
        : await rows('SELECT * FROM encryption_progress WHERE host_id = ? ORDER BY volume', [
            hostId,
          ])
      ).map(encryptionFromRow),

    getMeta: async (key) => {
      const r = await one('SELECT value FROM meta WHERE key = ?', [key])
      return r ? String(r['value']) : undefined
    },
    setMeta: (key, value) =>
      value === undefined
        ? exec('DELETE FROM meta WHERE key = ?', [key])
        : exec(
            'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
            [key, value],
          ),
  }
  return {
    tx,
    end: () => {
      ended = true
    },
  }
}
