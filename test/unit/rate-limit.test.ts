/**
 * The per-address limiter keeps bounded memory without handing a limited address a fresh
 * burst when someone sprays the table with new addresses.
 */
import test from 'ava'
import { AddressBuckets } from '../../server/http/rate-limit.ts'

const spray = (b: AddressBuckets, n: number, now: (i: number) => number): void => {
  for (let i = 0; i < n; i++) b.take(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, now(i))
}

const VICTIM = '192.0.2.7'

/** A table whose VICTIM has spent its whole burst at time 0. */
function withLimitedVictim(opts: {
  ratePerSec: number
  burst: number
  maxEntries: number
}): AddressBuckets {
  const b = new AddressBuckets(opts)
  for (let i = 0; i < opts.burst; i++) b.take(VICTIM, 0)
  return b
}

test('a limited address stays limited while 200k other addresses are sprayed at the same instant', (t) => {
  const b = withLimitedVictim({ ratePerSec: 1, burst: 5, maxEntries: 100_000 })
  t.false(b.take(VICTIM, 0))
  spray(b, 200_000, () => 0)
  t.false(b.take(VICTIM, 0))
  t.true(b.size <= 100_000, `table holds ${b.size} buckets`)
})

test('a limited address that keeps trying stays limited while 200k addresses are sprayed over time', (t) => {
  // 100 s of spraying at 2000 new addresses a second while the victim retries every second;
  // at half a token per 100 s it earns none back in that time.
  const b = withLimitedVictim({ ratePerSec: 0.005, burst: 5, maxEntries: 100_000 })
  let refused = 0
  spray(b, 200_000, (i) => {
    const now = i / 2000
    if (i % 2000 === 0 && !b.take(VICTIM, now)) refused++
    return now
  })
  t.is(refused, 100)
  t.false(b.take(VICTIM, 100))
  t.true(b.size <= 100_000, `table holds ${b.size} buckets`)
})

test('memory stays bounded even when every address is limited', (t) => {
  const b = new AddressBuckets({ ratePerSec: 1, burst: 1, maxEntries: 1000 })
  for (let i = 0; i < 5000; i++) {
    b.take(`a${i}`, 0)
    b.take(`a${i}`, 0)
  }
  t.true(b.size <= 1000, `table holds ${b.size} buckets`)
})

test('a bucket refills with time and an unknown address gets its burst', (t) => {
  const b = new AddressBuckets({ ratePerSec: 2, burst: 2 })
  t.true(b.take('x', 0))
  t.true(b.take('x', 0))
  t.false(b.take('x', 0))
  t.true(b.take('x', 0.5))
  t.false(b.take('x', 0.5))
  t.true(b.take('y', 0.5))
})
