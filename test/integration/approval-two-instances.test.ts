/**
 * Human approval across two server instances on one PostgreSQL database: a host waiting on
 * instance A is released when an operator approves on instance B (A re-reads the database; no
 * in-process event crosses), a TOTP code spent on one instance is refused on the other, and
 * k=2 votes collected on different instances add up. Skipped loudly without
 * `UNLOCKD_TEST_PG_URL`; failed under CI.
 */
import test, { type ExecutionContext } from 'ava'
import { openEscrowBlob } from '../../shared/client/host-client.ts'
import { freshPgDatabase, inCi, pgSkipBanner, pgUnavailable } from '../helpers/pg.ts'
import { startTestServer } from '../helpers/server.ts'
import {
  addOperator,
  askUnlock,
  asOperator,
  codeNow,
  enrollHost,
  testClock,
  waitForRelease,
} from '../helpers/approval.ts'

function pgOnly(title: string, impl: (t: ExecutionContext) => Promise<void>): void {
  const why = pgUnavailable()
  if (why === undefined) test(title, impl)
  else if (inCi())
    test(title, (t) => {
      t.fail(`${why}; CI must run the PostgreSQL tests (.ci/run sources .ci/pg.sh)`)
    })
  else {
    pgSkipBanner(title)
    test.skip(`${title} [SKIPPED: ${why}]`, () => {})
  }
}

pgOnly(
  'two instances on PostgreSQL: approve on B releases the host waiting on A; codes and votes are shared',
  async (t) => {
    const clock = testClock()
    const settings = { iatSkew: 10_000_000, pollHold: 2 }
    const url = await freshPgDatabase(t)
    const a = await startTestServer(t, { db: url, now: clock.now, settings })
    const b = await startTestServer(t, {
      dataDir: a.dataDir,
      token: a.token,
      adminSecret: a.adminSecret,
      db: url,
      now: clock.now,
      settings,
    })
    const host = await enrollHost(t, a, 'pg-web-1', { approval: 'always' })
    const alice = await addOperator(t, a, 'alice')
    const bob = await addOperator(t, b, 'bob')

    const r1 = await askUnlock(a.transport, host, 'bootid-pg-0001')
    if (r1.status === 'released') return t.fail('expected 202')
    const waiting = waitForRelease(a.transport, host, 'bootid-pg-0001', r1.approval.id)
    const code = codeNow(b, alice)
    t.is(
      (await asOperator(b, alice, 'POST', `/approvals/${r1.approval.id}/approve`, { code })).body
        .state,
      'approved',
    )
    const released = await waiting
    if (released.status !== 'released') return t.fail('expected release')
    t.deepEqual(await openEscrowBlob(released.volumes[0]!.blob, host.keys.sealing), host.vk)

    // the same code on the other instance is a replay
    const r2 = await askUnlock(b.transport, host, 'bootid-pg-0002')
    if (r2.status === 'released') return t.fail('expected 202')
    const replay = await asOperator(a, alice, 'POST', `/approvals/${r2.approval.id}/approve`, {
      code,
    })
    t.is(replay.body.error, 'totp_replayed')

    // k=2 with one vote on each instance
    t.is((await a.admin('PATCH', '/hosts/pg-web-1/policy', { approvers: 2 })).status, 200)
    clock.advance(30)
    const r3 = await askUnlock(a.transport, host, 'bootid-pg-0003')
    if (r3.status === 'released') return t.fail('expected 202')
    t.is(
      (
        await asOperator(a, alice, 'POST', `/approvals/${r3.approval.id}/approve`, {
          code: codeNow(a, alice),
        })
      ).body.state,
      'pending',
    )
    t.like(
      (
        await asOperator(b, bob, 'POST', `/approvals/${r3.approval.id}/approve`, {
          code: codeNow(b, bob),
        })
      ).body,
      { state: 'approved', approvedBy: ['alice', 'bob'] },
    )
    t.is(
      (await waitForRelease(b.transport, host, 'bootid-pg-0003', r3.approval.id)).status,
      'released',
    )
  },
)
