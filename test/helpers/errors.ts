/**
 * The one assertion for coded errors: the promise rejects with an UnlockdError of that code.
 * Returns the error (for further checks on its message or details), or undefined after failing
 * the test.
 *
 * @example
 * ```ts
 * await rejectsWithCode(t, requestUnlock(srv.transport, req), 'host_suspended')
 * ```
 */
import type { ExecutionContext } from 'ava'
import { isUnlockdError, type UnlockdError, type UnlockdErrorCode } from '../../shared/errors.ts'

export async function rejectsWithCode(
  t: ExecutionContext,
  promise: Promise<unknown>,
  code: UnlockdErrorCode | readonly UnlockdErrorCode[],
): Promise<UnlockdError | undefined> {
  const err = await t.throwsAsync(promise)
  return checkCode(t, err, code)
}

/** The same for a function that throws synchronously. */
export function throwsWithCode(
  t: ExecutionContext,
  fn: () => unknown,
  code: UnlockdErrorCode | readonly UnlockdErrorCode[],
): UnlockdError | undefined {
  return checkCode(t, t.throws(fn), code)
}

function checkCode(
  t: ExecutionContext,
  err: unknown,
  code: UnlockdErrorCode | readonly UnlockdErrorCode[],
): UnlockdError | undefined {
  if (err === undefined) return undefined // throws/throwsAsync already failed the test
  const codes: readonly UnlockdErrorCode[] = typeof code === 'string' ? [code] : code
  if (!isUnlockdError(err)) {
    t.fail(`expected an UnlockdError (${codes.join(' or ')}), got ${String(err)}`)
    return undefined
  }
  t.true(
    codes.includes(err.code),
    `expected ${codes.join(' or ')}, got ${err.code}: ${err.message}`,
  )
  return err
}
