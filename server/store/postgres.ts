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
 *  - a rerun repeats effects outside the database (approval-seam.ts emits an event inside the
 *    transaction);
 *  - waiting on a lock never reruns `fn`, never livelocks, and needs no retry bound.
 * The hot path is narrowed: a transaction that declares `{ host }` (unlock, approval poll,
 * watch) takes STORE_LOCK shared plus an exclusive lock for that host, so the checks above stay
 * race-free per host while instances serve different hosts in parallel. The audit append takes
 * no lock at all: it numbers its entry from a sequence and MACs the entry alone; the sealer
 * (server/escrow/audit-chain.ts) chains committed entries later in a short transaction of its
 * own (AUDIT_LOCK), so no lock is held through any other transaction's COMMIT. The lock waits at
 * most `lock_timeout`, and a stalled instance cannot keep it past
 * `idle_in_transaction_session_timeout`.
 *
 * The single-use operations (consumeNonce, useToken, revokeToken, claimTotpStep,
 * addApprovalVote) and the audit chain do not rely on STORE_LOCK: each is one conditional
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
import type { Store, StoreTx, TxOptions } from './store.ts'

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
  #auditKey: AuditKeySource = () => undefined

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

  useAuditKey(key: AuditKeySource): void {
    this.#auditKey = key
  }

  tx<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    return commitDenials((body) => this.#tx(body, opts), fn)
  }

  async #tx<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions): Promise<T> {
    let c: pg.PoolClient
    try {
      c = await this.#pool.connect()
    } catch (err) {
      throw dbError(err, 'cannot reach PostgreSQL')
    }
    // A checked-out connection that dies between queries emits 'error'; the failed query reports it.
    c.on('error', noop)
    const api = sqlStoreTx(driverOn(c), this.#auditKey)
    let broken = false
    try {
      await run(c, 'BEGIN ISOLATION LEVEL READ COMMITTED')
      if (opts.durable === false) {
        // Non-durable work (issuing a random nonce) is one independent insert: it needs neither
        // the one-writer lock nor a synchronous commit, and taking them made storms lock-bound.
        await run(c, 'SET LOCAL synchronous_commit = off')
      } else if (opts.host !== undefined) {
        // Reader-writer scheme: host transactions share STORE_LOCK (whole-store transactions
        // such as shred or KEK rotation hold it exclusively) and exclude each other per host.
        // Lock order is always STORE_LOCK → host (→ AUDIT_LOCK, sealer only): no deadlock.
        await run(c, `SELECT pg_advisory_xact_lock_shared(${STORE_LOCK})`)
        await run(c, 'SELECT pg_advisory_xact_lock($1::bigint)', [hostLockKey(opts.host)])
      } else {
        await run(c, `SELECT pg_advisory_xact_lock(${STORE_LOCK})`)
      }
      const out = await fn(api.tx)
      const res = await run(c, 'COMMIT')
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
      api.end()
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

/** Every statement of a transaction: database errors become `store_failed`. */
async function run(
  c: pg.PoolClient,
  sql: string,
  params: readonly unknown[] = [],
): Promise<pg.QueryResult<Row>> {
  try {
    return await c.query<Row>(sql, params as unknown[])
  } catch (err) {
    throw dbError(err, 'query failed')
  }
}

function driverOn(c: pg.PoolClient): SqlDriver {
  return {
    placeholders: '$n',
    rows: async (sql, params) => (await run(c, sql, params)).rows,
    one: async (sql, params) => (await run(c, sql, params)).rows[0],
    changes: async (sql, params) => (await run(c, sql, params)).rowCount ?? 0,
    oneOf: (values) => ({ sql: '= ANY(?::text[])', params: [[...values]] }),
    // Not transactional and never waited on: a rolled-back append leaves a gap in seq, which
    // is why the chain order is the sealer's position, not seq.
    nextAuditSeq: async () =>
      Number((await run(c, "SELECT nextval('audit_seq') AS n")).rows[0]?.['n']),
    // Sealer only: held until its short transaction ends; under READ COMMITTED the next
    // statement then sees the head committed by the previous sealer, so the chain stays linear.
    lockAuditHead: async () => {
      await run(c, `SELECT pg_advisory_xact_lock(${AUDIT_LOCK})`)
    },
  }
}
