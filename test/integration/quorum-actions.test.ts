/**
 * k-of-n quorum for loosening operator actions, attacked over real HTTP. On a host that needs two
 * approvers one operator cannot, by any path (a bare token, their own code twice, a second
 * request, minting or re-adding an operator), relax its policy, resume it, export its escrow,
 * rotate the KEK or change operators; with a second operator's vote each goes through and the
 * audit names both. Operators added after an action opened never count toward it, a removed
 * operator's vote stops counting (quorum actions and unlock approvals), expired actions cannot
 * be approved, and emergency shred stays possible for one operator.
 */
import test from 'ava'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import { UNLOCKD, runCli } from '../helpers/cli.ts'
import { expireActions } from '../../server/approvals/quorum.ts'
import {
  addOperator,
  asOperator,
  askUnlock,
  codeNow,
  enrollHost,
  redeemEnrollment,
  secretOf,
  testClock,
  type TestClock,
  type TestOperator,
} from '../helpers/approval.ts'

const TWO = { approval: 'always', approvers: 2, cidrs: ['10.0.0.0/8'] }

interface Crew {
  srv: TestServer
  clock: TestClock
  admin: TestOperator
  bob: TestOperator
}

/** The init operator and bob (added while no host needs a quorum), and vault-1 needing two. */
async function crew(t: Parameters<typeof enrollHost>[0]): Promise<Crew> {
  const clock = testClock()
  const srv = await startTestServer(t, { now: clock.now })
  const bob = await addOperator(t, srv, 'bob')
  await enrollHost(t, srv, 'vault-1', TWO)
  return { srv, clock, admin: { name: 'admin', token: srv.token, secret: srv.adminSecret }, bob }
}

/** A fresh code for `op`: each call stands for reading the authenticator 30 s later. */
function fresh(c: Crew, op: TestOperator): string {
  c.clock.advance(30)
  return codeNow(c.srv, op)
}

type Call = { status: number; body: any }

async function entries(srv: TestServer): Promise<{ action: string; actor: string; detail: any }[]> {
  return (await srv.admin('GET', '/audit?limit=10000')).body.entries
}

function approve(c: Crew, op: TestOperator, id: string): Promise<Call> {
  return asOperator(c.srv, op, 'POST', `/actions/${id}/approve`, { code: fresh(c, op) })
}

/** The loosening requests, each as the admin sends it with their own fresh code. */
function requests(c: Crew): { what: string; send: (code?: string) => Promise<Call> }[] {
  const as = (method: 'POST' | 'PATCH', path: string, body: unknown, inBody = false) => {
    return (code?: string): Promise<Call> =>
      c.srv.transport({
        method,
        path: `/v1/admin${path}`,
        bearer: c.admin.token,
        body: inBody && code ? { ...(body as object), code } : body,
        ...(code && !inBody ? { headers: { 'x-unlockd-totp': code } } : {}),
      }) as Promise<Call>
  }
  return [
    { what: 'relax approval', send: as('PATCH', '/hosts/vault-1/policy', { approval: 'never' }) },
    { what: 'fewer approvers', send: as('PATCH', '/hosts/vault-1/policy', { approvers: 1 }) },
    { what: 'any source', send: as('PATCH', '/hosts/vault-1/policy', { cidrs: [] }) },
    { what: 'resume', send: as('POST', '/hosts/vault-1/resume', {}) },
    { what: 'escrow export', send: as('POST', '/hosts/vault-1/escrow-export', {}) },
    { what: 'kek rotate', send: as('POST', '/kek/rotate', {}) },
    { what: 'operator add', send: as('POST', '/operators', { name: 'mallory' }, true) },
    { what: 'operator remove', send: as('POST', '/operators/bob/remove', {}, true) },
    { what: 'factor reset', send: as('POST', '/operators/bob/totp', {}, true) },
    { what: 'tang host add', send: as('POST', '/hosts', { name: 'tang-x', tang: true }) },
  ]
}

test.before(() => {
  if (!existsSync(UNLOCKD))
    throw new Error(`${UNLOCKD} is missing: run \`npm run build\` first (npm test does it)`)
})

test('one operator cannot loosen a two-approver host or change operators alone, by any path', async (t) => {
  const c = await crew(t)
  t.is((await c.srv.admin('POST', '/hosts/vault-1/suspend', {})).status, 200)
  const before = (await c.srv.admin('GET', '/hosts/vault-1')).body
  const logBefore = (await entries(c.srv)).map((e) => e.action)
  for (const r of requests(c)) {
    // A token without a code is refused outright.
    const bare = await r.send()
    t.is(bare.status, 403, `${r.what}: ${JSON.stringify(bare.body)}`)
    t.is(bare.body.error, 'totp_required', r.what)
    // With the admin's own code it only opens an action: 202, nothing done.
    const first = await r.send(fresh(c, c.admin))
    t.is(first.status, 202, `${r.what}: ${JSON.stringify(first.body)}`)
    t.like(first.body.action, { state: 'pending', required: 2, approvedBy: ['admin'] }, r.what)
    t.is(first.body.volumes, undefined, `${r.what} hands out nothing`)
    t.is(first.body.token, undefined, `${r.what} hands out nothing`)
    // Their own code again, on their own action: refused, it needs a distinct operator.
    const twice = await approve(c, c.admin, first.body.action.id)
    t.is(twice.status, 409, r.what)
    t.is(twice.body.error, 'already_approved', r.what)
    // A second request is a second action with one vote, not the second vote.
    const second = await r.send(fresh(c, c.admin))
    t.is(second.status, 202, r.what)
    t.not(second.body.action.id, first.body.action.id)
    t.deepEqual(second.body.action.approvedBy, ['admin'], r.what)
  }
  const after = (await c.srv.admin('GET', '/hosts/vault-1')).body
  t.is(after.state, 'suspended')
  t.deepEqual(after.policy, before.policy)
  const ops = (await c.srv.admin('GET', '/operators')).body.operators as { name: string }[]
  t.deepEqual(
    ops.map((o) => o.name),
    ['admin', 'bob'],
  )
  t.deepEqual((await c.srv.admin('GET', '/kek')).body.versions, [1])
  t.is((await c.srv.admin('GET', '/hosts/tang-x')).status, 404)
  // The audit shows the requests and nothing they would have done.
  const logAfter = (await entries(c.srv)).map((e) => e.action).slice(logBefore.length)
  for (const a of [
    'escrow.export',
    'host.resume',
    'host.policy',
    'operator.add',
    'operator.remove',
  ])
    t.false(logAfter.includes(a), a)
  t.false(logAfter.includes('action.approve'))
  t.is(logAfter.filter((a) => a === 'action.open').length, requests(c).length * 2)
  // Every one of them is listed as pending, for the other operator to see.
  const listed = await asOperator(c.srv, c.bob, 'GET', '/actions')
  t.is(listed.body.actions.length, requests(c).length * 2)
})

test('with a second operator the relaxation and the resume go through; the audit names both', async (t) => {
  const c = await crew(t)
  t.is((await c.srv.admin('POST', '/hosts/vault-1/suspend', {})).status, 200)
  const relax = await c.srv.admin(
    'PATCH',
    '/hosts/vault-1/policy',
    { approval: 'never' },
    {
      totp: true,
    },
  )
  t.is(relax.status, 202, JSON.stringify(relax.body))
  const id = relax.body.action.id as string
  t.is((await c.srv.admin('GET', '/hosts/vault-1')).body.policy.approval, 'always')
  const ok = await approve(c, c.bob, id)
  t.is(ok.status, 200, JSON.stringify(ok.body))
  t.like(ok.body, { state: 'done', approvedBy: ['admin', 'bob'] })
  t.is((await c.srv.admin('GET', '/hosts/vault-1')).body.policy.approval, 'never')
  const log = await entries(c.srv)
  const approved = log.find((e) => e.action === 'action.approve' && e.detail.action === id)
  t.deepEqual(approved?.detail.operators, ['admin', 'bob'])
  t.is(approved?.actor, 'operator:bob')
  t.like(
    log.findLast((e) => e.action === 'host.policy'),
    { actor: 'operator:admin', detail: { loosened: ['approval'] } },
  )
  t.deepEqual(
    log.find((e) => e.action === 'action.done' && e.detail.action === id)?.detail.operators,
    ['admin', 'bob'],
  )
  // A decided action takes no more votes.
  t.is((await approve(c, c.bob, id)).body.error, 'approval_used')

  const resume = await c.srv.admin('POST', '/hosts/vault-1/resume', undefined, { totp: true })
  t.is(resume.status, 202)
  t.is((await approve(c, c.bob, resume.body.action.id)).body.state, 'done')
  t.is((await c.srv.admin('GET', '/hosts/vault-1')).body.state, 'active')
})

test('an approved export goes only to its requester, who collects it once with a fresh code', async (t) => {
  const c = await crew(t)
  const open = await c.srv.admin('POST', '/hosts/vault-1/escrow-export', {}, { totp: true })
  t.is(open.status, 202)
  const id = open.body.action.id as string
  t.true(open.body.action.collect)
  const early = (await c.srv.transport({
    method: 'POST',
    path: '/v1/admin/hosts/vault-1/escrow-export',
    bearer: c.admin.token,
    body: {},
    headers: { 'x-unlockd-action': id, 'x-unlockd-totp': fresh(c, c.admin) },
  })) as Call
  t.is(early.body.error, 'approval_pending')
  t.is(early.body.volumes, undefined)
  const ok = await approve(c, c.bob, id)
  t.like(ok.body, { state: 'approved', approvedBy: ['admin', 'bob'] })
  t.is(ok.body.volumes, undefined, 'the approver gets no blobs')
  t.false((await entries(c.srv)).some((e) => e.action === 'escrow.export'))
  const collect = (op: TestOperator, code: string | undefined) =>
    c.srv.transport({
      method: 'POST',
      path: '/v1/admin/hosts/vault-1/escrow-export',
      bearer: op.token,
      body: {},
      headers: { 'x-unlockd-action': id, ...(code ? { 'x-unlockd-totp': code } : {}) },
    }) as Promise<Call>
  // The approver cannot collect it, and the requester's token alone cannot either.
  const byBob = await collect(c.bob, fresh(c, c.bob))
  t.is(byBob.status, 403)
  t.is(byBob.body.volumes, undefined)
  const bare = await collect(c.admin, undefined)
  t.is(bare.body.error, 'totp_required')
  const got = await collect(c.admin, fresh(c, c.admin))
  t.is(got.status, 200, JSON.stringify(got.body))
  // vault-1 has no recovery key, and exports are sealed to the recovery key only: the answer
  // names its one volume as not exported rather than carrying a blob.
  t.deepEqual(got.body.notExported, ['data'])
  t.is(got.body.volumes.length, 0)
  t.like(
    (await entries(c.srv)).find((e) => e.action === 'action.collect'),
    { actor: 'operator:admin', detail: { action: id, operators: ['admin', 'bob'] } },
  )
  const again = await collect(c.admin, fresh(c, c.admin))
  t.is(again.status, 409)
  t.is(again.body.volumes, undefined)
})

test('an operator added after an action opened cannot vote on it; adding needs the quorum too', async (t) => {
  const c = await crew(t)
  const relax = await c.srv.admin('PATCH', '/hosts/vault-1/policy', { cidrs: [] }, { totp: true })
  t.is(relax.status, 202)
  // Adding carol needs two as well; bob approves, and only the admin collects her secrets.
  const add = await c.srv.admin('POST', '/operators', {
    name: 'carol',
    code: await c.srv.adminCode(),
  })
  t.is(add.status, 202, JSON.stringify(add.body))
  t.like((await approve(c, c.bob, add.body.action.id)).body, { state: 'approved' })
  const got = await c.srv.transport({
    method: 'POST',
    path: '/v1/admin/operators',
    bearer: c.srv.token,
    body: { name: 'carol', code: await c.srv.adminCode() },
    headers: { 'x-unlockd-action': add.body.action.id },
  })
  t.is(got.status, 201, JSON.stringify(got.body))
  const body = got.body as { token?: string; enrollment: { code: string } }
  t.is(body.token, undefined, 'the requester gets an enrollment code, never a token')
  const carol = await redeemed(t, c, 'carol', body.enrollment.code)
  const late = await approve(c, carol, relax.body.action.id)
  t.is(late.status, 403)
  t.regex(late.body.message, /did not hold a second factor when action/)
  const still = await asOperator(c.srv, c.bob, 'GET', `/actions/${relax.body.action.id}`)
  t.like(still.body, { state: 'pending', approvedBy: ['admin'] })
  t.deepEqual((await c.srv.admin('GET', '/hosts/vault-1')).body.policy.cidrs, ['10.0.0.0/8'])
})

test("a removed operator's vote stops counting, on actions and on unlock approvals", async (t) => {
  const c = await crew(t)
  const carol = await addOperatorDirect(t, c, 'carol')
  // bob votes on an unlock approval and approves the admin's export, then is removed.
  const vault = await enrollHost(t, c.srv, 'vault-2', { approval: 'always', approvers: 2 })
  const ask = await askUnlock(c.srv.transport, vault, 'bootid-removed-1')
  if (ask.status === 'released') return t.fail('expected an approval request')
  const bobVote = await asOperator(c.srv, c.bob, 'POST', `/approvals/${ask.approval.id}/approve`, {
    code: fresh(c, c.bob),
  })
  t.like(bobVote.body, { state: 'pending', approvedBy: ['bob'] })
  const exp = await c.srv.admin('POST', '/hosts/vault-1/escrow-export', {}, { totp: true })
  t.is(exp.status, 202)
  t.like((await approve(c, c.bob, exp.body.action.id)).body, { state: 'approved' })
  const remove = await c.srv.admin('POST', '/operators/bob/remove', {
    code: await c.srv.adminCode(),
  })
  t.is(remove.status, 202, JSON.stringify(remove.body))
  t.is((await approve(c, carol, remove.body.action.id)).body.state, 'done')
  const ops = (await c.srv.admin('GET', '/operators')).body.operators as { name: string }[]
  t.false(ops.map((o) => o.name).includes('bob'))
  // The export no longer has two approvers: collecting it is refused, nothing handed out.
  const got = (await c.srv.transport({
    method: 'POST',
    path: '/v1/admin/hosts/vault-1/escrow-export',
    bearer: c.srv.token,
    body: {},
    headers: { 'x-unlockd-action': exp.body.action.id, 'x-unlockd-totp': await c.srv.adminCode() },
  })) as Call
  t.is(got.status, 403, JSON.stringify(got.body))
  t.regex(got.body.message, /no longer has 2 approvers/)
  t.is(got.body.volumes, undefined)
  t.false((await entries(c.srv)).some((e) => e.action === 'escrow.export'))
  // The unlock approval shows no vote of bob's; carol's alone does not release it.
  const show = await c.srv.admin('GET', `/approvals/${ask.approval.id}`)
  t.deepEqual(show.body.approvedBy, [])
  const c1 = await asOperator(c.srv, carol, 'POST', `/approvals/${ask.approval.id}/approve`, {
    code: fresh(c, carol),
  })
  t.like(c1.body, { state: 'pending', approvedBy: ['carol'] })
  const a1 = await c.srv.admin('POST', `/approvals/${ask.approval.id}/approve`, {
    code: await c.srv.adminCode(),
  })
  t.is(a1.body.state, 'approved')
  t.deepEqual([...a1.body.approvedBy].sort(), ['admin', 'carol'])
})

/** Add an operator while the fleet needs only one approver (before vault-1 exists, or via quorum). */
async function addOperatorDirect(
  t: Parameters<typeof enrollHost>[0],
  c: Crew,
  name: string,
): Promise<TestOperator> {
  const add = await c.srv.admin('POST', '/operators', { name, code: await c.srv.adminCode() })
  if (add.status === 201) return redeemed(t, c, name, add.body.enrollment.code)
  const id = add.body.action.id as string
  await approve(c, c.bob, id)
  const got = (await c.srv.transport({
    method: 'POST',
    path: '/v1/admin/operators',
    bearer: c.srv.token,
    body: { name, code: await c.srv.adminCode() },
    headers: { 'x-unlockd-action': id },
  })) as Call
  return redeemed(t, c, name, got.body.enrollment.code)
}

/** Redeem an enrollment code as the new operator would. */
async function redeemed(
  t: Parameters<typeof enrollHost>[0],
  c: Crew,
  name: string,
  code: string,
): Promise<TestOperator> {
  const e = await redeemEnrollment(c.srv, code)
  t.is(e.status, 201, JSON.stringify(e.body))
  return { name, token: e.body.token, secret: secretOf(e.body.otpauthUri) }
}

test('an expired or denied action cannot be approved', async (t) => {
  const c = await crew(t)
  const open = await c.srv.admin('POST', '/kek/rotate', {}, { totp: true })
  t.is(open.status, 202)
  c.clock.advance(3600)
  const late = await approve(c, c.bob, open.body.action.id)
  t.is(late.status, 403)
  t.is(late.body.error, 'approval_expired')
  t.deepEqual((await c.srv.admin('GET', '/kek')).body.versions, [1])
  t.is((await c.srv.admin('GET', `/actions/${open.body.action.id}`)).body.state, 'expired')

  const again = await c.srv.admin('POST', '/kek/rotate', {}, { totp: true })
  const denied = await asOperator(c.srv, c.bob, 'POST', `/actions/${again.body.action.id}/deny`, {
    reason: 'not today',
  })
  t.like(denied.body, { state: 'denied', reason: 'not today' })
  t.is((await approve(c, c.bob, again.body.action.id)).body.error, 'approval_denied')
  t.deepEqual((await c.srv.admin('GET', '/kek')).body.versions, [1])
  // The maintenance job marks what nobody touched, and the list no longer shows it.
  const third = await c.srv.admin('POST', '/kek/rotate', {}, { totp: true })
  t.is((await c.srv.admin('GET', '/actions')).body.actions.length, 1)
  c.clock.advance(3600)
  // (The server's own maintenance tick may get there first; either way it is the same job.)
  t.true((await expireActions(c.srv.deps)) <= 1)
  t.is((await c.srv.admin('GET', `/actions/${third.body.action.id}`)).body.state, 'expired')
  t.deepEqual((await c.srv.admin('GET', '/actions')).body.actions, [])
  t.true(
    (await entries(c.srv)).some(
      (e) => e.action === 'action.expire' && e.detail.action === third.body.action.id,
    ),
  )
})

test('no deadlock: with fewer operators holding a factor than k, only adding operators works; shred stays one operator', async (t) => {
  const clock = testClock()
  const srv = await startTestServer(t, { now: clock.now })
  await enrollHost(t, srv, 'vault-1', TWO)
  await enrollHost(t, srv, 'web-1', {})
  // Only the admin holds a factor: nothing that needs two can even open.
  const relax = await srv.admin(
    'PATCH',
    '/hosts/vault-1/policy',
    { approval: 'never' },
    {
      totp: true,
    },
  )
  t.is(relax.status, 409)
  t.regex(relax.body.message, /only 1 hold one; add operators first/)
  t.is((await srv.admin('POST', '/kek/rotate', {}, { totp: true })).status, 409)
  // Adding an operator needs min(k, holders) = 1 vote, so it runs at once.
  const bob = await addOperator(t, srv, 'bob')
  // Now two hold a factor: a relaxation opens an action instead of failing.
  const again = await srv.admin(
    'PATCH',
    '/hosts/vault-1/policy',
    { approval: 'never' },
    {
      totp: true,
    },
  )
  t.is(again.status, 202)
  // Emergency shred only tightens: one operator with a valid code, no quorum.
  const shred = await asOperator(srv, bob, 'POST', '/shred', {
    host: 'vault-1',
    code: codeNow(srv, bob),
  })
  t.is(shred.status, 200, JSON.stringify(shred.body))
  t.is((await srv.admin('GET', '/hosts/vault-1')).body.state, 'shredded')
})

test('the CLI lists both kinds, approves an action, and says how to collect', async (t) => {
  const c = await crew(t)
  const home = mkdtempSync(join(tmpdir(), 'unlockd-cli-home-'))
  t.teardown(() => rmSync(home, { recursive: true, force: true }))
  const env = (token: string) => ({ UNLOCKD_URL: c.srv.url, UNLOCKD_TOKEN: token, HOME: home })
  const host = await enrollHost(t, c.srv, 'vault-2', { approval: 'always' })
  const ask = await askUnlock(c.srv.transport, host, 'bootid-cli-1')
  t.is(ask.status, 'approval_required')
  const exp = await runCli(['escrow', 'export', '--host', 'vault-1'], env(c.admin.token), {
    stdin: `${fresh(c, c.admin)}\n`,
  })
  t.is(exp.code, 5, exp.stderr)
  const id = /qa_[A-Za-z0-9_-]{22}/.exec(exp.stderr)?.[0]
  if (!id) return t.fail(exp.stderr)
  t.regex(exp.stderr, /run this command again with --action qa_/)
  const list = await runCli(['approvals'], env(c.bob.token))
  t.is(list.code, 0, list.stderr)
  t.regex(list.stdout, /ap_\S+\s+vault-2/)
  t.regex(
    list.stdout,
    new RegExp(`${id}\\s+export the escrow blobs of host vault-1\\s+admin\\s+1/2`),
  )
  const json = await runCli(['approvals', '--json'], env(c.bob.token))
  t.deepEqual(
    (json.json as { id: string }[]).map((x) => x.id.slice(0, 3)),
    ['ap_', 'qa_'],
  )
  const ok = await runCli(['approve', id], env(c.bob.token), { stdin: `${fresh(c, c.bob)}\n` })
  t.is(ok.code, 0, ok.stderr)
  t.regex(ok.stdout, /approved by admin, bob; admin collects the result/)
  const got = await runCli(
    ['escrow', 'export', '--host', 'vault-1', '--action', id, '--json'],
    env(c.admin.token),
    { stdin: `${fresh(c, c.admin)}\n` },
  )
  t.is(got.code, 0, got.stderr)
  t.is(got.json.host, 'vault-1')
  t.deepEqual(got.json.notExported, ['data'])
})

test("resetting an operator's factor voids their votes on pending actions", async (t) => {
  const clock = testClock()
  const srv = await startTestServer(t, { now: clock.now })
  const bob = await addOperator(t, srv, 'bob')
  const carol = await addOperator(t, srv, 'carol')
  const dave = await addOperator(t, srv, 'dave')
  await enrollHost(t, srv, 'vault-3', { ...TWO, approvers: 3 })
  const c: Crew = {
    srv,
    clock,
    admin: { name: 'admin', token: srv.token, secret: srv.adminSecret },
    bob,
  }
  const relax = await srv.admin('PATCH', '/hosts/vault-3/policy', { cidrs: [] }, { totp: true })
  t.is(relax.status, 202, JSON.stringify(relax.body))
  t.like((await approve(c, bob, relax.body.action.id)).body, { approvedBy: ['admin', 'bob'] })
  // The admin resets bob's factor, with carol and dave (the fleet needs three).
  const reset = await srv.admin('POST', '/operators/bob/totp', { code: await srv.adminCode() })
  t.is(reset.status, 202, JSON.stringify(reset.body))
  await approve(c, carol, reset.body.action.id)
  t.like((await approve(c, dave, reset.body.action.id)).body, { state: 'approved' })
  const done = (await srv.transport({
    method: 'POST',
    path: '/v1/admin/operators/bob/totp',
    bearer: srv.token,
    body: { code: await srv.adminCode() },
    headers: { 'x-unlockd-action': reset.body.action.id },
  })) as Call
  t.is(done.status, 200, JSON.stringify(done.body))
  t.true(done.body.voidedVotes.includes(relax.body.action.id))
  // bob's vote is gone: carol's makes two of three, and the policy is unchanged.
  const show = await srv.admin('GET', `/actions/${relax.body.action.id}`)
  t.like(show.body, { state: 'pending', approvedBy: ['admin'] })
  t.like((await approve(c, carol, relax.body.action.id)).body, { state: 'pending' })
  t.deepEqual((await srv.admin('GET', '/hosts/vault-3')).body.policy.cidrs, ['10.0.0.0/8'])
  t.true((await entries(srv)).some((e) => e.action === 'action.vote_void'))
})
