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
import { UnlockdError } from '../../shared/errors.ts'
import { commitDenials } from './denial.ts'
import type { Row } from './rows.ts'
import { MIGRATIONS } from './schema.ts'
import { sqlStoreTx, type AuditKeySource, type SqlDriver } from './sql-tx.ts'
import type { Store, StoreTx, TxOptions } from './store.ts'

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
    return commitDenials((body) => this.#tx(body, opts), fn)
  }

  #tx<T>(fn: (t: StoreTx) => Promise<T>, opts: TxOptions): Promise<T> {
    const volatile = opts.durable === false
    return this.#mutex.run(async () => {
      // In WAL mode NORMAL skips this commit's fsync; the next FULL commit syncs the WAL up to
      // and including it, so order is kept and nothing is ever torn.
      if (volatile) this.#db.pragma('synchronous = NORMAL')
      try {
        this.#db.exec('BEGIN IMMEDIATE')
        const api = sqlStoreTx(this.#driver, this.#auditKey)
        try {
          const out = await fn(api.tx)
          this.#db.exec('COMMIT')
          return out
        } catch (err) {
          if (this.#db.inTransaction) this.#db.exec('ROLLBACK')
          // Database failures become one typed error (like the PostgreSQL store); ours pass through.
          if (err instanceof Database.SqliteError)
            throw new UnlockdError('store_failed', `database error (${err.code})`, { cause: err })
          throw err
        } finally {
          api.end()
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
