/**
 * Human approval at boot, end to end over real HTTP: a host under `approval: always` gets 202,
 * operators approve with TOTP codes (API and the real `unlockd` CLI), and the waiting host is
 * released exactly once. Also: wrong, replayed and locked-out codes, expiry, k=2, deny, the
 * wait across a restart, operator management, webhooks, liveness (idle suspension), and
 * `host set` / `host show`.
 *
 * The server runs on an injected clock (`testClock`) and the tests make TOTP codes for that
 * clock, so no test depends on wall-clock timing.
 */
import test from 'ava'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createHmac } from 'node:crypto'
import { openEscrowBlob, pollApproval } from '../../shared/client/host-client.ts'
import { suspendIdleHosts } from '../../server/approvals/liveness.ts'
import { totpCodeAt } from '../../server/approvals/totp.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import { UNLOCKD, runCli } from '../helpers/cli.ts'
import { until } from '../helpers/wait.ts'
import {
  addOperator,
  askUnlock,
  asOperator,
  codeNow,
  enrollHost,
  redeemEnrollment,
  secretOf,
  testClock,
  waitForRelease,
  wrongCode,
  type TestClock,
} from '../helpers/approval.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

const SETTINGS = { iatSkew: 10_000_000, pollHold: 2 }

async function server(
  t: Parameters<typeof startTestServer>[0],
  clock: TestClock,
  settings: Record<string, unknown> = {},
): Promise<TestServer> {
  return startTestServer(t, { now: clock.now, settings: { ...SETTINGS, ...settings } })
}

function cliEnv(
  t: { teardown(fn: () => void): void },
  srv: TestServer,
  token: string,
): Record<string, string> {
  const home = mkdtempSync(join(tmpdir(), 'unlockd-cli-home-'))
  t.teardown(() => rmSync(home, { recursive: true, force: true }))
  return { UNLOCKD_URL: srv.url, UNLOCKD_TOKEN: token, HOME: home }
}

/** A CLI environment with the server URL and no operator token (a new operator enrolling). */
function noTokenEnv(
  t: { teardown(fn: () => void): void },
  srv: TestServer,
): Record<string, string> {
  const { UNLOCKD_TOKEN: _none, ...env } = cliEnv(t, srv, '')
  return env
}

async function auditActions(
  srv: TestServer,
): Promise<{ actor: string; action: string; detail: Record<string, unknown> }[]> {
  return (await srv.admin('GET', '/audit')).body.entries
}

test.before(() => {
  if (!existsSync(UNLOCKD))
    throw new Error(`${UNLOCKD} is missing: run \`npm run build\` first (npm test does it)`)
})

test('approval always: 202, an operator approves with the CLI, the waiting host unlocks once', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const host = await enrollHost(t, srv, 'web-1', { approval: 'always' })
  const adminEnv = cliEnv(t, srv, srv.token)

  // operator add over the CLI: the adder gets only a one-time enrollment code
  const add = await runCli(['operator', 'add', 'alice', '--json'], adminEnv, {
    stdin: `${await srv.adminCode()}\n`,
  })
  t.is(add.code, 0, add.stderr)
  t.is(add.json.operator.name, 'alice')
  t.false(add.json.operator.totp)
  t.is(add.json.token, undefined)
  t.is(add.json.otpauthUri, undefined)
  t.regex(add.json.enrollment.code, /^oe_[A-Za-z0-9_-]{43}$/)
  t.false(add.stdout.includes('otpauth://'))
  // alice redeems it with `operator enroll` (no token of her own yet; the code on stdin)
  const aliceIn = await runCli(['operator', 'enroll', '--json'], noTokenEnv(t, srv), {
    stdin: `${add.json.enrollment.code}\n`,
  })
  t.is(aliceIn.code, 0, aliceIn.stderr)
  t.regex(aliceIn.json.token, /^uo_/)
  t.regex(aliceIn.json.otpauthUri, /^otpauth:\/\/totp\/unlockd:alice\?secret=[A-Z2-7]+/)
  const alice = {
    name: 'alice',
    token: aliceIn.json.token as string,
    secret: secretOf(aliceIn.json.otpauthUri),
  }
  // the human forms: the adder sees the code and no secret; the redeemer sees a QR code
  const add2 = await runCli(['operator', 'add', 'bob'], adminEnv, {
    stdin: `${await srv.adminCode()}\n`,
  })
  t.is(add2.code, 0, add2.stderr)
  const bobCode = /oe_[A-Za-z0-9_-]{43}/.exec(add2.stdout)?.[0] ?? ''
  t.truthy(bobCode, add2.stdout)
  t.false(add2.stdout.includes('otpauth://'))
  t.false(/uo_[A-Za-z0-9_-]{43}/.test(add2.stdout))
  const bobIn = await runCli(['operator', 'enroll'], noTokenEnv(t, srv), { stdin: `${bobCode}\n` })
  t.is(bobIn.code, 0, bobIn.stderr)
  t.regex(bobIn.stdout, /otpauth:\/\/totp\/unlockd:bob\?secret=/)
  t.regex(bobIn.stdout, /API token \(shown once/)
  t.true(bobIn.stdout.includes('█'), 'a QR code is drawn with block characters')
  // the code worked once
  const twice = await runCli(['operator', 'enroll'], noTokenEnv(t, srv), { stdin: `${bobCode}\n` })
  t.not(twice.code, 0)

  const r = await askUnlock(srv.transport, host, 'bootid-0001')
  t.is(r.status, 'approval_required')
  if (r.status === 'released') return
  t.is(r.approval.rule, 'approval:always')
  t.true(r.approval.expiresAt > clock.now())

  // the host waits; a poll before any decision answers pending (202)
  const early = await pollApproval(srv.transport, {
    keys: host.keys,
    hostId: host.hostId,
    bootId: 'bootid-0001',
    approvalId: r.approval.id,
    holdMs: 2000,
  })
  t.is(early.status, 'pending')

  clock.advance(75)
  const aliceEnv = cliEnv(t, srv, alice.token)
  const list = await runCli(['approvals', '--json'], aliceEnv)
  t.is(list.code, 0, list.stderr)
  t.is(list.json.length, 1)
  t.like(list.json[0], {
    id: r.approval.id,
    host: 'web-1',
    volumes: [],
    source: '127.0.0.1',
    bootId: 'bootid-0001',
    rule: 'approval:always',
    required: 1,
    state: 'pending',
    ageSeconds: 75,
  })
  const table = await runCli(['approvals'], aliceEnv)
  t.regex(
    table.stdout,
    /web-1\s+all\s+127\.0\.0\.1\s+bootid-0001\s+approval:always\s+0\/1\s+1m15s\s+pending/,
  )

  // a long-poll in flight is woken by the decision
  const waiting = waitForRelease(srv.transport, host, 'bootid-0001', r.approval.id)
  const ok = await runCli(['approve', r.approval.id, '--json'], aliceEnv, {
    stdin: `${codeNow(srv, alice)}\n`,
  })
  t.is(ok.code, 0, ok.stderr)
  t.is(ok.json.state, 'approved')
  t.deepEqual(ok.json.approvedBy, ['alice'])
  const released = await waiting
  t.is(released.status, 'released')
  if (released.status !== 'released') return
  t.deepEqual(await openEscrowBlob(released.volumes[0]!.blob, host.keys.sealing), host.vk)

  // single use: the same boot cannot collect it again
  await rejectsWithCode(
    t,
    pollApproval(srv.transport, {
      keys: host.keys,
      hostId: host.hostId,
      bootId: 'bootid-0001',
      approvalId: r.approval.id,
    }),
    'approval_used',
  )
  // ...and another boot cannot collect it at all
  await rejectsWithCode(
    t,
    pollApproval(srv.transport, {
      keys: host.keys,
      hostId: host.hostId,
      bootId: 'bootid-0002',
      approvalId: r.approval.id,
    }),
    'forbidden',
  )
  // nothing pending any more
  t.deepEqual((await runCli(['approvals', '--json'], aliceEnv)).json, [])

  // audited with the operator's name, never the code
  const entries = await auditActions(srv)
  t.truthy(entries.find((e) => e.action === 'approval.request'))
  t.truthy(entries.find((e) => e.action === 'approval.approve' && e.actor === 'operator:alice'))
  t.truthy(entries.find((e) => e.action === 'operator.add' && e.detail['operator'] === 'alice'))
  t.truthy(
    entries.find((e) => e.action === 'unlock.release' && e.detail['approval'] === r.approval.id),
  )
  const everything = JSON.stringify(entries) + srv.logs.join('\n')
  t.false(everything.includes(alice.secret), 'the TOTP secret is in no audit entry or log')
  t.false(everything.includes(alice.token), 'the API token is in no audit entry or log')
})

test('wrong codes, replayed codes and lockout are refused; an expired request cannot be approved', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock, { totpMaxFailures: 3, totpFailureWindow: 600 })
  const host = await enrollHost(t, srv, 'db-1', { approval: 'always' })
  const alice = await addOperator(t, srv, 'alice')
  const bob = await addOperator(t, srv, 'bob')

  const a1 = await askUnlock(srv.transport, host, 'bootid-a1')
  if (a1.status === 'released') return t.fail('expected 202')
  const approve = (op: typeof alice, id: string, code: string) =>
    asOperator(srv, op, 'POST', `/approvals/${id}/approve`, { code })

  // wrong code: 403 totp_invalid, still pending
  const bad = await approve(alice, a1.approval.id, wrongCode(alice.secret, clock.now()))
  t.is(bad.status, 403)
  t.is(bad.body.error, 'totp_invalid')
  t.is((await asOperator(srv, alice, 'GET', `/approvals/${a1.approval.id}`)).body.state, 'pending')
  // a malformed code never reaches the check
  t.is((await approve(alice, a1.approval.id, '12345')).body.error, 'bad_request')

  // a valid code works once...
  const code = codeNow(srv, alice)
  t.is((await approve(alice, a1.approval.id, code)).status, 200)
  t.is((await waitForRelease(srv.transport, host, 'bootid-a1', a1.approval.id)).status, 'released')
  // ...and is refused on the next request, even within its 30 s step
  const a2 = await askUnlock(srv.transport, host, 'bootid-a2')
  if (a2.status === 'released') return t.fail('expected 202')
  const replay = await approve(alice, a2.approval.id, code)
  t.is(replay.status, 403)
  t.is(replay.body.error, 'totp_replayed')
  // an older code (previous step, still inside the drift window) is a replay too
  clock.advance(30)
  const older = totpCodeAt(alice.secret, clock.now() - 30)
  t.is((await approve(alice, a2.approval.id, older)).body.error, 'totp_replayed')

  // lockout: the failures above (1 wrong, 2 replays) reach the limit of 3 for alice
  const locked = await approve(alice, a2.approval.id, codeNow(srv, alice))
  t.is(locked.status, 429)
  t.is(locked.body.error, 'totp_locked')
  // the lockout is per operator: bob still approves
  t.is((await approve(bob, a2.approval.id, codeNow(srv, bob))).body.state, 'approved')
  t.is((await waitForRelease(srv.transport, host, 'bootid-a2', a2.approval.id)).status, 'released')
  // after the failure window alice can approve again
  clock.advance(601)
  const a3 = await askUnlock(srv.transport, host, 'bootid-a3')
  if (a3.status === 'released') return t.fail('expected 202')
  t.is((await approve(alice, a3.approval.id, codeNow(srv, alice))).body.state, 'approved')

  // expiry: a request past its lifetime cannot be approved, and the host is told so
  clock.advance(30)
  const a4 = await askUnlock(srv.transport, host, 'bootid-a4')
  if (a4.status === 'released') return t.fail('expected 202')
  clock.advance(srv.deps.settings.approvalTtl + 1)
  const late = await approve(bob, a4.approval.id, codeNow(srv, bob))
  t.is(late.status, 403)
  t.is(late.body.error, 'approval_expired')
  await rejectsWithCode(
    t,
    pollApproval(srv.transport, {
      keys: host.keys,
      hostId: host.hostId,
      bootId: 'bootid-a4',
      approvalId: a4.approval.id,
    }),
    'approval_expired',
  )
  // expiry did not spend bob's code
  t.is((await asOperator(srv, bob, 'GET', `/approvals/${a4.approval.id}`)).body.state, 'expired')

  const entries = await auditActions(srv)
  t.is(entries.filter((e) => e.action === 'totp.fail' && e.actor === 'operator:alice').length, 3)
  t.truthy(entries.find((e) => e.action === 'totp.locked' && e.actor === 'operator:alice'))
  t.truthy(entries.find((e) => e.action === 'approval.expire'))
})

test('approvers: 2 needs two distinct operators; one approval keeps the host waiting', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  // Operators first: once a host needs two approvers, adding one needs two operators too.
  const alice = await addOperator(t, srv, 'alice')
  const bob = await addOperator(t, srv, 'bob')
  const host = await enrollHost(t, srv, 'vault-1', { approval: 'always', approvers: 2 })
  const r = await askUnlock(srv.transport, host, 'bootid-k2')
  if (r.status === 'released') return t.fail('expected 202')

  const first = await asOperator(srv, alice, 'POST', `/approvals/${r.approval.id}/approve`, {
    code: codeNow(srv, alice),
  })
  t.is(first.status, 200)
  t.like(first.body, { state: 'pending', approvedBy: ['alice'], required: 2 })
  // still pending for the host
  const mid = await pollApproval(srv.transport, {
    keys: host.keys,
    hostId: host.hostId,
    bootId: 'bootid-k2',
    approvalId: r.approval.id,
    holdMs: 2000,
  })
  t.is(mid.status, 'pending')
  // alice again (with a fresh code) does not count twice
  clock.advance(30)
  const twice = await asOperator(srv, alice, 'POST', `/approvals/${r.approval.id}/approve`, {
    code: codeNow(srv, alice),
  })
  t.is(twice.status, 409)
  t.is(twice.body.error, 'already_approved')

  const waiting = waitForRelease(srv.transport, host, 'bootid-k2', r.approval.id)
  const second = await asOperator(srv, bob, 'POST', `/approvals/${r.approval.id}/approve`, {
    code: codeNow(srv, bob),
  })
  t.like(second.body, { state: 'approved', approvedBy: ['alice', 'bob'] })
  const released = await waiting
  if (released.status !== 'released') return t.fail('expected release')
  t.deepEqual(await openEscrowBlob(released.volumes[0]!.blob, host.keys.sealing), host.vk)
  const entries = await auditActions(srv)
  t.truthy(entries.find((e) => e.action === 'approval.vote' && e.actor === 'operator:alice'))
  t.deepEqual(entries.find((e) => e.action === 'approval.approve')?.detail['operators'], [
    'alice',
    'bob',
  ])
})

test('deny (CLI): the waiting host is refused with the reason', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const host = await enrollHost(t, srv, 'web-2', { approval: 'always' })
  const alice = await addOperator(t, srv, 'alice')
  const r = await askUnlock(srv.transport, host, 'bootid-deny')
  if (r.status === 'released') return t.fail('expected 202')
  // Waits while the operator denies; the assertion is attached at once (no unhandled rejection).
  const waiting = rejectsWithCode(
    t,
    waitForRelease(srv.transport, host, 'bootid-deny', r.approval.id),
    'approval_denied',
  )
  const env = cliEnv(t, srv, alice.token)
  const d = await runCli(['deny', r.approval.id, '--reason', 'unexpected reboot', '--json'], env)
  t.is(d.code, 0, d.stderr)
  t.like(d.json, { state: 'denied', reason: 'unexpected reboot' })
  const err = await waiting
  t.regex(err?.message ?? '', /unexpected reboot/)
  // a decided request cannot be approved afterwards
  const late = await runCli(['approve', r.approval.id], env, {
    stdin: `${codeNow(srv, alice)}\n`,
  })
  t.is(late.code, 3)
  t.regex(late.stderr, /approval_denied/)
  t.truthy(
    (await auditActions(srv)).find(
      (e) =>
        e.action === 'approval.deny' &&
        e.actor === 'operator:alice' &&
        e.detail['reason'] === 'unexpected reboot',
    ),
  )
})

test('the wait survives a server restart: approve after the restart, the host unlocks', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const host = await enrollHost(t, srv, 'web-3', { approval: 'always' })
  const alice = await addOperator(t, srv, 'alice')
  const r = await askUnlock(srv.transport, host, 'bootid-rs')
  if (r.status === 'released') return t.fail('expected 202')
  const srv2 = await srv.restart()
  t.is((await asOperator(srv2, alice, 'GET', '/approvals')).body.approvals[0].id, r.approval.id)
  const waiting = waitForRelease(srv2.transport, host, 'bootid-rs', r.approval.id)
  t.is(
    (
      await asOperator(srv2, alice, 'POST', `/approvals/${r.approval.id}/approve`, {
        code: codeNow(srv2, alice),
      })
    ).body.state,
    'approved',
  )
  const released = await waiting
  if (released.status !== 'released') return t.fail('expected release')
  t.deepEqual(await openEscrowBlob(released.volumes[0]!.blob, host.keys.sealing), host.vk)
})

test('operators (CLI): the init operator holds TOTP from init; every operator change needs its code from stdin; list and remove', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const env = cliEnv(t, srv, srv.token)
  const admin = { secret: srv.adminSecret }

  const list0 = await runCli(['operator', 'list', '--json'], env)
  t.deepEqual(
    list0.json.map((o: { name: string; totp: boolean }) => [o.name, o.totp]),
    [['admin', true]],
  )
  const host = await enrollHost(t, srv, 'web-4', { approval: 'always' })
  const r = await askUnlock(srv.transport, host, 'bootid-op')
  if (r.status === 'released') return t.fail('expected 202')

  // codes are never arguments: --code is an unknown option now
  const argv = await runCli(['operator', 'add', 'carol', '--code', codeNow(srv, admin)], env)
  t.is(argv.code, 2)
  // no code on stdin: refused before anything is sent
  const noCode = await runCli(['operator', 'add', 'carol', '--json'], env, { stdin: '' })
  t.is(noCode.code, 2)
  const withCode = await runCli(['operator', 'add', 'carol', '--json'], env, {
    stdin: `${codeNow(srv, admin)}\n`,
  })
  t.is(withCode.code, 0, withCode.stderr)
  const carolIn = await runCli(['operator', 'enroll', '--json', '--no-qr'], noTokenEnv(t, srv), {
    stdin: `${withCode.json.enrollment.code}\n`,
  })
  t.is(carolIn.code, 0, carolIn.stderr)
  const carol = { token: carolIn.json.token as string, secret: secretOf(carolIn.json.otpauthUri) }
  // a reset of carol's factor by the admin needs a code too and shows the admin no secret
  clock.advance(30)
  const reset = await runCli(['operator', 'totp', 'carol', '--json'], env, {
    stdin: `${codeNow(srv, admin)}\n`,
  })
  t.is(reset.code, 0, reset.stderr)
  t.is(reset.json.enrollment.kind, 'reset')
  t.is(reset.json.otpauthUri, undefined)
  t.false(reset.json.operator.totp)
  // carol completes it with her own token; her new secret replaces the old one
  const again = await runCli(
    ['operator', 'enroll', '--json', '--no-qr'],
    cliEnv(t, srv, carol.token),
    { stdin: `${reset.json.enrollment.code}\n` },
  )
  t.is(again.code, 0, again.stderr)
  t.is(again.json.token, undefined, 'a reset keeps the token')
  t.not(secretOf(again.json.otpauthUri), carol.secret)
  // the same code twice is a replay, whatever the action
  const replay = await runCli(['operator', 'add', 'dave'], env, {
    stdin: `${codeNow(srv, admin)}\n`,
  })
  t.is(replay.code, 3)
  t.regex(replay.stderr, /totp_replayed/)
  clock.advance(30)
  const dup = await runCli(['operator', 'add', 'carol'], env, {
    stdin: `${codeNow(srv, admin)}\n`,
  })
  t.is(dup.code, 1)
  t.regex(dup.stderr, /operator_exists|already exists/)

  // the admin approves with its own code, read from stdin
  clock.advance(30)
  const ok = await runCli(['approve', r.approval.id, '--json'], env, {
    stdin: `${codeNow(srv, admin)}\n`,
  })
  t.is(ok.code, 0, ok.stderr)
  t.is(ok.json.state, 'approved')

  clock.advance(30)
  const rm = await runCli(['operator', 'remove', 'carol', '--json'], env, {
    stdin: `${codeNow(srv, admin)}\n`,
  })
  t.is(rm.code, 0, rm.stderr)
  const list1 = await runCli(['operator', 'list', '--json'], env)
  t.deepEqual(
    list1.json.map((o: { name: string; totp: boolean }) => [o.name, o.totp]),
    [['admin', true]],
  )
  // carol's token is dead
  t.is((await asOperator(srv, carol, 'GET', '/approvals')).status, 401)
  // the last operator cannot be removed
  clock.advance(30)
  const last = await runCli(['operator', 'remove', 'admin'], env, {
    stdin: `${codeNow(srv, admin)}\n`,
  })
  t.is(last.code, 1)
  t.regex(last.stderr, /last one/)
  const bad = await runCli(['approve', 'nonsense'], env, { stdin: '123456\n' })
  t.is(bad.code, 2)
})

interface Hook {
  url: string
  received: { headers: IncomingMessage['headers']; body: string }[]
  close(): Promise<void>
}

/** A webhook receiver on 127.0.0.1:0; `respond` decides each answer (or never answers). */
async function webhookReceiver(
  t: { teardown(fn: () => Promise<void>): void },
  respond: (n: number, res: ServerResponse) => void,
): Promise<Hook> {
  const received: Hook['received'] = []
  const open = new Set<ServerResponse>()
  const srv = createServer((req, res) => {
    let body = ''
    req.on('data', (d: Buffer) => (body += d.toString()))
    req.on('end', () => {
      // Audit chain heads go to the same webhook; these tests are about approval requests.
      if (req.headers['x-unlockd-event'] === 'audit.head') return void res.writeHead(200).end()
      received.push({ headers: req.headers, body })
      open.add(res)
      res.on('close', () => open.delete(res))
      respond(received.length, res)
    })
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const close = async (): Promise<void> => {
    for (const r of open) r.destroy()
    srv.closeAllConnections()
    await new Promise<void>((resolve) => srv.close(() => resolve()))
  }
  t.teardown(close)
  return {
    url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}/unlockd-topic`,
    received,
    close,
  }
}

test('webhook: every new request is announced, HMAC-signed, ntfy-readable, retried after a failure', async (t) => {
  const hook = await webhookReceiver(t, (n, res) => {
    res.writeHead(n === 1 ? 503 : 200).end() // the first delivery fails and is retried
  })
  const clock = testClock()
  const srv = await server(t, clock, {
    webhook: { url: hook.url, secret: 'hook-secret-1' },
    publicUrl: 'https://escrow.example:8443',
  })
  const host = await enrollHost(t, srv, 'web-5', { approval: 'always' })
  const r = await askUnlock(srv.transport, host, 'bootid-wh')
  if (r.status === 'released') return t.fail('expected 202')
  await until(() => hook.received.length >= 2, 'the retried delivery')
  const [first, second] = hook.received
  t.is(first!.body, second!.body, 'a retry sends the same signed body')
  const { headers, body } = second!
  t.is(
    headers['x-unlockd-signature'],
    `sha256=${createHmac('sha256', 'hook-secret-1').update(body).digest('hex')}`,
  )
  t.is(headers['content-type'], 'application/json')
  t.is(headers['x-unlockd-event'], 'approval.requested')
  t.is(headers['title'], 'unlockd: web-5 asks to unlock')
  t.is(headers['click'], `https://escrow.example:8443/approve/${r.approval.id}`)
  const n = JSON.parse(body)
  t.like(n, {
    event: 'approval.requested',
    approval: {
      id: r.approval.id,
      host: 'web-5',
      bootId: 'bootid-wh',
      source: '127.0.0.1',
      rule: 'approval:always',
      state: 'pending',
    },
  })
  t.regex(
    n.message,
    /web-5 asks to unlock all volumes from 127\.0\.0\.1 \(boot bootid-wh\); rule approval:always/,
  )
  t.true(n.message.includes(`https://escrow.example:8443/approve/${r.approval.id}`))
  t.false(body.includes(srv.token), 'no API token in the notification')
  t.true(srv.logs.some((l) => l.includes('webhook failed; will retry')))
  await until(() => srv.logs.some((l) => l.includes('webhook delivered')), 'the delivery log line')
  t.false(srv.logs.join('\n').includes('hook-secret-1'), 'the webhook secret is never logged')
})

test('webhook: a dead endpoint does not delay the 202, and failures are bounded and logged', async (t) => {
  // This receiver takes the request and never answers.
  const hook = await webhookReceiver(t, () => {})
  const clock = testClock()
  const srv = await server(t, clock, { webhook: { url: hook.url, secret: null } })
  const host = await enrollHost(t, srv, 'web-6', { approval: 'always' })
  const r = await askUnlock(srv.transport, host, 'bootid-dead')
  t.is(r.status, 'approval_required')
  await until(() => hook.received.length >= 1, 'the webhook request')
  // The 202 above was answered; the webhook request is still hanging now.
  t.is(hook.received.length, 1)
  t.is(hook.received[0]!.headers['x-unlockd-signature'], undefined, 'no signature without a secret')
  // and unlocks keep flowing while it hangs
  const r2 = await askUnlock(srv.transport, host, 'bootid-dead-2')
  t.is(r2.status, 'approval_required')
  // Connection refused: closing the receiver makes every attempt fail fast; the notifier logs and gives up.
  await hook.close()
  const srv2 = await srv.restart()
  srv2.deps.settings.webhook = { url: hook.url, secret: null }
  const r3 = await askUnlock(srv2.transport, host, 'bootid-dead-3')
  t.is(r3.status, 'approval_required')
  await until(
    () => srv2.logs.some((l) => l.includes('webhook failed; will retry')),
    'a logged failure',
  )
})

test('liveness: an idle host is suspended by the job, its unlock needs approval, approving resumes it', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const host = await enrollHost(t, srv, 'edge-1', { idleSuspendSeconds: 3600 })
  const alice = await addOperator(t, srv, 'alice')
  t.is((await askUnlock(srv.transport, host, 'bootid-l1')).status, 'released')

  clock.advance(3000)
  t.deepEqual(await suspendIdleHosts(srv.deps), [], 'seen 50 minutes ago: still active')
  clock.advance(700)
  t.deepEqual(await suspendIdleHosts(srv.deps), ['edge-1'])
  const shown = (await srv.admin('GET', '/hosts/edge-1')).body
  t.is(shown.state, 'suspended')
  t.regex(shown.stateReason, /^idle: not seen for more than 1h/)

  const r = await askUnlock(srv.transport, host, 'bootid-l2')
  if (r.status === 'released') return t.fail('expected 202')
  t.is(r.approval.rule, 'idle-suspend')
  // asking again does not count as being seen
  const again = await askUnlock(srv.transport, host, 'bootid-l2')
  t.is(again.status, 'approval_required')
  const waiting = waitForRelease(srv.transport, host, 'bootid-l2', r.approval.id)
  t.is(
    (
      await asOperator(srv, alice, 'POST', `/approvals/${r.approval.id}/approve`, {
        code: codeNow(srv, alice),
      })
    ).body.state,
    'approved',
  )
  t.is((await waiting).status, 'released')
  t.is((await srv.admin('GET', '/hosts/edge-1')).body.state, 'active')
  // seen again: the next boot goes through without approval
  t.is((await askUnlock(srv.transport, host, 'bootid-l3')).status, 'released')

  const entries = await auditActions(srv)
  t.truthy(entries.find((e) => e.action === 'host.idle_suspend' && e.actor === 'system'))
  t.truthy(entries.find((e) => e.action === 'host.resume' && e.actor === 'operator:alice'))
})

test('liveness: the unlock path suspends an idle host even before the job runs; `host resume` lifts it', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const host = await enrollHost(t, srv, 'edge-2', { idleSuspendSeconds: 600 })
  clock.advance(601)
  const r = await askUnlock(srv.transport, host, 'bootid-m1')
  if (r.status === 'released') return t.fail('expected 202')
  t.is(r.approval.rule, 'idle-suspend')
  t.is((await srv.admin('GET', '/hosts/edge-2')).body.state, 'suspended')
  const env = cliEnv(t, srv, srv.token)
  // resume lifts a control: without a code it is refused, with the admin's code it goes through
  const noCode = await runCli(['host', 'resume', 'edge-2', '--json'], env, { stdin: '' })
  t.is(noCode.code, 2)
  const resume = await runCli(['host', 'resume', 'edge-2', '--json'], env, {
    stdin: `${await srv.adminCode()}\n`,
  })
  t.is(resume.code, 0, resume.stderr)
  t.is(resume.json.state, 'active')
  // resume counts as contact: the next unlock is released without approval
  t.is((await askUnlock(srv.transport, host, 'bootid-m2')).status, 'released')
  // an operator's own suspension is not lifted by approvals: unlock is denied outright
  t.is((await runCli(['host', 'suspend', 'edge-2', '--reason', 'investigating'], env)).code, 0)
  await rejectsWithCode(t, askUnlock(srv.transport, host, 'bootid-m3'), 'host_suspended')
})

test('after-idle(DURATION): asking or polling does not count as being seen', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const host = await enrollHost(t, srv, 'edge-3', { approval: 'after-idle(1h)' })
  t.is((await askUnlock(srv.transport, host, 'bootid-i1')).status, 'released')
  clock.advance(1800)
  t.is((await askUnlock(srv.transport, host, 'bootid-i2')).status, 'released')
  clock.advance(3601)
  const r = await askUnlock(srv.transport, host, 'bootid-i3')
  if (r.status === 'released') return t.fail('expected 202')
  t.is(r.approval.rule, 'approval:after-idle(1h)')
  await pollApproval(srv.transport, {
    keys: host.keys,
    hostId: host.hostId,
    bootId: 'bootid-i3',
    approvalId: r.approval.id,
    holdMs: 2000,
  })
  // a fresh request right after must still need approval
  t.is((await askUnlock(srv.transport, host, 'bootid-i4')).status, 'approval_required')
})

test('host set / host show (CLI) end to end', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  await enrollHost(t, srv, 'web-7')
  const env = cliEnv(t, srv, srv.token)
  const set = await runCli(
    [
      'host',
      'set',
      'web-7',
      '--approval',
      'after-idle(7d)',
      '--approvers',
      '2',
      '--cidr',
      '127.0.0.0/8',
      '--max-unlocks',
      '5/1h',
      '--idle-suspend',
      '30d',
      '--clone-window',
      '10m',
      '--json',
    ],
    env,
  )
  t.is(set.code, 0, set.stderr)
  t.like(set.json.policy, {
    approval: 'after-idle(7d)',
    approvers: 2,
    cidrs: ['127.0.0.0/8'],
    maxUnlocks: { count: 5, periodSeconds: 3600 },
    idleSuspendSeconds: 30 * 86400,
    cloneWindowSeconds: 600,
  })
  const show = await runCli(['host', 'show', 'web-7'], env)
  t.is(show.code, 0, show.stderr)
  t.regex(show.stdout, /approval:\s+after-idle\(7d\) \(approvers: 2\)/)
  t.regex(show.stdout, /cidrs:\s+127\.0\.0\.0\/8/)
  t.regex(show.stdout, /max unlocks: 5\/1h/)
  t.regex(show.stdout, /idle suspend: 30d/)
  t.regex(show.stdout, /clone check: 10m/)
  // web-7 now needs two approvers: relaxing it needs a second operator. While the admin is the
  // only one holding a factor, adding operators is what still works (it needs just the admin).
  const bob = await addOperator(t, srv, 'bob')
  const off = await runCli(
    [
      'host',
      'set',
      'web-7',
      '--approval',
      'never',
      '--approvers',
      '1',
      '--any-cidr',
      '--max-unlocks',
      'off',
      '--idle-suspend',
      'off',
      '--json',
    ],
    env,
    { stdin: `${await srv.adminCode()}\n` },
  )
  t.is(off.code, 5, off.stderr)
  const actionId = /qa_[A-Za-z0-9_-]{22}/.exec(off.stderr)?.[0]
  if (!actionId) return t.fail(off.stderr)
  t.is((await srv.admin('GET', '/hosts/web-7')).body.policy.approvers, 2)
  const approved = await runCli(['approve', actionId, '--json'], cliEnv(t, srv, bob.token), {
    stdin: `${codeNow(srv, bob)}\n`,
  })
  t.is(approved.code, 0, approved.stderr)
  t.like(approved.json, { state: 'done', approvedBy: ['admin', 'bob'] })
  t.like((await srv.admin('GET', '/hosts/web-7')).body.policy, {
    approval: 'never',
    approvers: 1,
    cidrs: [],
    maxUnlocks: null,
    idleSuspendSeconds: null,
  })
  const showJson = await runCli(['host', 'show', 'web-7', '--json'], env)
  t.is(showJson.json.name, 'web-7')
  t.is(showJson.json.volumes[0].name, 'data')
  const bad = await runCli(['host', 'set', 'web-7', '--approval', 'sometimes'], env)
  t.is(bad.code, 2)
  const unknown = await runCli(['host', 'show', 'nope'], env)
  t.is(unknown.code, 1)
  t.regex(unknown.stderr, /no host named nope/)
  t.truthy(
    (await auditActions(srv)).find(
      (e) => e.action === 'host.policy' && e.actor === 'operator:admin',
    ),
  )
})

test('k-of-n: an operator added after the request was opened does not count', async (t) => {
  const clock = testClock()
  const srv = await server(t, clock)
  const host = await enrollHost(t, srv, 'vault-2', { approval: 'always', approvers: 2 })
  const alice = await addOperator(t, srv, 'alice')
  clock.advance(5)
  const r = await askUnlock(srv.transport, host, 'bootid-late')
  if (r.status === 'released') return t.fail('expected 202')
  clock.advance(5)
  // alice (token + TOTP) tries to mint a second operator to complete the quorum alone: with
  // two operators holding a factor, adding one needs both, so she gets only a pending action.
  const made = await asOperator(srv, alice, 'POST', '/operators', {
    name: 'sock-puppet',
    code: codeNow(srv, alice),
  })
  t.is(made.status, 202, JSON.stringify(made.body))
  t.is(made.body.token, undefined)
  // Even if the admin approves the addition, the new operator cannot count toward the request.
  const ok = await srv.admin('POST', `/actions/${made.body.action.id}/approve`, {
    code: await srv.adminCode(),
  })
  t.is(ok.body.state, 'approved')
  clock.advance(30)
  const got = await srv.transport({
    method: 'POST',
    path: '/v1/admin/operators',
    bearer: alice.token,
    body: { name: 'sock-puppet', code: codeNow(srv, alice) },
    headers: { 'x-unlockd-action': made.body.action.id },
  })
  t.is(got.status, 201, JSON.stringify(got.body))
  const collected = got.body as { token?: unknown; enrollment: { code: string } }
  t.is(collected.token, undefined)
  const redeemed = await redeemEnrollment(srv, collected.enrollment.code)
  t.is(redeemed.status, 201, JSON.stringify(redeemed.body))
  const sock = { token: redeemed.body.token, secret: secretOf(redeemed.body.otpauthUri) }
  clock.advance(30)
  t.is(
    (
      await asOperator(srv, alice, 'POST', `/approvals/${r.approval.id}/approve`, {
        code: codeNow(srv, alice),
      })
    ).status,
    200,
  )
  const late = await asOperator(srv, sock, 'POST', `/approvals/${r.approval.id}/approve`, {
    code: codeNow(srv, sock),
  })
  t.is(late.status, 403)
  t.is(late.body.error, 'forbidden')
  const still = await pollApproval(srv.transport, {
    keys: host.keys,
    hostId: host.hostId,
    bootId: 'bootid-late',
    approvalId: r.approval.id,
    holdMs: 1000,
  })
  t.is(still.status, 'pending')
})
