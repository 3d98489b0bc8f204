import test from 'ava'
import { isLoosening, loosenedFields } from '../../server/policy/loosening.ts'
import { DEFAULT_POLICY, type Policy } from '../../shared/protocol/policy.ts'

const strict: Policy = {
  cidrs: ['10.0.0.0/8'],
  maxUnlocks: { count: 5, periodSeconds: 3600 },
  notBefore: 1_700_000_000,
  notAfter: 1_800_000_000,
  approval: 'always',
  approvers: 2,
  idleSuspendSeconds: 86400,
  cloneWindowSeconds: 600,
}
const looser = (over: Partial<Policy>, base: Policy = strict): Policy => ({ ...base, ...over })

test('the same policy loosens nothing; the default policy is the loosest', (t) => {
  t.deepEqual(loosenedFields(strict, strict), [])
  t.false(isLoosening(DEFAULT_POLICY, strict))
  t.deepEqual(loosenedFields(strict, DEFAULT_POLICY), [
    'cidrs',
    'maxUnlocks',
    'notBefore',
    'notAfter',
    'approval',
    'approvers',
    'idleSuspendSeconds',
    'cloneWindowSeconds',
  ])
})

test('cidrs: any source, or a network outside the old ones, loosens; a narrower one does not', (t) => {
  t.deepEqual(loosenedFields(strict, looser({ cidrs: [] })), ['cidrs'])
  t.deepEqual(loosenedFields(strict, looser({ cidrs: ['192.168.0.0/16'] })), ['cidrs'])
  t.deepEqual(loosenedFields(strict, looser({ cidrs: ['0.0.0.0/0'] })), ['cidrs'])
  t.deepEqual(loosenedFields(strict, looser({ cidrs: ['10.0.0.0/8', '11.0.0.0/8'] })), ['cidrs'])
  t.deepEqual(loosenedFields(strict, looser({ cidrs: ['10.1.0.0/16'] })), [])
  t.deepEqual(loosenedFields(strict, looser({ cidrs: ['10.1.2.3/32', '10.9.0.0/16'] })), [])
  t.deepEqual(loosenedFields(strict, looser({ cidrs: ['fd00::/8'] })), ['cidrs'])
  t.deepEqual(loosenedFields(looser({ cidrs: [] }), strict), [])
})

test('maxUnlocks: off, more unlocks or a shorter period loosens', (t) => {
  t.deepEqual(loosenedFields(strict, looser({ maxUnlocks: null })), ['maxUnlocks'])
  t.deepEqual(loosenedFields(strict, looser({ maxUnlocks: { count: 6, periodSeconds: 3600 } })), [
    'maxUnlocks',
  ])
  t.deepEqual(loosenedFields(strict, looser({ maxUnlocks: { count: 5, periodSeconds: 60 } })), [
    'maxUnlocks',
  ])
  t.deepEqual(loosenedFields(strict, looser({ maxUnlocks: { count: 1, periodSeconds: 7200 } })), [])
  t.deepEqual(loosenedFields(looser({ maxUnlocks: null }), strict), [])
})

test('validity dates: an earlier start, a later end, or none loosens', (t) => {
  t.deepEqual(loosenedFields(strict, looser({ notBefore: null })), ['notBefore'])
  t.deepEqual(loosenedFields(strict, looser({ notBefore: 1_600_000_000 })), ['notBefore'])
  t.deepEqual(loosenedFields(strict, looser({ notBefore: 1_750_000_000 })), [])
  t.deepEqual(loosenedFields(strict, looser({ notAfter: null })), ['notAfter'])
  t.deepEqual(loosenedFields(strict, looser({ notAfter: 1_900_000_000 })), ['notAfter'])
  t.deepEqual(loosenedFields(strict, looser({ notAfter: 1_750_000_000 })), [])
})

test('approval rule: always is strictest, never loosest, a longer after-idle asks less', (t) => {
  const rule = (approval: string): Policy => looser({ approval })
  t.deepEqual(loosenedFields(rule('always'), rule('never')), ['approval'])
  t.deepEqual(loosenedFields(rule('always'), rule('after-idle(7d)')), ['approval'])
  t.deepEqual(loosenedFields(rule('always'), rule('outside-cidrs')), ['approval'])
  t.deepEqual(loosenedFields(rule('never'), rule('always')), [])
  t.deepEqual(loosenedFields(rule('never'), rule('after-idle(7d)')), [])
  t.deepEqual(loosenedFields(rule('after-idle(1d)'), rule('after-idle(7d)')), ['approval'])
  t.deepEqual(loosenedFields(rule('after-idle(7d)'), rule('after-idle(1d)')), [])
  t.deepEqual(loosenedFields(rule('after-idle(7d)'), rule('never')), ['approval'])
  t.deepEqual(loosenedFields(rule('outside-cidrs'), rule('always')), [])
  t.deepEqual(loosenedFields(rule('outside-cidrs'), rule('after-idle(1d)')), [])
  // outside-cidrs lets outside sources reach approval where `never` refused them
  t.deepEqual(loosenedFields(rule('never'), rule('outside-cidrs')), ['approval'])
  // ... unless every source is inside (no networks): then it asks for nothing, like never
  t.deepEqual(
    loosenedFields(
      looser({ approval: 'never', cidrs: [] }),
      looser({ approval: 'outside-cidrs', cidrs: [] }),
    ),
    [],
  )
})

test('approvers: fewer loosens, more tightens', (t) => {
  t.deepEqual(loosenedFields(strict, looser({ approvers: 1 })), ['approvers'])
  t.deepEqual(loosenedFields(strict, looser({ approvers: 3 })), [])
})

test('idle suspension: off or a longer idle time loosens', (t) => {
  t.deepEqual(loosenedFields(strict, looser({ idleSuspendSeconds: null })), ['idleSuspendSeconds'])
  t.deepEqual(loosenedFields(strict, looser({ idleSuspendSeconds: 7 * 86400 })), [
    'idleSuspendSeconds',
  ])
  t.deepEqual(loosenedFields(strict, looser({ idleSuspendSeconds: 3600 })), [])
})

test('clone window: off or a shorter window loosens, a longer one catches more', (t) => {
  t.deepEqual(loosenedFields(strict, looser({ cloneWindowSeconds: null })), ['cloneWindowSeconds'])
  t.deepEqual(loosenedFields(strict, looser({ cloneWindowSeconds: 60 })), ['cloneWindowSeconds'])
  t.deepEqual(loosenedFields(strict, looser({ cloneWindowSeconds: 3600 })), [])
})
