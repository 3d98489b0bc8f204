/**
 * An operator's credentials belong to that operator, over real HTTP. Each test is an attack
 * that must fail:
 * - `operator add` gives the adder only a one-time code, never the new operator's API token or
 *   TOTP secret; the code works once, expires, and wrong codes are refused and slowed down per
 *   source address without locking out anyone a stranger could name;
 * - alice resetting bob's factor gets no secret, voids bob's open votes, and cannot redeem
 *   the reset herself (it needs bob's own API token), so she cannot vote as bob;
 * - no admin route's answer, walked as alice, ever carries another operator's token or secret.
 */
import test from 'ava'
import { createApp } from '../../server/app.ts'
import { OPERATOR_ENROLL_TTL } from '../../server/approvals/operators.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import { transportFrom } from '../helpers/net.ts'
import {
  addOperator,
  askUnlock,
  asOperator,
  codeNow,
  enrollHost,
  redeemEnrollment,
  testClock,
  type TestClock,
  type TestOperator,
} from '../helpers/approval.ts'
import { pollApproval } from '../../shared/client/host-client.ts'

const SETTINGS = { iatSkew: 10_000_000, pollHold: 2 }

function server(t: Parameters<typeof startTestServer>[0], clock: TestClock): Promise<TestServer> {
  return startTestServer(t, { now: clock.now, settings: SETTINGS })
}

async function audit(srv: TestServer): Promise<{ action: string; detail: any }[]> {
  return (await srv.admin('GET', '/audit?limit=10000')).body.entries
}

/** The operator's secrets as they could appear in any answer. */
function secretsOf(op: TestOperator): string[] {
  return [op.token, op.secret]
}

test('operator add returns only a one-time code; it works once and expires; until then the operator holds nothing', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const add = await srv.admin('POST', '/operators', { name: 'bob', code: await srv.adminCode() })
  t.is(add.status, 201, JSON.stringify(add.body))
  const text = JSON.stringify(add.body)
  t.false(/uo_[A-Za-z0-9_-]{43}/.test(text), 'no API token in the answer')
  t.false(text.includes('otpauth'), 'no TOTP secret in the answer')
  t.is(add.body.enrollment.kind, 'add')
  t.is(add.body.enrollment.expiresAt, clock.now() + OPERATOR_ENROLL_TTL)
  const listed = (await srv.admin('GET', '/operators')).body.operators.find(
    (o: { name: string }) => o.name === 'bob',
  )
  t.like(listed, { totp: false, enrollmentExpiresAt: add.body.enrollment.expiresAt })

  // Redeemed once, by whoever holds the code: the token and secret go to the redeemer only.
  const code = add.body.enrollment.code as string
  const first = await redeemEnrollment(srv, code)
  t.is(first.status, 201, JSON.stringify(first.body))
  t.regex(first.body.token, /^uo_/)
  t.regex(first.body.otpauthUri, /^otpauth:\/\/totp\/unlockd:bob\?/)
  const bob = { token: first.body.token as string }
  t.is((await asOperator(srv, bob, 'GET', '/whoami')).body.operator, 'bob')
  const second = await redeemEnrollment(srv, code)
  t.is(second.status, 401)
  t.is(second.body.token, undefined)
  t.is((await asOperator(srv, bob, 'GET', '/whoami')).status, 200, 'a replay changes nothing')

  // An unredeemed code expires.
  const carol = await srv.admin('POST', '/operators', {
    name: 'carol',
    code: await srv.adminCode(),
  })
  clock.advance(OPERATOR_ENROLL_TTL + 1)
  const late = await redeemEnrollment(srv, carol.body.enrollment.code)
  t.is(late.status, 401)
  t.is(late.body.otpauthUri, undefined)
  const fails = (await audit(srv)).filter((e) => e.action === 'operator.enroll_fail')
  t.deepEqual(
    fails.map((e) => e.detail.reason),
    ['used', 'expired'],
  )
})

test('wrong enrollment codes are refused and slowed per source, never locking out the operator', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const add = await srv.admin('POST', '/operators', { name: 'dave', code: await srv.adminCode() })
  const stranger = transportFrom('127.0.0.2', srv.url)
  const answers: string[] = []
  for (let i = 0; i < 12; i++) {
    const guess = `oe_${String(i).padStart(43, 'A')}`
    const r = await redeemEnrollment({ transport: stranger }, guess)
    t.true(r.status === 401 || r.status === 403, JSON.stringify(r.body))
    answers.push(r.body.error)
  }
  t.is(answers[0], 'unauthorized')
  t.true(answers.includes('rate_limited'), 'the guessing source is slowed down')
  // The stranger is still waiting; dave, from his own address, is not affected.
  const still = await redeemEnrollment({ transport: stranger }, add.body.enrollment.code)
  t.is(still.body.error, 'rate_limited', 'even the right code waits out the source delay')
  const ok = await redeemEnrollment(srv, add.body.enrollment.code)
  t.is(ok.status, 201, JSON.stringify(ok.body))
  const fails = (await audit(srv)).filter((e) => e.action === 'operator.enroll_fail')
  t.true(fails.length >= 5)
  t.true(fails.every((e) => e.detail.source === '127.0.0.2' && e.detail.reason === 'unknown'))
})

test('a reset by alice gives her no secret, voids bob’s open votes, and needs bob’s own token to complete', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  // Operators first: once a host needs two approvers, adding them needs the quorum as well.
  const alice = await addOperator(t, srv, 'alice')
  const bob = await addOperator(t, srv, 'bob')
  const host = await enrollHost(t, srv, 'vault-1', { approval: 'always', approvers: 2 })
  const bobId = (await srv.admin('GET', '/operators')).body.operators.find(
    (o: { name: string }) => o.name === 'bob',
  ).id as string
  // bob has a passkey too (inserted directly: the reset must clear it with the TOTP secret)
  await srv.deps.store.tx((tx) =>
    tx.insertPasskey({
      id: 'cred-bob',
      operatorId: bobId,
      publicKey: new Uint8Array(77),
      counter: 0,
      transports: [],
      rpId: 'localhost',
      createdAt: clock.now(),
      lastUsedAt: null,
    }),
  )
  clock.advance(5)
  const r = await askUnlock(srv.transport, host, 'bootid-reset')
  if (r.status === 'released') return t.fail('expected 202')
  const id = r.approval.id
  const vote = await asOperator(srv, bob, 'POST', `/approvals/${id}/approve`, {
    code: codeNow(srv, bob),
  })
  t.deepEqual(vote.body.approvedBy, ['bob'])

  // alice resets bob's factor (the fleet needs two, so the admin approves and alice collects):
  // no secret for her, bob's vote is voided, passkeys gone.
  clock.advance(30)
  const opened = await asOperator(srv, alice, 'POST', '/operators/bob/totp', {
    code: codeNow(srv, alice),
  })
  t.is(opened.status, 202, JSON.stringify(opened.body))
  const approved = await srv.admin('POST', `/actions/${opened.body.action.id}/approve`, {
    code: await srv.adminCode(),
  })
  t.is(approved.body.state, 'approved', JSON.stringify(approved.body))
  clock.advance(30)
  const reset = (await srv.transport({
    method: 'POST',
    path: '/v1/admin/operators/bob/totp',
    bearer: alice.token,
    body: { code: codeNow(srv, alice) },
    headers: { 'x-unlockd-action': opened.body.action.id },
  })) as { status: number; body: any }
  t.is(reset.status, 200, JSON.stringify(reset.body))
  t.false(JSON.stringify(reset.body).includes('otpauth'))
  for (const s of secretsOf(bob)) t.false(JSON.stringify(reset.body).includes(s))
  t.is(reset.body.enrollment.kind, 'reset')
  t.deepEqual(reset.body.voidedVotes, [id])
  t.deepEqual((await srv.admin('GET', `/approvals/${id}`)).body.approvedBy, [])
  t.deepEqual(await srv.deps.store.tx((tx) => tx.listPasskeys(bobId)), [])
  t.true(
    (await audit(srv)).some(
      (e) => e.action === 'approval.vote_void' && e.detail.operator === 'bob',
    ),
  )

  // alice holds the code but not bob's token: redeeming it without, or with her own, fails.
  const code = reset.body.enrollment.code as string
  t.is((await redeemEnrollment(srv, code)).status, 401)
  const asAlice = await redeemEnrollment(srv, code, alice.token)
  t.is(asAlice.status, 401)
  t.is(asAlice.body.otpauthUri, undefined)
  // bob's old factor is gone, so neither alice (who has no bob token) nor bob votes with it.
  clock.advance(30)
  const old = await asOperator(srv, bob, 'POST', `/approvals/${id}/approve`, {
    code: codeNow(srv, bob),
  })
  t.is(old.status, 403)
  t.regex(old.body.message, /no TOTP enrolled|no second factor/)
  // bob cannot skip the enrollment by resetting himself: that needs a current factor.
  const self = await asOperator(srv, bob, 'POST', '/operators/bob/totp', {
    code: codeNow(srv, bob),
  })
  t.is(self.status, 403)
  t.is(self.body.otpauthUri, undefined)

  // Nor can he, without a factor, mint a way onto the fleet with his token alone.
  const mint = await asOperator(srv, bob, 'POST', '/tokens', { host: 'sneaky-1' })
  t.is(mint.status, 403, JSON.stringify(mint.body))
  t.is(mint.body.token, undefined)

  // alice's vote alone does not release a 2-of-2 host.
  const a1 = await asOperator(srv, alice, 'POST', `/approvals/${id}/approve`, {
    code: codeNow(srv, alice),
  })
  t.is(a1.body.state, 'pending')
  const waiting = await pollApproval(srv.transport, {
    keys: host.keys,
    hostId: host.hostId,
    bootId: 'bootid-reset',
    approvalId: id,
    holdMs: 500,
  })
  t.is(waiting.status, 'pending')

  // bob completes the reset with his own token and the code; his new factor votes.
  const done = await redeemEnrollment(srv, code, bob.token)
  t.is(done.status, 201, JSON.stringify(done.body))
  t.is(done.body.token, undefined, 'a reset keeps the token')
  const bob2 = { ...bob, secret: new URL(done.body.otpauthUri).searchParams.get('secret') ?? '' }
  t.not(bob2.secret, bob.secret)
  clock.advance(30)
  const b2 = await asOperator(srv, bob2, 'POST', `/approvals/${id}/approve`, {
    code: codeNow(srv, bob2),
  })
  t.is(b2.body.state, 'approved', JSON.stringify(b2.body))
  t.is((await redeemEnrollment(srv, code, bob.token)).status, 401, 'the code worked once')
})

test('alice cannot obtain bob’s token or secret from any route', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  await enrollHost(t, srv, 'web-1', { approval: 'always' })
  const alice = await addOperator(t, srv, 'alice')
  const bob = await addOperator(t, srv, 'bob')
  const r = await askUnlock(
    srv.transport,
    await enrollHost(t, srv, 'web-2', { approval: 'always' }),
    'bootid-walk',
  )
  const approvalId = r.status === 'released' ? 'ap_AAAAAAAAAAAAAAAAAAAAAA' : r.approval.id
  // Re-adding bob is refused, and the answer carries nothing of bob's.
  const readd = await asOperator(srv, alice, 'POST', '/operators', {
    name: 'bob',
    code: codeNow(srv, alice),
  })
  t.is(readd.body.error, 'operator_exists')

  const app = createApp(srv.deps)
  const routes = [
    ...new Set(
      app.routes
        .filter((x) => x.method !== 'ALL' && x.path.startsWith('/v1/'))
        .map((x) => `${x.method} ${x.path}`),
    ),
  ]
  t.true(routes.length >= 25, `found ${routes.length} routes`)
  const concrete = (method: string, path: string): string =>
    path
      // reads name bob and real things; changes name someone who does not exist
      .replace(/:name/g, method === 'GET' ? 'bob' : 'ghost')
      .replace(/:id/g, approvalId)
      .replace(/:[a-z]+/g, 'x')
  // Bodies: empty, alice's own valid code (so routes get past the factor check), a name.
  const body = (kind: string): unknown =>
    kind === 'empty' ? {} : kind === 'code' ? { code: codeNow(srv, alice) } : { name: 'bob' }
  const seen: string[] = []
  for (const route of routes) {
    const [method, path] = route.split(' ') as [string, string]
    for (const kind of method === 'GET' ? ['none'] : ['empty', 'code', 'name']) {
      clock.advance(30)
      const res = await srv.transport({
        method: method as 'GET' | 'POST' | 'PATCH' | 'DELETE',
        path: concrete(method, path),
        bearer: alice.token,
        headers: { 'x-unlockd-totp': codeNow(srv, alice) },
        ...(kind === 'none' ? {} : { body: body(kind) }),
      })
      const text = JSON.stringify(res.body)
      seen.push(`${route} ${res.status}`)
      for (const s of secretsOf(bob)) t.false(text.includes(s), `${route} carries bob's secret`)
      t.false(text.includes(srv.token), `${route} carries the admin token`)
      t.false(text.includes(srv.adminSecret), `${route} carries the admin secret`)
      t.false(/otpauth:/.test(text), `${route} carries an otpauth URI`)
    }
  }
  t.true(seen.some((s) => s.startsWith('GET /v1/admin/operators 200')))
  t.true(seen.some((s) => s.startsWith('GET /v1/admin/audit 200')))
})
