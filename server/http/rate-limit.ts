/**
 * Token buckets per source address, in bounded memory, with an eviction order that an address
 * sprayer cannot use to reset someone's limit. When the table is over its bound it drops, in
 * this order, until it is back to nine tenths of it:
 *   1. buckets that have refilled to the burst: they are the same as no bucket at all;
 *   2. the least recently used of the buckets that still have a token (forgetting one hands
 *      back at most what it had spent);
 *   3. only if every bucket is limited, the least recently used limited ones.
 * A sprayed address spends one token and refills in 1/rate seconds, so its bucket goes in (1)
 * or (2); keeping enough limited buckets alive to reach (3) takes `burst` requests from each of
 * `maxEntries` addresses within the refill time.
 */
interface Bucket {
  tokens: number
  at: number
}

export interface AddressBucketsOptions {
  ratePerSec: number
  burst: number
  maxEntries?: number
}

export class AddressBuckets {
  readonly #rate: number
  readonly #burst: number
  readonly #max: number
  /** Insertion order is recency order: a bucket is re-inserted on each use. */
  readonly #buckets = new Map<string, Bucket>()

  constructor(opts: AddressBucketsOptions) {
    this.#rate = opts.ratePerSec
    this.#burst = opts.burst
    this.#max = opts.maxEntries ?? 100_000
  }

  get size(): number {
    return this.#buckets.size
  }

  /** Spend one token for `addr` at `now` (seconds); false when the address is limited. */
  take(addr: string, now: number): boolean {
    const b = this.#buckets.get(addr) ?? { tokens: this.#burst, at: now }
    this.#refill(b, now)
    this.#buckets.delete(addr)
    this.#buckets.set(addr, b)
    if (b.tokens < 1) return false
    b.tokens -= 1
    if (this.#buckets.size > this.#max) this.#evict(now)
    return true
  }

  #refill(b: Bucket, now: number): void {
    if (now > b.at) {
      b.tokens = Math.min(this.#burst, b.tokens + (now - b.at) * this.#rate)
      b.at = now
    }
  }

  #evict(now: number): void {
    const target = Math.floor(this.#max * 0.9)
    const m = this.#buckets
    for (const [addr, b] of m) {
      this.#refill(b, now)
      if (b.tokens >= this.#burst) m.delete(addr)
    }
    for (const [addr, b] of m) {
      if (m.size <= target) return
      if (b.tokens >= 1) m.delete(addr)
    }
    for (const addr of m.keys()) {
      if (m.size <= target) return
      m.delete(addr)
    }
  }
}
