/**
 * SQLite group commit: concurrent transactions share one COMMIT (one WAL fsync), each keeps its
 * own outcome (a member that throws rolls back alone), and nothing resolves before the COMMIT.
 */
import test, { type ExecutionContext } from 'ava'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import { SqliteStore } from '../../server/store/sqlite.ts'
import { tempDir } from '../helpers/tmp.ts'

async function fresh(t: ExecutionContext): Promise<{
  store: SqliteStore
  path: string
}> {
  const path = join(await tempDir(t), 'unlockd.db')
  const store = new SqliteStore(path)
  t.teardown(() => store.close())
  return { store, path }
}

test('concurrent transactions share commits; a failing member rolls back alone', async (t) => {
  const { store } = await fresh(t)
  const before = store.commitStats()
  const results = await Promise.allSettled(
    Array.from({ length: 40 }, (_, i) =>
      store.tx(async (tx) => {
        await tx.setMeta(`k${i}`, String(i))
        if (i % 10 === 3) throw new Error(`member ${i} fails`)
        return i
      }),
    ),
  )
  const after = store.commitStats()
  t.is(after.transactions - before.transactions, 40)
  t.true(after.syncedCommits - before.syncedCommits < 40, JSON.stringify(after))
  for (const [i, r] of results.entries()) {
    if (i % 10 === 3) {
      t.is(r.status, 'rejected')
      t.is(await store.tx((tx) => tx.getMeta(`k${i}`)), undefined)
    } else {
      t.deepEqual(r, { status: 'fulfilled', value: i })
      t.is(await store.tx((tx) => tx.getMeta(`k${i}`)), String(i))
    }
  }
})

test('a member resolves only after its batch committed: its rows are visible to another connection', async (t) => {
  const { store, path } = await fresh(t)
  const seen = await Promise.all(
    Array.from({ length: 20 }, async (_, i) => {
      await store.tx((tx) => tx.setMeta(`v${i}`, 'x'))
      // A second connection sees only committed data.
      const other = new Database(path, { readonly: true })
      try {
        return other.prepare('SELECT value FROM meta WHERE key = ?').get(`v${i}`) !== undefined
      } finally {
        other.close()
      }
    }),
  )
  t.deepEqual(
    seen,
    Array.from({ length: 20 }, () => true),
  )
})

test('non-durable transactions commit without a sync; a durable one after them syncs', async (t) => {
  const { store } = await fresh(t)
  const b = store.commitStats()
  await Promise.all(
    Array.from({ length: 10 }, (_, i) =>
      store.tx((tx) => tx.setMeta(`n${i}`, 'x'), { durable: false }),
    ),
  )
  const mid = store.commitStats()
  t.is(mid.syncedCommits, b.syncedCommits)
  t.true(mid.commits > b.commits)
  await store.tx((tx) => tx.setMeta('d', 'x'))
  t.is(store.commitStats().syncedCommits, mid.syncedCommits + 1)
})
