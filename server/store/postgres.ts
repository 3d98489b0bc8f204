/**
 * PostgreSQL store (`pg`): several stateless server instances share one database.
 *
 * Isolation: READ COMMITTED. Transactions of the whole store (admin changes, shred, KEK
 * rotation, the audit sealer) take `LOCK TABLE hosts IN EXCLUSIVE MODE`, so they run one at a
 * time, exactly like the SQLite store's single writer. Why not SERIALIZABLE with retries:
 *  - the use cases are read-check-write sequences written against that single writer (an
 *    approved request releases once in poll.ts, `maxUnlocks` counts then inserts, votes are
 *    counted after they are cast); with plain READ COMMITTED two instances could both pass a
 *    check, and finer locks would have to live in every use case;
 *  - a rerun repeats effects outside the database (approval-seam.ts emits an event inside the
 *    transaction);
 *  - waiting on a lock never reruns `fn`, never livelocks, and needs no retry bound.
 * The hot path has no global lock: a transaction that declares `{ host }` (unlock, approval
 * poll, watch) takes `hosts` in ROW SHARE mode (a weak relation lock, which PostgreSQL keeps in
 * each backend's fast-path slots: host transactions never queue on one another for it, while
 * EXCLUSIVE still waits for them and holds them off) plus an exclusive advisory lock for that
 * host, so the checks above stay race-free per host while instances serve different hosts in
 * parallel. BEGIN and both locks travel in one round trip. The audit append takes no lock at
 * all: it numbers its entry from a sequence and MACs the entry alone; the sealer
 * (server/escrow/audit-chain.ts) chains committed entries later in a short transaction of its
 * own (AUDIT_LOCK), so no lock is held through any other transaction's COMMIT. Concurrent
 * commits group in the WAL by themselves (one flush covers every commit record written before
 * it), which is what PostgreSQL's group commit is; nothing here serializes them.
 *
 * Fewer round trips: `{ readOnly: true }` work (reading the signer before its signature is
 * checked) runs as autocommit statements with no BEGIN, lock or COMMIT; non-durable work (a
 * nonce) runs as one autocommit statement on a small second pool whose sessions have
 * synchronous_commit off. Each lock waits at most `lock_timeout`, and a stalled instance cannot
 * keep one past `idle_in_transaction_session_timeout`.
 *
 * The single-use operations (consumeNonce, useToken, revokeToken, claimTotpStep,
 * addApprovalVote) and the audit chain do not rely on the store lock: each is one conditional
 * UPDATE / INSERT ... ON CONFLICT DO NOTHING, appendAudit is one insert numbered by a sequence,
 * and the sealer takes its own advisory lock before reading the head, so they stay correct if
 * the store lock is ever narrowed.
 *
 * The statements themselves are shared with SQLite (sql-tx.ts); this file is the transaction
 * and locking scheme, array parameters, scrubbing and migrations. Types: BIGINT and count(*)
 * arrive as strings and BYTEA as Buffer; the row mappers (rows.ts) convert both.
 */
import { createHash } from 'node:crypto'
import pg from 'pg'
import { UnlockdError } from '../../shared/errors.ts'
import { commitDenials } from './denial.ts'
import type { Row } from './rows.ts'
import { MIGRATIONS } from './schema.ts'
import { sqlStoreTx, type AuditKeySource, type SqlDriver } from './sql-tx.ts'
import type { CommitStats, Store, StoreTx, TxOptions } from './store.ts'

// Advisory lock keys: 0x756e6c6b ("unlk") << 32 | n. Advisory locks are scoped to the current
// database, so unlockd databases sharing one cluster do not contend.
const MIGRATE_LOCK = '8461819956693041153'
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
  /** Sessions with synchronous_commit off, for `{ durable: false }` work. */
  readonly #volatile: pg.Pool
  #stats = { transactions: 0, commits: 0, syncedCommits: 0, roundTrips: 0 }
  #closing: Promise<void> | undefined
  #auditKey: AuditKeySource = () => undefined

  private constructor(pool: pg.Pool, volatile: pg.Pool) {
    this.#pool = pool
    this.#volatile = volatile
  }

  /** Transactions, commits, synced commits and database round trips, since connecting. */
  commitStats(): CommitStats {
    return { ...this.#stats }
  }

  /** Connect, then bring the schema up to date (two instances starting at once take turns). */
  static async connect(url: string): Promise<PostgresStore> {
    const base = {
      connectionString: url,
      connectionTimeoutMillis: 10_000,
      lock_timeout: LOCK_TIMEOUT_MS,
      idle_in_transaction_session_timeout: IDLE_IN_TX_TIMEOUT_MS,
      application_name: 'unlockd',
    }
    const pool = new pg.Pool({ ...base, max: 10 })
    const volatile = new pg.Pool({ ...base, max: 4, options: '-c synchronous_commit=off' })
    // An idle pooled connection that dies (server restart, network) emits 'error'; without a
    // listener that would kill the process. The pool drops it; the next checkout reconnects.
    pool.on('error', noop)
    volatile.on('error', noop)
    const store = new PostgresStore(pool, volatile)
    try {
      await store.#migrate()
    } catch (err) {
      await pool.end().catch(noop)
      await volatile.end().catch(noop)
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

  useAuditKey(key: AuditKeySource): void {
    this.#auditKey = key
  }

  tx<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    return commitDenials((body) => this.#tx(body, opts), fn)
  }

  async #tx<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions): Promise<T> {
    if (opts.readOnly === true || opts.durable === false) return this.#autocommit(fn, opts)
    let c: pg.PoolClient
    try {
      c = await this.#pool.connect()
    } catch (err) {
      throw dbError(err, 'cannot reach PostgreSQL')
    }
    // A checked-out connection that dies between queries emits 'error'; the failed query reports it.
    c.on('error', noop)
    const stats = this.#stats
    const api = sqlStoreTx(driverOn(c, stats), this.#auditKey)
    let broken = false
    stats.transactions++
    try {
      // One round trip (simple protocol, several statements; the keys are numeric literals).
      // Lock order is always hosts → host (→ AUDIT_LOCK, sealer only): no deadlock.
      await run(
        c,
        stats,
        opts.host !== undefined
          ? `BEGIN ISOLATION LEVEL READ COMMITTED; LOCK TABLE hosts IN ROW SHARE MODE; SELECT pg_advisory_xact_lock(${hostLockKey(opts.host)})`
          : 'BEGIN ISOLATION LEVEL READ COMMITTED; LOCK TABLE hosts IN EXCLUSIVE MODE',
      )
      const out = await fn(api.tx)
      const res = await run(c, stats, 'COMMIT')
      // COMMIT of a transaction that already failed (fn swallowed an error) answers ROLLBACK.
      if (res.command !== 'COMMIT')
        throw new UnlockdError(
          'store_failed',
          'transaction was rolled back by the database after an earlier error',
        )
      stats.commits++
      stats.syncedCommits++
      return out
    } catch (err) {
      await c.query('ROLLBACK').catch(() => {
        broken = true
      })
      throw err
    } finally {
      api.end()
      c.removeListener('error', noop)
      c.release(broken)
    }
  }

  /**
   * Work of one statement (or independent reads) with no transaction around it: each statement
   * commits on its own. Non-durable work runs on the synchronous_commit=off pool.
   */
  async #autocommit<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions): Promise<T> {
    const pool = opts.durable === false ? this.#volatile : this.#pool
    let c: pg.PoolClient
    try {
      c = await pool.connect()
    } catch (err) {
      throw dbError(err, 'cannot reach PostgreSQL')
    }
    c.on('error', noop)
    const stats = this.#stats
    const api = sqlStoreTx(driverOn(c, stats), this.#auditKey)
    stats.transactions++
    try {
      const out = await fn(api.tx)
      if (opts.durable !== false) stats.syncedCommits++
      stats.commits++
      return out
    } finally {
      api.end()
      c.removeListener('error', noop)
      c.release()
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
    this.#closing ??= Promise.all([this.#pool.end(), this.#volatile.end()]).then(noop)
    return this.#closing
  }
}

/** Every statement of a transaction: database errors become `store_failed`. */
async function run(
  c: pg.PoolClient,
  stats: { roundTrips: number },
  sql: string,
  params: readonly unknown[] = [],
): Promise<pg.QueryResult<Row>> {
  stats.roundTrips++
  try {
    // Several statements in one string go by the simple protocol, which takes no parameters;
    // their result is an array, of which the last one is the answer.
    const res = await c.query<Row>(sql, params.length > 0 ? (params as unknown[]) : undefined)
    return Array.isArray(res) ? (res[res.length - 1] as pg.QueryResult<Row>) : res
  } catch (err) {
    throw dbError(err, 'query failed')
  }
}

function driverOn(c: pg.PoolClient, stats: { roundTrips: number }): SqlDriver {
  return {
    placeholders: '$n',
    rows: async (sql, params) => (await run(c, stats, sql, params)).rows,
    one: async (sql, params) => (await run(c, stats, sql, params)).rows[0],
    changes: async (sql, params) => (await run(c, stats, sql, params)).rowCount ?? 0,
    oneOf: (values) => ({ sql: '= ANY(?::text[])', params: [[...values]] }),
    // Not transactional and never waited on: a rolled-back append leaves a gap in seq, which
    // is why the chain order is the sealer's position, not seq.
    nextAuditSeq: async () =>
      Number((await run(c, stats, "SELECT nextval('audit_seq') AS n")).rows[0]?.['n']),
    // Sealer only: held until its short transaction ends; under READ COMMITTED the next
    // statement then sees the head committed by the previous sealer, so the chain stays linear.
    lockAuditHead: async () => {
      await run(c, stats, `SELECT pg_advisory_xact_lock(${AUDIT_LOCK})`)
    },
  }
}
