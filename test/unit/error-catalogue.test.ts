/**
 * The error catalogue (shared/errors.ts ERRORS): every code has every fact decided, the CLI exit
 * codes follow the exit classes, and the statuses are what the real server answers on a sample
 * of routes (so the catalogue cannot drift from the wire).
 */
import test from 'ava'
import { ERROR_CODES, ERRORS, isErrorCode, type UnlockdErrorCode } from '../../shared/errors.ts'
import { EXIT, exitCodeFor, suggestionFor } from '../../platform/cli.ts'
import { generateHostKeys, publicOf, thumbprint } from '../../shared/crypto/keys.ts'
import { signHostRequest } from '../../shared/crypto/jws.ts'
import { PROTOCOL_VERSION } from '../../shared/protocol/messages.ts'
import { startTestServer } from '../helpers/server.ts'

const STATUSES = new Set([400, 401, 403, 404, 405, 409, 413, 429, 500, 503])
const EXIT_CLASSES = new Set(['error', 'usage', 'refused', 'unreachable', 'pending'])

test('every code has a complete entry, and the catalogue has no other codes', (t) => {
  t.deepEqual(Object.keys(ERRORS).sort(), [...ERROR_CODES].sort())
  for (const code of ERROR_CODES) {
    const info: Record<string, unknown> = { ...ERRORS[code] }
    t.deepEqual(Object.keys(info).sort(), ['exit', 'rank', 'remedy', 'retry', 'status'], code)
    t.true(STATUSES.has(ERRORS[code].status), `${code} status`)
    t.true(EXIT_CLASSES.has(ERRORS[code].exit), `${code} exit class`)
    t.is(typeof ERRORS[code].retry, 'boolean', `${code} retry`)
    t.true([0, 1, 2, 3].includes(ERRORS[code].rank), `${code} rank`)
    const remedy = ERRORS[code].remedy
    t.true(remedy === null || (remedy.length > 10 && /[.A-Za-z]$/.test(remedy)), `${code} remedy`)
  }
})

test('CLI exit codes and remedies come from the catalogue', (t) => {
  const byClass = { error: 1, usage: 2, refused: 3, unreachable: 4, pending: 5 } as const
  for (const code of ERROR_CODES) {
    t.is(exitCodeFor(code), byClass[ERRORS[code].exit], code)
    t.is(suggestionFor(code), ERRORS[code].remedy ?? undefined, code)
  }
  // The documented classes of the codes users meet most.
  t.is(exitCodeFor('server_unreachable'), EXIT.unreachable)
  t.is(exitCodeFor('tls_pin_mismatch'), EXIT.unreachable)
  t.is(exitCodeFor('approval_pending'), EXIT.pending)
  t.is(exitCodeFor('approval_denied'), EXIT.refused)
  t.is(exitCodeFor('host_suspended'), EXIT.refused)
  t.is(exitCodeFor('nonce_unknown'), EXIT.error)
})

test('the agent keeps waiting only through transport trouble, and ranks a decision first', (t) => {
  const retried = ERROR_CODES.filter((c) => ERRORS[c].retry).sort()
  // A forged (unsigned) shred verdict is interference on the path, not a decision: keep waiting.
  t.deepEqual(retried, ['internal', 'protocol_invalid', 'server_unreachable', 'verdict_unsigned'])
  t.true(ERRORS.host_suspended.rank > ERRORS.protocol_invalid.rank)
  t.true(ERRORS.protocol_invalid.rank > ERRORS.tls_pin_mismatch.rank)
  t.true(ERRORS.tls_pin_mismatch.rank > ERRORS.server_unreachable.rank)
})

async function errorOf(res: Response): Promise<{ status: number; code: UnlockdErrorCode }> {
  const body = (await res.json()) as { error?: unknown }
  if (!isErrorCode(body.error)) throw new Error(`no error code in ${JSON.stringify(body)}`)
  return { status: res.status, code: body.error }
}

test('statuses match what the server answers on real routes', async (t) => {
  const srv = await startTestServer(t)
  const json = { 'content-type': 'application/json' }
  const admin = { ...json, authorization: `Bearer ${srv.token}` }
  const keys = await generateHostKeys()
  const kid = await thumbprint(publicOf(keys.signing))
  const now = Math.floor(Date.now() / 1000)
  const signed = await signHostRequest(
    'unlock',
    { v: PROTOCOL_VERSION, host: kid, volumes: [], nonce: 'A'.repeat(43), bootId: 'b', iat: now },
    keys.signing,
    kid,
  )
  // Operator changes need the admin's own code; a fresh one is made when the case runs.
  const withCode = (name?: string) => async (): Promise<RequestInit> => ({
    method: 'POST',
    body: JSON.stringify({ ...(name ? { name } : {}), code: await srv.adminCode() }),
    headers: admin,
  })
  const cases: [string, RequestInit | (() => Promise<RequestInit>), UnlockdErrorCode, number][] = [
    ['/nope', {}, 'not_found', 404],
    ['/v1/admin/hosts', {}, 'unauthorized', 401],
    [
      '/v1/unlock',
      { method: 'POST', body: '{}', headers: { 'content-type': 'text/plain' } },
      'bad_request',
      400,
    ],
    [
      '/v1/unlock',
      { method: 'POST', body: 'x'.repeat(300 * 1024), headers: json },
      'payload_too_large',
      413,
    ],
    [
      '/v1/unlock',
      { method: 'POST', body: JSON.stringify({ jws: signed }), headers: json },
      'host_unknown',
      403,
    ],
    [
      '/v1/admin/operators',
      { method: 'POST', body: JSON.stringify({ name: 'admin' }), headers: admin },
      'totp_required',
      403,
    ],
    ['/v1/admin/operators', withCode('admin'), 'operator_exists', 409],
    ['/v1/admin/operators/nobody/remove', withCode(), 'operator_unknown', 404],
  ]
  for (const [path, init, code, status] of cases) {
    const got = await errorOf(
      await fetch(srv.url + path, typeof init === 'function' ? await init() : init),
    )
    t.deepEqual(got, { status, code }, path)
    t.is<number, number>(ERRORS[got.code].status, got.status, `catalogue status of ${got.code}`)
  }
})

test('the per-address guard keeps its own 429 for rate_limited (a policy limit is 403)', async (t) => {
  const srv = await startTestServer(t, {
    settings: { hostRateLimit: { perSecond: 0.001, burst: 1 } },
  })
  await fetch(`${srv.url}/v1/nonce`)
  const got = await errorOf(await fetch(`${srv.url}/v1/nonce`))
  t.deepEqual(got, { status: 429, code: 'rate_limited' })
  t.is(ERRORS.rate_limited.status, 403)
})
