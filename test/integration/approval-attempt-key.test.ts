/**
 * An approval belongs to the unlock attempt that asked for it: the server records the attempt's
 * ephemeral key from the signed unlock, and only a poll signed with that same key collects the
 * release. Someone holding the host keys (a disk snapshot) and the boot id and approval id (a
 * recorded 202) but not the attempt's in-memory key gets `approval_key_mismatch`, and so does a
 * v1 poll, which carries no key at all. Over real HTTP with the real host client.
 */
import test from 'ava'
import {
  newAttempt,
  openEscrowBlob,
  pollApproval,
  requestUnlock,
} from '../../shared/client/host-client.ts'
import { serverPublicKey } from '../../server/escrow/verdicts.ts'
import { startTestServer } from '../helpers/server.ts'
import { addOperator, asOperator, codeNow, enrollHost, testClock } from '../helpers/approval.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

test('a v2 approval is collected only by a poll signed with the asking attempt key', async (t) => {
  const clock = testClock()
  const srv = await startTestServer(t, {
    now: clock.now,
    settings: { iatSkew: 10_000_000, pollHold: 1 },
  })
  const host = await enrollHost(t, srv, 'web-epk', { approval: 'always' })
  const alice = await addOperator(t, srv, 'alice')
  const serverKeys = [serverPublicKey(srv.deps)]
  const asking = await newAttempt(serverKeys)
  const bootId = 'bootid-epk-1'
  const ask = { keys: host.keys, hostId: host.hostId, bootId }
  const r = await requestUnlock(srv.transport, { ...ask, volumes: [], attempt: asking })
  if (r.status !== 'approval_required') return t.fail(`expected 202, got ${r.status}`)
  const approved = await asOperator(srv, alice, 'POST', `/approvals/${r.approval.id}/approve`, {
    code: codeNow(srv, alice),
  })
  t.is(approved.status, 200, JSON.stringify(approved.body))
  t.is(approved.body.state, 'approved')

  // The host keys, the boot id and the approval id, but another ephemeral key: nothing.
  const thief = await newAttempt(serverKeys)
  await rejectsWithCode(
    t,
    pollApproval(srv.transport, { ...ask, approvalId: r.approval.id, attempt: thief }),
    'approval_key_mismatch',
  )
  // A v1 poll (no key) cannot collect it either.
  await rejectsWithCode(
    t,
    pollApproval(srv.transport, { ...ask, approvalId: r.approval.id }),
    'approval_key_mismatch',
  )
  const refused = (await srv.admin('GET', '/audit?limit=1000')).body.entries.filter(
    (e: { action: string }) => e.action === 'approval.key_mismatch',
  )
  t.is(refused.length, 2)
  t.like(refused[0].detail, { approval: r.approval.id, v: 2 })
  t.like(refused[1].detail, { approval: r.approval.id, v: 1 })

  // The approval is still there for the attempt that asked, and releases to it once.
  const mine = await pollApproval(srv.transport, {
    ...ask,
    approvalId: r.approval.id,
    attempt: asking,
  })
  if (mine.status !== 'released') return t.fail(`expected release, got ${mine.status}`)
  t.deepEqual(await openEscrowBlob(mine.volumes[0]!.blob, host.keys.sealing), host.vk)
  await rejectsWithCode(
    t,
    pollApproval(srv.transport, { ...ask, approvalId: r.approval.id, attempt: asking }),
    'approval_used',
  )
})

test('a v1 approval (asked without a key) is still collected by the v1 poll that follows it', async (t) => {
  const clock = testClock()
  const srv = await startTestServer(t, {
    now: clock.now,
    settings: { iatSkew: 10_000_000, pollHold: 1 },
  })
  const host = await enrollHost(t, srv, 'web-v1', { approval: 'always' })
  const alice = await addOperator(t, srv, 'alice')
  const ask = { keys: host.keys, hostId: host.hostId, bootId: 'bootid-v1-1' }
  const r = await requestUnlock(srv.transport, { ...ask, volumes: [] })
  if (r.status !== 'approval_required') return t.fail(`expected 202, got ${r.status}`)
  await asOperator(srv, alice, 'POST', `/approvals/${r.approval.id}/approve`, {
    code: codeNow(srv, alice),
  })
  const got = await pollApproval(srv.transport, { ...ask, approvalId: r.approval.id })
  if (got.status !== 'released') return t.fail(`expected release, got ${got.status}`)
  t.deepEqual(await openEscrowBlob(got.volumes[0]!.blob, host.keys.sealing), host.vk)
})
