/** The pure policy function: each rule decides, names itself, and the order is fixed. */
import test from 'ava'
import { evaluatePolicy, type PolicyInput } from '../../server/policy/evaluate.ts'
import { DEFAULT_POLICY, parseMaxUnlocks, parsePolicy } from '../../shared/protocol/policy.ts'
import { cidrContains, ipInAny, parseCidr, parseIp } from '../../shared/util/cidr.ts'
import { formatDuration, parseDuration } from '../../shared/util/duration.ts'

const base = (over: Partial<PolicyInput> = {}): PolicyInput => ({
  now: 1_000_000,
  source: '203.0.113.7',
  bootId: 'boot-1111',
  host: { state: 'active', lastSeenAt: 999_000, createdAt: 900_000 },
  policy: DEFAULT_POLICY,
  history: { releasesInWindow: 0, recentBootIds: [] },
  ...over,
})

test('default policy allows', (t) => {
  t.deepEqual(evaluatePolicy(base()), { kind: 'allow', rule: 'policy' })
})

test('state comes first: shredded and suspended deny whatever the rest says', (t) => {
  const p = { ...DEFAULT_POLICY, approval: 'always' }
  t.like(
    evaluatePolicy(
      base({ policy: p, host: { state: 'shredded', lastSeenAt: null, createdAt: 0 } }),
    ),
    { kind: 'deny', code: 'host_shredded', rule: 'state' },
  )
  t.like(
    evaluatePolicy(
      base({ policy: p, host: { state: 'suspended', lastSeenAt: null, createdAt: 0 } }),
    ),
    { kind: 'deny', code: 'host_suspended' },
  )
})

test('validity dates', (t) => {
  t.like(evaluatePolicy(base({ policy: { ...DEFAULT_POLICY, notBefore: 1_000_001 } })), {
    code: 'not_yet_valid',
    rule: 'notBefore',
  })
  t.like(evaluatePolicy(base({ policy: { ...DEFAULT_POLICY, notAfter: 1_000_000 } })), {
    code: 'expired',
    rule: 'notAfter',
  })
  t.like(
    evaluatePolicy(
      base({ policy: { ...DEFAULT_POLICY, notBefore: 1_000_000, notAfter: 1_000_001 } }),
    ),
    { kind: 'allow' },
  )
})

test('CIDRs deny outside, or ask for approval with outside-cidrs', (t) => {
  const p = { ...DEFAULT_POLICY, cidrs: ['198.51.100.0/24'] }
  t.like(evaluatePolicy(base({ policy: p })), { kind: 'deny', code: 'cidr_denied', rule: 'cidrs' })
  t.like(evaluatePolicy(base({ policy: p, source: '198.51.100.9' })), { kind: 'allow' })
  t.like(evaluatePolicy(base({ policy: p, source: '::ffff:198.51.100.9' })), { kind: 'allow' })
  t.like(evaluatePolicy(base({ policy: { ...p, approval: 'outside-cidrs' } })), {
    kind: 'approval',
    rule: 'approval:outside-cidrs',
  })
  t.like(
    evaluatePolicy(base({ policy: { ...p, approval: 'outside-cidrs' }, source: '198.51.100.9' })),
    { kind: 'allow' },
  )
})

test('rate limit counts releases in the window', (t) => {
  const p = { ...DEFAULT_POLICY, maxUnlocks: { count: 3, periodSeconds: 3600 } }
  t.like(evaluatePolicy(base({ policy: p, history: { releasesInWindow: 2, recentBootIds: [] } })), {
    kind: 'allow',
  })
  t.like(evaluatePolicy(base({ policy: p, history: { releasesInWindow: 3, recentBootIds: [] } })), {
    kind: 'deny',
    code: 'rate_limited',
  })
})

test('approval rules: always, after-idle, clone detection', (t) => {
  t.like(evaluatePolicy(base({ policy: { ...DEFAULT_POLICY, approval: 'always' } })), {
    kind: 'approval',
    rule: 'approval:always',
  })
  const idle = { ...DEFAULT_POLICY, approval: 'after-idle(1h)' }
  t.like(evaluatePolicy(base({ policy: idle })), { kind: 'allow' }) // seen 1000 s ago
  t.like(
    evaluatePolicy(
      base({ policy: idle, host: { state: 'active', lastSeenAt: 1_000_000 - 3601, createdAt: 0 } }),
    ),
    { kind: 'approval', rule: 'approval:after-idle(1h)' },
  )
  const clone = { ...DEFAULT_POLICY, cloneWindowSeconds: 600 }
  t.like(
    evaluatePolicy(
      base({ policy: clone, history: { releasesInWindow: 0, recentBootIds: ['boot-1111'] } }),
    ),
    { kind: 'allow' },
  )
  t.like(
    evaluatePolicy(
      base({ policy: clone, history: { releasesInWindow: 0, recentBootIds: ['boot-2222'] } }),
    ),
    { kind: 'approval', rule: 'clone-detection' },
  )
})

test('policy parsing rejects bad rules and values', (t) => {
  t.throws(() => parsePolicy({ ...DEFAULT_POLICY, approval: 'sometimes' }), { message: /approval/ })
  t.throws(() => parsePolicy({ ...DEFAULT_POLICY, approval: 'after-idle(xyz)' }))
  t.throws(() => parsePolicy({ ...DEFAULT_POLICY, cidrs: ['10.0.0.0/33'] }))
  t.throws(() => parsePolicy({ ...DEFAULT_POLICY, approvers: 0 }))
  t.throws(() => parsePolicy({ ...DEFAULT_POLICY, extra: 1 }))
  t.deepEqual(parseMaxUnlocks('5/1h'), { count: 5, periodSeconds: 3600 })
  t.is(parseMaxUnlocks('5'), undefined)
  t.is(parseMaxUnlocks('0/1h'), undefined)
})

test('CIDR and IP parsing, including IPv6 and mapped IPv4', (t) => {
  t.truthy(parseCidr('10.0.0.0/8'))
  t.truthy(parseCidr('2001:db8::/32'))
  t.is(parseCidr('10.0.0.0/8/1'), undefined)
  t.is(parseCidr('300.0.0.0/8'), undefined)
  t.is(parseCidr('01.2.3.4/8'), undefined)
  t.is(parseIp('::ffff:10.1.2.3')?.family, 4)
  t.true(cidrContains(parseCidr('2001:db8::/32')!, '2001:db8:0:1::5'))
  t.false(cidrContains(parseCidr('2001:db8::/32')!, '2001:db9::1'))
  t.true(ipInAny('127.0.0.1', ['127.0.0.0/8']))
  t.false(ipInAny('127.0.0.1', ['::1/128']))
  t.true(ipInAny('10.255.255.255', ['10.0.0.0/8']))
  t.false(ipInAny('11.0.0.0', ['10.0.0.0/8']))
  t.true(ipInAny('192.168.1.130', ['192.168.1.128/25']))
  t.false(ipInAny('192.168.1.127', ['192.168.1.128/25']))
})

test('durations', (t) => {
  t.is(parseDuration('90s'), 90)
  t.is(parseDuration('1h30m'), 5400)
  t.is(parseDuration('7d'), 604800)
  t.is(parseDuration('1x'), undefined)
  t.is(parseDuration(''), undefined)
  t.is(parseDuration('0s'), undefined)
  t.is(formatDuration(5400), '1h30m')
})
