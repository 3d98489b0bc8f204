/**
 * PostgreSQL for tests: `UNLOCKD_TEST_PG_URL` (set by `source .ci/pg.sh`), or else the URL that
 * tools/test-deps.sh wrote to .tmp/pg-url, names a role that may
 * create databases. Each test gets a database of its own, dropped at teardown.
 *
 * `pgUnavailable()` says why PostgreSQL tests cannot run; callers skip them loudly, except under
 * CI (`CI` set), where they fail: a silent skip would hide lost coverage.
 *
 * @example
 * ```ts
 * const url = await freshPgDatabase(t) // postgres://...@127.0.0.1:55432/unlockd_t_1a2b...
 * ```
 */
import type { ExecutionContext } from 'ava'
import { randomBytes } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import pg from 'pg'

export const PG_URL_ENV = 'UNLOCKD_TEST_PG_URL'

/** Where tools/test-deps.sh leaves the URL of the PostgreSQL it started (0600). */
const PG_URL_FILE = fileURLToPath(new URL('../../.tmp/pg-url', import.meta.url))

export function pgUrl(): string | undefined {
  const url =
    process.env[PG_URL_ENV] ||
    (existsSync(PG_URL_FILE) ? readFileSync(PG_URL_FILE, 'utf8').trim() : '')
  return url === '' ? undefined : url
}

/** Why PostgreSQL tests cannot run here, or undefined when they can. */
export function pgUnavailable(): string | undefined {
  return pgUrl() === undefined
    ? `${PG_URL_ENV} is not set and .tmp/pg-url is missing (run \`bash tools/test-deps.sh\` or \`source .ci/pg.sh\` first)`
    : undefined
}

export const inCi = (): boolean => (process.env['CI'] ?? '') !== ''

let warned = false
export function pgSkipBanner(title: string): void {
  if (warned) return
  warned = true
  const line = '!'.repeat(78)
  console.warn(
    `\n${line}\n!! SKIPPING POSTGRESQL TESTS: ${pgUnavailable() ?? ''}\n!! first one: ${title}\n${line}\n`,
  )
}

/** Create an empty database for this test on the PostgreSQL of `UNLOCKD_TEST_PG_URL`; dropped at teardown. */
export async function freshPgDatabase(
  t: Pick<ExecutionContext<unknown>, 'teardown'>,
): Promise<string> {
  const base = pgUrl()
  if (base === undefined) throw new Error(`${PG_URL_ENV} is not set`)
  const name = `unlockd_t_${randomBytes(8).toString('hex')}`
  await adminQuery(base, `CREATE DATABASE ${name}`)
  // Registered before any store opens, so it runs after their close() (teardowns run last-in
  // first-out); FORCE ends any connection a failed test left behind.
  t.teardown(async () => {
    await adminQuery(base, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  })
  const u = new URL(base)
  u.pathname = `/${name}`
  return u.toString()
}

/** Run one statement on its own short-lived connection (CREATE/DROP DATABASE, probes). */
export async function adminQuery(url: string, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 60_000 })
  c.on('error', () => {})
  await c.connect()
  try {
    await c.query(sql)
  } finally {
    await c.end()
  }
}
