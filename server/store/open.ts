/** Pick the store from a location: a `postgres://` URL or a SQLite file path. */
import type { Store } from './store.ts'
import { SqliteStore } from './sqlite.ts'

export async function openStore(location: string): Promise<Store> {
  if (/^postgres(ql)?:\/\//.test(location)) {
    const { PostgresStore } = await import('./postgres.ts')
    return PostgresStore.connect(location)
  }
  return new SqliteStore(location)
}
