/**
 * Attacks with a stolen operator API token and no TOTP code, over real HTTP: nothing that loosens
 * a control or releases key material goes through, and tightening still does. An operator that
 * holds no factor (forced here in the store, since `server init` now always makes one) is refused
 * for every such action and for approve and deny.
 */
import test from 'ava'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import { asOperator, askUnlock, enrollHost, testClock } from '../helpers/approval.ts'

const STRICT = {
  approval: 'always',
  approvers: 2,
  cidrs: ['10.0.0.0/8'],
  maxUnlocks: { count: 3, periodSeconds: 3600 },
  idleSuspendSeconds: 86400,
  cloneWindowSeconds: 600,
  notAfter: 4_000_000_000,
}

async function auditActions(srv: TestServer): Promise<string[]> {
  const r = await srv.admin('GET', '/audit?limit=10000')
  return (r.body.entries as { action: string }[]).map((e) => e.action)
}

/** Every loosening or releasing call, as the bare token sends it. */
function attacks(host: string): [string, 'POST' | 'PATCH', string, unknown][] {
  return [
    ['relax approval', 'PATCH', `/hosts/${host}/policy`, { approval: 'never' }],
    ['fewer approvers', 'PATCH', `/hosts/${host}/policy`, { approvers: 1 }],
    ['any cidr', 'PATCH', `/hosts/${host}/policy`, { cidrs: [] }],
    ['no rate limit', 'PATCH', `/hosts/${host}/policy`, { maxUnlocks: null }],
    ['no idle suspension', 'PATCH', `/hosts/${host}/policy`, { idleSuspendSeconds: null }],
    ['no clone window', 'PATCH', `/hosts/${host}/policy`, { cloneWindowSeconds: null }],
    ['later expiry', 'PATCH', `/hosts/${host}/policy`, { notAfter: null }],
    ['resume', 'POST', `/hosts/${host}/resume`, undefined],
    ['escrow export', 'POST', `/hosts/${host}/escrow-export`, {}],
    ['kek rotate', 'POST', '/kek/rotate', {}],
    ['tang host add', 'POST', '/hosts', { name: 'tang-x', tang: true }],
    ['operator add', 'POST', '/operators', { name: 'mallory' }],
    ['operator totp reset', 'POST', '/operators/admin/totp', {}],
    ['operator remove', 'POST', '/operators/admin/remove', {}],
  ]
}

test('a stolen token without a code cannot relax a policy, resume, export, rotate or touch operators', async (t) => {
  const clock = testClock()
  const srv = await startTestServer(t, { now: clock.now })
  await enrollHost(t, srv, 'vault-1', STRICT)
  // Tightening is quick: suspend with the token alone.
  t.is((await srv.admin('POST', '/hosts/vault-1/suspend', {})).status, 200)
  t.is((await srv.admin('PATCH', '/hosts/vault-1/policy', { approvers: 3 })).status, 200)
  const before = (await srv.admin('GET', '/hosts/vault-1')).body
  const thief = { token: srv.token }
  for (const [what, method, path, body] of attacks('vault-1')) {
    const r = await asOperator(srv, thief, method, path, body)
    t.is(r.status, 403, `${what}: ${JSON.stringify(r.body)}`)
    t.is(r.body.error, 'totp_required', what)
    t.is(r.body.kek, undefined, what)
    t.is(r.body.volumes, undefined, `${what} hands out nothing`)
  }
  // A made-up code is no better, and counts as a failure.
  const guess = await asOperator(
    srv,
    thief,
    'PATCH',
    '/hosts/vault-1/policy',
    { approval: 'never' },
    '000000',
  )
  t.is(guess.status, 403)
  t.regex(guess.body.error, /^totp_(invalid|replayed)$/)
  // Nothing changed: same state and policy, no new operator, no Tang host, KEK still v1.
  const after = (await srv.admin('GET', '/hosts/vault-1')).body
  t.is(after.state, 'suspended')
  t.deepEqual(after.policy, before.policy)
  const ops = (await srv.admin('GET', '/operators')).body.operators as { name: string }[]
  t.deepEqual(
    ops.map((o) => o.name),
    ['admin'],
  )
  t.is((await srv.admin('GET', '/hosts/tang-x')).status, 404)
  t.deepEqual((await srv.admin('GET', '/kek')).body.versions, [1])
  const actions = await auditActions(srv)
  t.false(actions.includes('escrow.export'))
  t.false(actions.includes('host.resume'))
  // vault-1 needs 3 approvers and only the admin holds a factor: even with the admin's own
  // code nothing loosens it (only adding operators stays possible; see quorum-actions.test.ts).
  const alone = await srv.admin(
    'PATCH',
    '/hosts/vault-1/policy',
    { approval: 'never' },
    { totp: true },
  )
  t.is(alone.status, 409, JSON.stringify(alone.body))
  t.regex(alone.body.message, /needs 3 operators with a second factor/)
  // On a host that needs one approver, the admin's own code is enough for each.
  await enrollHost(t, srv, 'solo-1', { ...STRICT, approvers: 1 })
  t.is((await srv.admin('POST', '/hosts/solo-1/suspend', {})).status, 200)
  const ok = await srv.admin('PATCH', '/hosts/solo-1/policy', { approval: 'never' }, { totp: true })
  t.is(ok.status, 200, JSON.stringify(ok.body))
  t.is((await srv.admin('POST', '/hosts/solo-1/resume', undefined, { totp: true })).status, 200)
  const exp = await srv.admin('POST', '/hosts/solo-1/escrow-export', {}, { totp: true })
  t.is(exp.status, 200, JSON.stringify(exp.body))
  // Enrolled without a recovery key: exports are sealed only to one, so the volume is named, not given.
  t.deepEqual(exp.body.notExported, ['data'])
  const policyEntry = (
    (await srv.admin('GET', '/audit?limit=10000')).body.entries as {
      action: string
      host: string | null
      detail: { loosened?: string[] }
    }[]
  ).findLast((e) => e.action === 'host.policy' && e.host === 'solo-1')
  t.deepEqual(policyEntry?.detail.loosened, ['approval'])
  t.is((await srv.admin('GET', '/hosts/vault-1')).body.policy.approval, 'always')
})

test('the init operator holds a factor from init; an operator without one is refused everything, approve and deny too', async (t) => {
  const clock = testClock()
  const srv = await startTestServer(t, { now: clock.now })
  const ops = (await srv.admin('GET', '/operators')).body.operators as { totp: boolean }[]
  t.deepEqual(
    ops.map((o) => o.totp),
    [true],
  )
  const host = await enrollHost(t, srv, 'web-1', { ...STRICT, cidrs: [] })
  const r = await askUnlock(srv.transport, host, 'bootid-nofactor')
  if (r.status === 'released') return t.fail('expected 202')
  // Strip the factor, as an old data dir from before this rule would have it.
  await srv.deps.store.tx(async (tx) => {
    const admin = await tx.getOperatorByName('admin')
    if (admin)
      await tx.updateOperator(admin.id, { totpCt: null, totpIv: null, totpKekVersion: null })
  })
  const code = '123456'
  for (const [what, method, path, body] of attacks('web-1').filter(([w]) => w !== 'any cidr')) {
    const res = await srv.transport({
      method,
      path: `/v1/admin${path}`,
      bearer: srv.token,
      headers: { 'x-unlockd-totp': code },
      // operator routes take the code in the body, the others in the header
      ...(body === undefined
        ? {}
        : { body: path.startsWith('/operators') ? { ...(body as object), code } : body }),
    })
    t.is(res.status, 403, `${what}: ${JSON.stringify(res.body)}`)
    t.is((res.body as { error: string }).error, 'forbidden', what)
  }
  const approve = await srv.admin('POST', `/approvals/${r.approval.id}/approve`, { code })
  t.is(approve.status, 403)
  t.regex(approve.body.message, /no TOTP enrolled|no second factor/)
  const deny = await srv.admin('POST', `/approvals/${r.approval.id}/deny`, {})
  t.is(deny.status, 403)
  t.regex(deny.body.message, /no second factor/)
  t.is((await srv.admin('GET', `/approvals/${r.approval.id}`)).body.state, 'pending')
})
