/**
 * Pure pieces of human approval: idle rules in policy evaluation, TOTP step matching, the
 * webhook signature and message, and the page's CSRF token and escaping.
 */
import test from 'ava'
import { createHmac } from 'node:crypto'
import { DEFAULT_POLICY, type Policy } from '../../shared/protocol/policy.ts'
import type { ApprovalView } from '../../shared/protocol/messages.ts'
import { evaluatePolicy, type PolicyInput } from '../../server/policy/evaluate.ts'
import {
  IDLE_SUSPEND_RULE,
  idleExpired,
  idleSuspendReason,
  isIdleSuspended,
} from '../../server/policy/idle.ts'
import { matchStep, totpCodeAt } from '../../server/approvals/totp.ts'
import { notificationFor, signBody } from '../../server/approvals/notify.ts'
import {
  PAGE_CSP,
  csrfToken,
  csrfValid,
  newCsrfCookie,
  renderApprovalPage,
} from '../../server/approvals/page.ts'
import type { Keystore } from '../../server/keys/keystore.ts'

const NOW = 1_800_000_000
function input(
  policy: Partial<Policy>,
  host: Partial<PolicyInput['host']> = {},
  source = '10.0.0.5',
): PolicyInput {
  return {
    now: NOW,
    source,
    bootId: 'bootid-0001',
    host: {
      state: 'active',
      stateReason: null,
      lastSeenAt: NOW - 60,
      createdAt: NOW - 86400,
      ...host,
    },
    policy: { ...DEFAULT_POLICY, ...policy },
    history: { releasesInWindow: 0, recentBootIds: [] },
  }
}

test('idle: an active host unseen too long needs approval with rule idle-suspend', (t) => {
  t.deepEqual(evaluatePolicy(input({ idleSuspendSeconds: 3600 }, { lastSeenAt: NOW - 3601 })), {
    kind: 'approval',
    rule: IDLE_SUSPEND_RULE,
  })
  t.is(
    evaluatePolicy(input({ idleSuspendSeconds: 3600 }, { lastSeenAt: NOW - 3600 })).kind,
    'allow',
  )
  // never seen: counted from enrollment
  t.true(
    idleExpired(
      { state: 'active', lastSeenAt: null, createdAt: NOW - 7200 },
      { idleSuspendSeconds: 3600 },
      NOW,
    ),
  )
  t.false(
    idleExpired(
      { state: 'active', lastSeenAt: null, createdAt: NOW - 7200 },
      { idleSuspendSeconds: null },
      NOW,
    ),
  )
})

test('idle: an idle-suspended host asks for approval; an operator-suspended one is denied', (t) => {
  const idle = { state: 'suspended' as const, stateReason: idleSuspendReason(3600) }
  t.true(isIdleSuspended(idle))
  t.deepEqual(evaluatePolicy(input({ idleSuspendSeconds: 3600 }, idle)), {
    kind: 'approval',
    rule: IDLE_SUSPEND_RULE,
  })
  const byOperator = evaluatePolicy(input({}, { state: 'suspended', stateReason: 'idle hands' }))
  t.is(byOperator.kind, 'deny')
  if (byOperator.kind === 'deny') t.is(byOperator.code, 'host_suspended')
  // the network rule still comes first
  const outside = evaluatePolicy(input({ idleSuspendSeconds: 3600, cidrs: ['192.0.2.0/24'] }, idle))
  t.is(outside.kind, 'deny')
  if (outside.kind === 'deny') t.is(outside.code, 'cidr_denied')
})

test('TOTP: a code matches its own step within ±1 step, nothing further', (t) => {
  const secret = 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP'
  const step = Math.floor(NOW / 30)
  t.is(matchStep(secret, totpCodeAt(secret, NOW), NOW), step)
  t.is(matchStep(secret, totpCodeAt(secret, NOW - 30), NOW), step - 1)
  t.is(matchStep(secret, totpCodeAt(secret, NOW + 30), NOW), step + 1)
  const far = totpCodeAt(secret, NOW - 120)
  const near = new Set([-30, 0, 30].map((d) => totpCodeAt(secret, NOW + d)))
  if (!near.has(far)) t.is(matchStep(secret, far, NOW), undefined)
  // RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 → last 6 digits
  t.is(totpCodeAt('GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ', 59), '287082')
})

const view: ApprovalView = {
  id: 'ap_AAAAAAAAAAAAAAAAAAAAAA',
  host: 'web-1',
  hostId: 'h'.repeat(43),
  volumes: ['data'],
  source: '203.0.113.7',
  bootId: 'bootid-0001',
  rule: 'approval:always',
  required: 2,
  approvedBy: [],
  state: 'pending',
  createdAt: NOW,
  expiresAt: NOW + 900,
  ageSeconds: 0,
  decidedAt: null,
  reason: null,
  url: 'https://escrow.example/approve/ap_AAAAAAAAAAAAAAAAAAAAAA',
}

test('webhook: the signature is HMAC-SHA256 over the body; the message says what and where', (t) => {
  const body = JSON.stringify(notificationFor(view, NOW))
  t.is(
    signBody('s3cret', body),
    `sha256=${createHmac('sha256', 's3cret').update(body).digest('hex')}`,
  )
  const n = notificationFor(view, NOW)
  t.regex(
    n.message,
    /^web-1 asks to unlock data from 203\.0\.113\.7 \(boot bootid-0001\); rule approval:always \(2 operators must approve\)/,
  )
  t.true(n.message.endsWith(`Approve: ${view.url}`))
  t.is(
    notificationFor({ ...view, url: null }, NOW).message.split('\n')[1],
    `Approve: unlockd approve ${view.id} --code CODE`,
  )
})

test('page: CSRF token binds the approval id and the cookie; values are escaped; no script in the CSP', (t) => {
  const ks = { currentVersion: 1, kek: () => new Uint8Array(32).fill(7) } as unknown as Keystore
  const cookie = newCsrfCookie()
  const tok = csrfToken(ks, view.id, cookie)
  t.true(csrfValid(ks, view.id, cookie, tok))
  t.false(csrfValid(ks, 'ap_BBBBBBBBBBBBBBBBBBBBBB', cookie, tok))
  t.false(csrfValid(ks, view.id, newCsrfCookie(), tok))
  t.false(csrfValid(ks, view.id, undefined, tok))
  t.false(csrfValid(ks, view.id, cookie, undefined))
  const html = renderApprovalPage(
    { ...view, rule: '<script>alert(1)</script>' },
    NOW,
    tok,
    undefined,
    '"><x',
  )
  t.false(html.includes('<script'))
  t.true(html.includes('&lt;script&gt;'))
  t.true(html.includes('value="&quot;&gt;&lt;x"'))
  t.notRegex(PAGE_CSP, /script-src|unsafe/)
})
