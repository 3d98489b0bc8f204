/**
 * Embedded default store: one SQLite file (better-sqlite3) in WAL mode with synchronous=FULL
 * (a committed unlock, enrollment or shred survives power loss) and secure_delete=ON (deleted
 * blobs are overwritten with zeros in the page, which shred relies on).
 *
 * better-sqlite3 is synchronous; transactions queue for the one writer, so an `await` inside
 * one can never interleave another's statements.
 *
 * Group commit: the writer runs queued transactions back to back inside ONE SQLite transaction,
 * each in a SAVEPOINT of its own (a member that throws rolls back to its savepoint and leaves
 * the others intact), and commits them with one COMMIT, hence one WAL fsync for the batch. The
 * batch takes whatever is queued when a member finishes, after one event-loop turn (the short
 * window in which requests already read off the sockets join); with nothing queued it commits
 * at once, so a lone transaction pays one turn. No member's result, return value or error, is
 * handed back before the COMMIT returned: a caller never acknowledges work that is not durable.
 * If the COMMIT fails, every member fails with it.
 */
import Database from 'better-sqlite3'
import { chmodSync, existsSync } from 'node:fs'
import { UnlockdError } from '../../shared/errors.ts'
import { commitDenials } from './denial.ts'
import type { Row } from './rows.ts'
import { MIGRATIONS } from './schema.ts'
import { sqlStoreTx, type AuditKeySource, type SqlDriver } from './sql-tx.ts'
import type { CommitStats, Store, StoreTx, TxOptions } from './store.ts'

/** A queued transaction (or an exclusive job such as scrub) waiting for the writer. */
interface Job {
  /** undefined: an exclusive job run outside any transaction. */
  fn: ((t: StoreTx) => Promise<unknown>) | undefined
  exclusive?: () => void
  durable: boolean
  resolve: (v: unknown) => void
  reject: (e: unknown) => void
}

/** A member's outcome, settled only once the batch's COMMIT returned. */
type Settle = { job: Job; ok: true; value: unknown } | { job: Job; ok: false; err: unknown }

/** At most this many transactions share one commit, so one batch cannot starve the event loop. */
const MAX_BATCH = 256
/** ... and a batch stops taking members after this long (ms), bounding the first one's wait. */
const MAX_BATCH_MS = 20

export class SqliteStore implements Store {
  readonly kind = 'sqlite' as const
  readonly path: string
  #db: Database.Database
  #queue: Job[] = []
  #draining = false
  #stats = { transactions: 0, commits: 0, syncedCommits: 0 }
  #stmts = new Map<string, Database.Statement>()
  #auditKey: AuditKeySource = () => undefined

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

  useAuditKey(key: AuditKeySource): void {
    this.#auditKey = key
  }

  tx<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions = {}): Promise<T> {
    return commitDenials((body) => this.#enqueue(body, opts.durable !== false), fn)
  }

  /** Transactions run, commits made, and commits that synced the WAL (fsync), since opening. */
  commitStats(): CommitStats {
    return { ...this.#stats, roundTrips: 0 }
  }

  #enqueue<T>(fn: (t: StoreTx) => Promise<T>, durable: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({
        fn: fn as (t: StoreTx) => Promise<unknown>,
        durable,
        resolve: resolve as (v: unknown) => void,
        reject,
      })
      this.#kick()
    })
  }

  /** Run `job` alone, with no transaction open (scrub, close). */
  #exclusive(job: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({
        fn: undefined,
        exclusive: job,
        durable: true,
        resolve: resolve as (v: unknown) => void,
        reject,
      })
      this.#kick()
    })
  }

  #kick(): void {
    if (this.#draining) return
    this.#draining = true
    void this.#drain()
      .catch((err: unknown) => {
        // Only a broken connection gets here (a failed ROLLBACK); whatever still waits fails.
        for (const j of this.#queue.splice(0)) j.reject(storeError(err))
      })
      .finally(() => {
        this.#draining = false
        if (this.#queue.length > 0) this.#kick()
      })
  }

  async #drain(): Promise<void> {
    while (this.#queue.length > 0) {
      const head = this.#queue[0] as Job
      if (head.fn === undefined) {
        this.#queue.shift()
        try {
          head.exclusive?.()
          head.resolve(undefined)
        } catch (err) {
          head.reject(err)
        }
        continue
      }
      await this.#batch()
    }
  }

  /** One SQLite transaction for every transaction queued while it runs (up to MAX_BATCH). */
  async #batch(): Promise<void> {
    const done: Settle[] = []
    let aborted: unknown
    // The safety level cannot change inside a transaction: a batch headed by a non-durable
    // transaction takes only non-durable members; a durable batch takes both kinds.
    const synced = (this.#queue[0] as Job).durable
    try {
      // In WAL mode NORMAL skips this commit's fsync; the next FULL commit syncs the WAL up to
      // and including it, so order is kept and nothing is ever torn.
      if (!synced) this.#db.pragma('synchronous = NORMAL')
      this.#db.exec('BEGIN IMMEDIATE')
    } catch (err) {
      this.#fullSync(synced)
      // Nothing ran: the head fails with it (the others stay queued and try again).
      ;(this.#queue.shift() as Job).reject(storeError(err))
      return
    }
    const t0 = performance.now()
    while (done.length < MAX_BATCH && performance.now() - t0 < MAX_BATCH_MS) {
      let job = this.#queue[0]
      if (job?.fn === undefined && done.length > 0) {
        // The window: requests already read off their sockets get to queue before the commit.
        await new Promise<void>((r) => setImmediate(r))
        job = this.#queue[0]
      }
      if (job?.fn === undefined || (job.durable && !synced)) break
      this.#queue.shift()
      const outcome = await this.#member(job)
      if (!this.#db.inTransaction) {
        // SQLite rolled the whole transaction back (I/O error, disk full): every member is lost.
        aborted = outcome.ok
          ? new UnlockdError('store_failed', 'database transaction was rolled back')
          : outcome.err
        for (const d of done) if (d.ok) Object.assign(d, { ok: false, err: aborted })
        done.push({ job, ok: false, err: aborted })
        break
      }
      done.push(outcome)
    }
    if (aborted === undefined) {
      try {
        this.#db.exec('COMMIT')
        this.#stats.commits++
        if (synced) this.#stats.syncedCommits++
      } catch (err) {
        aborted = storeError(err)
        if (this.#db.inTransaction) this.#db.exec('ROLLBACK')
      }
    } else if (this.#db.inTransaction) this.#db.exec('ROLLBACK')
    this.#fullSync(synced)
    this.#stats.transactions += done.length
    for (const d of done) {
      if (aborted !== undefined) d.job.reject(aborted)
      else if (d.ok) d.job.resolve(d.value)
      else d.job.reject(d.err)
    }
  }

  /** Back to synchronous=FULL after a non-durable batch (not on a closed database). */
  #fullSync(synced: boolean): void {
    if (!synced && this.#db.open) this.#db.pragma('synchronous = FULL')
  }

  /** One member in its own savepoint; nothing is settled here. */
  async #member(job: Job): Promise<Settle> {
    const fn = job.fn as (t: StoreTx) => Promise<unknown>
    this.#db.exec('SAVEPOINT member')
    const api = sqlStoreTx(this.#driver, this.#auditKey)
    try {
      const value = await fn(api.tx)
      this.#db.exec('RELEASE member')
      return { job, ok: true, value }
    } catch (err) {
      if (this.#db.inTransaction) {
        this.#db.exec('ROLLBACK TO member')
        this.#db.exec('RELEASE member')
      }
      return { job, ok: false, err: storeError(err) }
    } finally {
      api.end()
    }
  }

  async scrub(): Promise<void> {
    await this.#exclusive(() => {
      // secure_delete already zeroed the cells; the WAL may still hold old page images.
      this.#db.pragma('wal_checkpoint(TRUNCATE)')
      this.#db.exec('VACUUM')
      this.#db.pragma('wal_checkpoint(TRUNCATE)')
    })
  }

  async close(): Promise<void> {
    await this.#exclusive(() => {
      if (this.#db.open) {
        this.#db.pragma('wal_checkpoint(TRUNCATE)')
        this.#db.close()
      }
    })
  }

  /** One writer (BEGIN IMMEDIATE): the next number is max + 1 and the head needs no lock. */
  readonly #driver: SqlDriver = {
    placeholders: '?',
    rows: async (sql, params) => this.#s(sql).all(...params) as Row[],
    one: async (sql, params) => this.#s(sql).get(...params) as Row | undefined,
    changes: async (sql, params) => this.#s(sql).run(...params).changes,
    oneOf: (values) => ({ sql: `IN (${values.map(() => '?').join(', ')})`, params: [...values] }),
    nextAuditSeq: async () =>
      Number(
        (this.#s('SELECT COALESCE(max(seq), 0) + 1 AS n FROM audit').get() as { n: number }).n,
      ),
    lockAuditHead: async () => {},
  }
}

/** Database failures become one typed error (like the PostgreSQL store); ours pass through. */
function storeError(err: unknown): unknown {
  if (err instanceof Database.SqliteError)
    return new UnlockdError('store_failed', `database error (${err.code}) ${err.message}`, {
      cause: err,
    })
  return err
}
