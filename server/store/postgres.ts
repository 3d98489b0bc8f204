/**
 * PostgreSQL store (`pg`): several stateless server instances share one database.
 *
 * Isolation: READ COMMITTED, and every transaction first takes one transaction-scoped advisory
 * lock (STORE_LOCK), so transactions from all instances run one at a time, exactly like the
 * SQLite store's single writer. Why not SERIALIZABLE with retries:
 *  - the use cases are read-check-write sequences written against that single writer (an
 *    approved request releases once in poll.ts, `maxUnlocks` counts then inserts, votes are
 *    counted after they are cast); with plain READ COMMITTED two instances could both pass a
 *    check, and finer locks would have to live in every use case;
 *  - almost every writing transaction appends to the one linear audit chain, so writers are
 *    serialized at the chain head anyway: under SERIALIZABLE nearly every pair of overlapping
 *    writers would collide there and one would abort and rerun, and a rerun repeats effects
 *    outside the database (approval-seam.ts emits an event inside the transaction);
 *  - waiting on a lock never reruns `fn`, never livelocks, and needs no retry bound.
 * The hot path is narrowed: a transaction that declares `{ host }` (unlock, approval poll,
 * watch) takes STORE_LOCK shared plus an exclusive lock for that host, so the checks above stay
 * race-free per host while instances serve different hosts in parallel; only the audit append
 * (AUDIT_LOCK, held from the append to commit) is then cluster-wide. The lock waits at
 * most `lock_timeout`, and a stalled instance cannot keep it past
 * `idle_in_transaction_session_timeout`.
 *
 * The single-use operations (consumeNonce, useToken, revokeToken, claimTotpStep,
 * addApprovalVote) and the audit chain do not rely on STORE_LOCK: each is one conditional
 * UPDATE / INSERT ... ON CONFLICT DO NOTHING, and appendAudit takes its own advisory lock
 * before reading the head, so they stay correct if the store lock is ever narrowed.
 *
 * Types: BIGINT and count(*) arrive as strings (the row mappers shared with sqlite.ts call
 * Number(); every value we store is a Unix time, counter or step, far below 2^53), BYTEA as
 * Buffer (copied into Uint8Array by the mappers).
 */
import { createHash } from 'node:crypto'
import pg from 'pg'
import { AUDIT_GENESIS, auditHash } from '../../shared/audit.ts'
import { UnlockdError } from '../../shared/errors.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import { MIGRATIONS } from './schema.ts'
import {
  APPROVAL_COLS,
  HOST_COLS,
  OPERATOR_COLS,
  approvalFromRow,
  auditFromRow,
  hostFromRow,
  operatorFromRow,
  toDbValue,
  tokenFromRow,
  volumeFromRow,
} from './sqlite.ts'
import type {
  ApprovalRow,
  NewAudit,
  NonceResult,
  Store,
  StoreTx,
  TxOptions,
  UnlockEventRow,
} from './store.ts'

type Row = Record<string, unknown>

// Advisory lock keys: 0x756e6c6b ("unlk") << 32 | n. Advisory locks are scoped to the current
// database, so unlockd databases sharing one cluster do not contend.
const MIGRATE_LOCK = '8461819956693041153'
const STORE_LOCK = '8461819956693041154'
const AUDIT_LOCK = '8461819956693041155'

/** A stable 63-bit advisory lock key per host id (SHA-256 prefix; collisions only over-serialize). */
function hostLockKey(hostId: string): string {
  const h = createHash('sha256').update(`unlockd-host:${hostId}`).digest()
  return (h.readBigUInt64BE(0) & 0x7fffffffffffffffn).toString()
}

const LOCK_TIMEOUT_MS = 30_000
const IDLE_IN_TX_TIMEOUT_MS = 60_000

/** The URL without its password, for messages. */
export function redactUrl(url: string): string {
  return url.replace(/^(postgres(?:ql)?:\/\/[^:/@]*):[^@/]*@/, '$1:***@')
}

/** Database errors become `store_failed` with the SQLSTATE in the message; others pass through. */
function dbError(err: unknown, what: string): unknown {
  if (err instanceof UnlockdError) return err
  if (err instanceof pg.DatabaseError) {
    const busy = err.code === '55P03' ? ' (database busy: lock wait timed out)' : ''
    return new UnlockdError(
      'store_failed',
      `${what}: database error ${err.code ?? '?'}${busy}: ${err.message}`,
      { cause: err },
    )
  }
  if (err instanceof Error)
    return new UnlockdError('store_failed', `${what}: ${err.message}`, { cause: err })
  return err
}

const noop = (): void => {}

export class PostgresStore implements Store {
  readonly kind = 'postgres' as const
  readonly #pool: pg.Pool
  #closing: Promise<void> | undefined

  private constructor(pool: pg.Pool) {
    this.#pool = pool
  }

  /** Connect, then bring the schema up to date (two instances starting at once take turns). */
  static async connect(url: string): Promise<PostgresStore> {
    const pool = new pg.Pool({
      connectionString: url,
      max: 10,
      connectionTimeoutMillis: 10_000,
      lock_timeout: LOCK_TIMEOUT_MS,
      idle_in_transaction_session_timeout: IDLE_IN_TX_TIMEOUT_MS,
      application_name: 'unlockd',
    })
    // An idle pooled connection that dies (server restart, network) emits 'error'; without a
    // listener that would kill the process. The pool drops it; the next checkout reconnects.
    pool.on('error', noop)
    const store = new PostgresStore(pool)
    try {
      await store.#migrate()
    } catch (err) {
      await pool.end().catch(noop)
      if (err instanceof UnlockdError) throw err
      throw new UnlockdError(
        'store_failed',
        `cannot open PostgreSQL database ${redactUrl(url)}: ${err instanceof Error ? err.message : String(err)}`,
        { cause: err },
      )
    }
    return store
  }

  async #migrate(): Promise<void> {
    const c = await this.#pool.connect()
    c.on('error', noop)
    let broken = false
    try {
      await c.query('BEGIN')
      try {
        // Held until COMMIT: a second instance starting now waits, then sees the new version.
        await c.query(`SELECT pg_advisory_xact_lock(${MIGRATE_LOCK})`)
        await c.query('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)')
        const row = (await c.query<Row>('SELECT version FROM schema_version')).rows[0]
        const current = row ? Number(row['version']) : 0
        if (current > MIGRATIONS.length) {
          throw new UnlockdError(
            'store_failed',
            `database schema version ${current} is newer than this unlockd (${MIGRATIONS.length}); upgrade unlockd`,
          )
        }
        for (let v = current; v < MIGRATIONS.length; v++)
          await c.query((MIGRATIONS[v] as { postgres: string }).postgres)
        if (row) await c.query('UPDATE schema_version SET version = $1', [MIGRATIONS.length])
        else await c.query('INSERT INTO schema_version (version) VALUES ($1)', [MIGRATIONS.length])
        await c.query('COMMIT')
      } catch (err) {
        await c.query('ROLLBACK').catch(() => {
          broken = true
        })
        throw err
      }
    } finally {
      c.removeListener('error', noop)
      c.release(broken)
    }
  }

  async tx<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    let c: pg.PoolClient
    try {
      c = await this.#pool.connect()
    } catch (err) {
      throw dbError(err, 'cannot reach PostgreSQL')
    }
    // A checked-out connection that dies between queries emits 'error'; the failed query reports it.
    c.on('error', noop)
    const state = { done: false }
    let broken = false
    try {
      await run(c, state, 'BEGIN ISOLATION LEVEL READ COMMITTED')
      if (opts.durable === false) {
        // Non-durable work (issuing a random nonce) is one independent insert: it needs neither
        // the one-writer lock nor a synchronous commit, and taking them made storms lock-bound.
        await run(c, state, 'SET LOCAL synchronous_commit = off')
      } else if (opts.host !== undefined) {
        // Reader-writer scheme: host transactions share STORE_LOCK (whole-store transactions
        // such as shred or KEK rotation hold it exclusively) and exclude each other per host.
        // Lock order is always STORE_LOCK → host → AUDIT_LOCK, so no deadlock is possible.
        await run(c, state, `SELECT pg_advisory_xact_lock_shared(${STORE_LOCK})`)
        await c.query('SELECT pg_advisory_xact_lock($1::bigint)', [hostLockKey(opts.host)])
      } else {
        await run(c, state, `SELECT pg_advisory_xact_lock(${STORE_LOCK})`)
      }
      const out = await fn(txApi(c, state))
      const res = await run(c, state, 'COMMIT')
      // COMMIT of a transaction that already failed (fn swallowed an error) answers ROLLBACK.
      if (res.command !== 'COMMIT')
        throw new UnlockdError(
          'store_failed',
          'transaction was rolled back by the database after an earlier error',
        )
      return out
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {
        broken = true
      })
      throw err
    } finally {
      state.done = true
      c.removeListener('error', noop)
      c.release(broken)
    }
  }

  /**
   * Rewrite the tables that held deleted secrets (VACUUM FULL: the live rows go to a new file and
   * the old file is unlinked; plain VACUUM would only mark dead tuples reusable and leave their
   * bytes in the page). What PostgreSQL cannot promise: the deleted rows were also written to the
   * WAL, which keeps them in pg_wal until the segment is recycled and overwritten (sooner after a
   * CHECKPOINT, which needs superuser or pg_checkpoint, so it is tried and skipped when refused),
   * and forever in WAL archives, replicas' histories and base backups; the unlinked file's blocks
   * stay on the disk until the filesystem reuses them. That is why shred also rotates and destroys
   * the KEK: those copies are ciphertext under a key that no longer exists.
   */
  async scrub(): Promise<void> {
    try {
      // VACUUM cannot run inside a transaction block: plain pool queries (autocommit).
      await this.#pool.query('VACUUM FULL volumes')
      await this.#pool.query('VACUUM FULL operators')
    } catch (err) {
      throw dbError(err, 'scrub')
    }
    try {
      await this.#pool.query('CHECKPOINT')
    } catch (err) {
      if (!(err instanceof pg.DatabaseError && err.code === '42501'))
        throw dbError(err, 'scrub checkpoint')
    }
  }

  close(): Promise<void> {
    this.#closing ??= this.#pool.end()
    return this.#closing
  }
}

async function run(
  c: pg.PoolClient,
  state: { done: boolean },
  sql: string,
  params: unknown[] = [],
): Promise<pg.QueryResult<Row>> {
  if (state.done) throw new TypeError('StoreTx used after its transaction ended')
  try {
    return await c.query<Row>(sql, params)
  } catch (err) {
    throw dbError(err, 'query failed')
  }
}

function txApi(c: pg.PoolClient, state: { done: boolean }): StoreTx {
  const rows = async (sql: string, params: unknown[] = []): Promise<Row[]> =>
    (await run(c, state, sql, params)).rows
  const one = async (sql: string, params: unknown[] = []): Promise<Row | undefined> =>
    (await run(c, state, sql, params)).rows[0]
  const changes = async (sql: string, params: unknown[] = []): Promise<number> =>
    (await run(c, state, sql, params)).rowCount ?? 0
  const count = async (sql: string, params: unknown[] = []): Promise<number> =>
    Number((await one(sql, params))?.['n'] ?? 0)
  const update = async (
    table: string,
    cols: Record<string, string>,
    id: string,
    patch: Record<string, unknown>,
  ): Promise<void> => {
    // Column names come from the fixed maps, never from the patch.
    const keys = Object.keys(patch).filter((k) => cols[k] !== undefined)
    if (keys.length === 0) return
    const sets = keys.map((k, i) => `${cols[k] as string} = $${i + 1}`).join(', ')
    await run(c, state, `UPDATE ${table} SET ${sets} WHERE id = $${keys.length + 1}`, [
      ...keys.map((k) => toDbValue(k, patch[k])),
      id,
    ])
  }
  const buf = (b: Uint8Array | null): Buffer | null => (b === null ? null : Buffer.from(b))

  return {
    getHost: async (id) => {
      const r = await one('SELECT * FROM hosts WHERE id = $1', [id])
      return r && hostFromRow(r)
    },
    getHostByName: async (name) => {
      // A live host wins over shredded tombstones of the same name.
      const r = await one(
        "SELECT * FROM hosts WHERE name = $1 ORDER BY (state = 'shredded'), created_at DESC LIMIT 1",
        [name],
      )
      return r && hostFromRow(r)
    },
    listHosts: async () =>
      (await rows('SELECT * FROM hosts ORDER BY name, created_at, id')).map(hostFromRow),
    insertHost: async (h) => {
      await run(
        c,
        state,
        `INSERT INTO hosts (id, name, state, state_reason, signing_jwk, sealing_jwk, policy, created_at, last_seen_at, last_unlock_at, last_boot_id, last_source, tang)
        VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)`,
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
      )
    },
    updateHost: (id, patch) => update('hosts', HOST_COLS, id, patch),

    listVolumes: async (hostId) =>
      (await rows('SELECT * FROM volumes WHERE host_id = $1 ORDER BY name', [hostId])).map(
        volumeFromRow,
      ),
    upsertVolume: async (v) => {
      await run(
        c,
        state,
        `INSERT INTO volumes (host_id, name, kind, ref, kek_version, iv, ct, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)
        ON CONFLICT (host_id, name) DO UPDATE SET kind = EXCLUDED.kind, ref = EXCLUDED.ref, kek_version = EXCLUDED.kek_version, iv = EXCLUDED.iv, ct = EXCLUDED.ct`,
        [
          v.hostId,
          v.name,
          v.kind,
          v.ref,
          v.kekVersion,
          Buffer.from(v.iv),
          Buffer.from(v.ct),
          v.createdAt,
        ],
      )
    },
    deleteVolumes: async (hostId, names) =>
      names === undefined
        ? changes('DELETE FROM volumes WHERE host_id = $1', [hostId])
        : changes('DELETE FROM volumes WHERE host_id = $1 AND name = ANY($2::text[])', [
            hostId,
            [...names],
          ]),
    listVolumesWithKekBelow: async (version, limit) =>
      (
        await rows('SELECT * FROM volumes WHERE kek_version < $1 ORDER BY host_id, name LIMIT $2', [
          version,
          limit,
        ])
      ).map(volumeFromRow),
    countVolumesWithKekBelow: (version) =>
      count('SELECT count(*) AS n FROM volumes WHERE kek_version < $1', [version]),

    insertToken: async (t) => {
      await run(
        c,
        state,
        'INSERT INTO tokens (id, hash, host_name, cidrs, created_at, expires_at, used_at, used_by_host, revoked_at, created_by) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)',
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
      )
    },
    getTokenByHash: async (hash) => {
      const r = await one('SELECT * FROM tokens WHERE hash = $1', [hash])
      return r && tokenFromRow(r)
    },
    getToken: async (id) => {
      const r = await one('SELECT * FROM tokens WHERE id = $1', [id])
      return r && tokenFromRow(r)
    },
    // Conditional UPDATEs: a concurrent second caller blocks on the row lock, re-checks the
    // WHERE against the committed row and changes nothing.
    useToken: async (id, now, hostId) =>
      (await changes(
        'UPDATE tokens SET used_at = $1, used_by_host = $2 WHERE id = $3 AND used_at IS NULL AND revoked_at IS NULL',
        [now, hostId, id],
      )) === 1,
    revokeToken: async (id, now) =>
      (await changes(
        'UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND used_at IS NULL',
        [now, id],
      )) === 1,
    listTokens: async () =>
      (await rows('SELECT * FROM tokens ORDER BY created_at DESC, id')).map(tokenFromRow),

    insertNonce: async (nonce, exp) => {
      await run(c, state, 'INSERT INTO nonces (nonce, expires_at, used_at) VALUES ($1, $2, NULL)', [
        nonce,
        exp,
      ])
    },
    consumeNonce: async (nonce, now): Promise<NonceResult> => {
      if (
        (await changes(
          'UPDATE nonces SET used_at = $1 WHERE nonce = $2 AND used_at IS NULL AND expires_at > $1',
          [now, nonce],
        )) === 1
      )
        return 'ok'
      const r = await one('SELECT used_at, expires_at FROM nonces WHERE nonce = $1', [nonce])
      if (!r) return 'unknown'
      return r['used_at'] !== null ? 'reused' : 'expired'
    },
    purgeNonces: (olderThan) => changes('DELETE FROM nonces WHERE expires_at < $1', [olderThan]),

    recordUnlock: async (u: UnlockEventRow) => {
      await run(
        c,
        state,
        'INSERT INTO unlock_events (host_id, at, boot_id, source, outcome, code) VALUES ($1,$2,$3,$4,$5,$6)',
        [u.hostId, u.at, u.bootId, u.source, u.outcome, u.code],
      )
    },
    countUnlocks: (hostId, since, outcome) =>
      count(
        'SELECT count(*) AS n FROM unlock_events WHERE host_id = $1 AND at >= $2 AND outcome = $3',
        [hostId, since, outcome],
      ),
    recentBootIds: async (hostId, since) =>
      (
        await rows(
          "SELECT DISTINCT boot_id FROM unlock_events WHERE host_id = $1 AND at >= $2 AND outcome = 'released' ORDER BY boot_id",
          [hostId, since],
        )
      ).map((r) => String(r['boot_id'])),

    insertOperator: async (o) => {
      await run(
        c,
        state,
        'INSERT INTO operators (id, name, token_hash, totp_kek_version, totp_iv, totp_ct, totp_last_step, created_at, removed_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)',
        [
          o.id,
          o.name,
          o.tokenHash,
          o.totpKekVersion,
          buf(o.totpIv),
          buf(o.totpCt),
          o.totpLastStep,
          o.createdAt,
          o.removedAt,
        ],
      )
    },
    getOperatorByTokenHash: async (h) => {
      const r = await one('SELECT * FROM operators WHERE token_hash = $1 AND removed_at IS NULL', [
        h,
      ])
      return r && operatorFromRow(r)
    },
    getOperatorByName: async (n) => {
      const r = await one('SELECT * FROM operators WHERE name = $1 AND removed_at IS NULL', [n])
      return r && operatorFromRow(r)
    },
    getOperator: async (id) => {
      const r = await one('SELECT * FROM operators WHERE id = $1', [id])
      return r && operatorFromRow(r)
    },
    listOperators: async () =>
      (await rows('SELECT * FROM operators WHERE removed_at IS NULL ORDER BY name, id')).map(
        operatorFromRow,
      ),
    updateOperator: (id, patch) => update('operators', OPERATOR_COLS, id, patch),
    claimTotpStep: async (id, step) =>
      (await changes(
        'UPDATE operators SET totp_last_step = $1 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)',
        [step, id],
      )) === 1,
    recordTotpFailure: async (id, at) => {
      await run(c, state, 'INSERT INTO totp_failures (operator_id, at) VALUES ($1, $2)', [id, at])
    },
    countTotpFailures: (id, since) =>
      count('SELECT count(*) AS n FROM totp_failures WHERE operator_id = $1 AND at >= $2', [
        id,
        since,
      ]),
    listOperatorsWithTotpKekBelow: async (version) =>
      (
        await rows(
          'SELECT * FROM operators WHERE totp_kek_version IS NOT NULL AND totp_kek_version < $1 ORDER BY name, id',
          [version],
        )
      ).map(operatorFromRow),

    insertApproval: async (a: ApprovalRow) => {
      await run(
        c,
        state,
        'INSERT INTO approvals (id, host_id, volumes, boot_id, source, rule, required, created_at, expires_at, state, decided_at, reason) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12)',
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
        ],
      )
    },
    getApproval: async (id) => {
      const r = await one('SELECT * FROM approvals WHERE id = $1', [id])
      return r && approvalFromRow(r)
    },
    listApprovals: async (st) =>
      (st === undefined
        ? await rows('SELECT * FROM approvals ORDER BY created_at, id')
        : await rows('SELECT * FROM approvals WHERE state = $1 ORDER BY created_at, id', [st])
      ).map(approvalFromRow),
    updateApproval: (id, patch) => update('approvals', APPROVAL_COLS, id, patch),
    // The primary key (approval_id, operator_id) decides: a concurrent duplicate waits for the
    // first insert to commit, then does nothing.
    addApprovalVote: async (aid, oid, at) =>
      (await changes(
        'INSERT INTO approval_votes (approval_id, operator_id, at) VALUES ($1,$2,$3) ON CONFLICT DO NOTHING',
        [aid, oid, at],
      )) === 1,
    countApprovalVotes: (aid) =>
      count('SELECT count(*) AS n FROM approval_votes WHERE approval_id = $1', [aid]),
    approvalVoters: async (aid) =>
      (
        await rows(
          'SELECT o.name FROM approval_votes v JOIN operators o ON o.id = v.operator_id WHERE v.approval_id = $1 ORDER BY v.at, o.name',
          [aid],
        )
      ).map((r) => String(r['name'])),

    appendAudit: async (e: NewAudit) => {
      // Held until this transaction ends; under READ COMMITTED the next statement then sees the
      // head committed by whoever held it before, so the chain stays linear across instances.
      await run(c, state, `SELECT pg_advisory_xact_lock(${AUDIT_LOCK})`)
      const head = await one('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1')
      const fields = {
        seq: head ? Number(head['seq']) + 1 : 1,
        prevHash: head ? String(head['hash']) : AUDIT_GENESIS,
        ...e,
      }
      const entry: AuditEntry = { ...fields, hash: await auditHash(fields) }
      await run(
        c,
        state,
        'INSERT INTO audit (seq, at, actor, action, host, detail, prev_hash, hash) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)',
        [
          entry.seq,
          entry.at,
          entry.actor,
          entry.action,
          entry.host,
          JSON.stringify(entry.detail),
          entry.prevHash,
          entry.hash,
        ],
      )
      return entry
    },
    listAudit: async (afterSeq, limit) =>
      (
        await rows('SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2', [afterSeq, limit])
      ).map(auditFromRow),

    getMeta: async (key) => {
      const r = await one('SELECT value FROM meta WHERE key = $1', [key])
      return r ? String(r['value']) : undefined
    },
    setMeta: async (key, value) => {
      if (value === undefined) await run(c, state, 'DELETE FROM meta WHERE key = $1', [key])
      else
        await run(
          c,
          state,
          'INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value',
          [key, value],
        )
    },
  }
}
