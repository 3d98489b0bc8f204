/**
 * Refusals that commit. Some requests are refused only after the transaction has done work
 * that must stay done: the spent nonce (so a replay is refused too), a counted TOTP failure
 * (the lockout), an expired approval, the audit entry recording the refusal. Inside `store.tx`,
 * `throw deny(err)`: the store commits, then rethrows `err` itself. Any other exception rolls
 * the whole transaction back.
 */
import type { StoreTx } from './store.ts'

const denials = new WeakSet<Error>()

/** Mark `err` as a refusal whose transaction commits before it is thrown on; returns `err`. */
export function deny<E extends Error>(err: E): E {
  denials.add(err)
  return err
}

export function isDenial(err: unknown): err is Error {
  return err instanceof Error && denials.has(err)
}

type Outcome<T> = { denied: false; value: T } | { denied: true; err: Error }

/**
 * The commit-then-throw rule around a store's own transaction `run`: a denial from `fn` ends
 * it like a return (so `run` commits), and is thrown once the commit is done.
 */
export async function commitDenials<T>(
  run: (body: (t: StoreTx) => Promise<Outcome<T>>) => Promise<Outcome<T>>,
  fn: (t: StoreTx) => Promise<T>,
): Promise<T> {
  const out = await run(async (t) => {
    try {
      return { denied: false, value: await fn(t) }
    } catch (err) {
      if (isDenial(err)) return { denied: true, err }
      throw err
    }
  })
  if (out.denied) throw out.err
  return out.value
}
