/**
 * Group commit never acknowledges a release whose audit entry is not durable: many hosts unlock
 * at once against a real server process, which is SIGKILLed the moment a share of the answers
 * has arrived (others are still in flight, their batches half done). After a restart, every
 * release the client saw acknowledged is in the audit chain, and the chain verifies. On
 * SQLite and on PostgreSQL.
 */
import test, { type ExecutionContext } from 'ava'
import { seedHosts, unlockExchange, type BenchHost } from '../../bench/lib/hosts.ts'
import {
  adminCall,
  initDataDir,
  startUnlockdServer,
  type DataDir,
} from '../../bench/lib/unlockd-server.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import { freshPgDatabase, inCi, pgSkipBanner, pgUnavailable } from '../helpers/pg.ts'

const HOSTS = 80
/** Kill after this many acknowledged releases. */
const KILL_AFTER = 25

async function crashMidStorm(t: ExecutionContext, data: DataDir): Promise<void> {
  const hosts = await seedHosts(data, HOSTS)
  const server = await startUnlockdServer(data)
  t.teardown(() => server.stop())
  const acked: BenchHost[] = []
  let killed = false
  await Promise.allSettled(
    hosts.map(async (h) => {
      await unlockExchange(server.url, h)
      if (killed) return
      acked.push(h)
      if (acked.length >= KILL_AFTER) {
        killed = true
        process.kill(server.pid, 'SIGKILL')
      }
    }),
  )
  await server.stop()
  t.true(killed, `only ${acked.length} releases were acknowledged before the storm ended`)
  t.true(acked.length >= KILL_AFTER)

  const again = await startUnlockdServer(data)
  t.teardown(() => again.stop())
  const { entries } = (await adminCall(again, 'GET', '/audit?limit=10000')) as {
    entries: AuditEntry[]
  }
  const released = new Set(
    entries.filter((e) => e.action === 'unlock.release').map((e) => e.host ?? ''),
  )
  const lost = acked.filter((h) => !released.has(h.name)).map((h) => h.name)
  t.deepEqual(lost, [], 'acknowledged releases missing from the audit chain after the crash')
  t.true(
    entries.every((e) => e.pos !== null),
    'every entry is sealed into the chain',
  )
  const verdict = (await adminCall(again, 'POST', '/audit/verify', {})) as { ok: boolean }
  t.true(verdict.ok, JSON.stringify(verdict))
}

test('SQLite: every release acknowledged before a SIGKILL is in the audit chain after restart', async (t) => {
  const data = await initDataDir()
  t.teardown(() => data.remove())
  await crashMidStorm(t, data)
})

test('PostgreSQL: every release acknowledged before a SIGKILL is in the audit chain after restart', async (t) => {
  if (pgUnavailable()) {
    if (inCi()) t.fail(pgUnavailable())
    pgSkipBanner(t.title)
    t.pass()
    return
  }
  const data = await initDataDir({ db: await freshPgDatabase(t) })
  t.teardown(() => data.remove())
  await crashMidStorm(t, data)
})
