/**
 * The one way untrusted JSON becomes a typed value: a valibot schema plus `parseWith`, which
 * returns a fresh object (unknown keys stripped) or throws an UnlockdError naming the first bad
 * field, e.g. `volumes[0].name: must match ^[a-z0-9][a-z0-9_.-]{0,63}$`.
 */
import * as v from 'valibot'
import { UnlockdError, type UnlockdErrorCode } from '../errors.ts'
import { parseCidr } from '../util/cidr.ts'
import { parseDuration } from '../util/duration.ts'

export function parseWith<S extends v.GenericSchema>(
  schema: S,
  input: unknown,
  what: string,
  code: UnlockdErrorCode = 'bad_request',
): v.InferOutput<S> {
  const res = v.safeParse(schema, input, { abortEarly: true })
  if (res.success) return res.output
  const issue = res.issues[0]
  const path =
    issue?.path
      ?.map((p) => (typeof p.key === 'number' ? `[${p.key}]` : `.${String(p.key)}`))
      .join('') ?? ''
  const field = path.replace(/^\./, '')
  throw new UnlockdError(
    code,
    `${what}: ${field ? field + ': ' : ''}${issue?.message ?? 'invalid'}`,
  )
}

export const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,63}$/
export const name = v.pipe(
  v.string('must be a string'),
  v.regex(NAME_RE, 'must be 1-64 chars of a-z 0-9 _ . - starting with a letter or digit'),
)
export const hostId = v.pipe(
  v.string('must be a string'),
  v.regex(/^[A-Za-z0-9_-]{43}$/, 'must be a host id (43 base64url chars)'),
)
export const nonce = v.pipe(
  v.string('must be a string'),
  v.regex(/^[A-Za-z0-9_-]{43}$/, 'must be a 43-char base64url nonce'),
)
export const bootId = v.pipe(
  v.string('must be a string'),
  v.regex(/^[A-Za-z0-9-]{8,64}$/, 'must be 8-64 chars of A-Z a-z 0-9 -'),
)
export const epochSeconds = v.pipe(
  v.number('must be a number'),
  v.integer('must be an integer'),
  v.minValue(0),
  v.maxValue(1e11),
)
export const cidr = v.pipe(
  v.string('must be a string'),
  v.check((s) => parseCidr(s) !== undefined, 'must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8'),
  v.transform((s) => (parseCidr(s) as { text: string }).text),
)
export const duration = v.pipe(
  v.string('must be a string'),
  v.check((s) => parseDuration(s) !== undefined, 'must be a duration such as 90s, 15m, 1h, 7d'),
)
