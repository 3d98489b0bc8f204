/**
 * Helpers for the human-approval tests: a clock the test moves (the server and the TOTP codes
 * read the same one), an enrolled host, operators with captured TOTP secrets, and a bounded
 * wait loop like the agent's.
 */
import type { ExecutionContext } from 'ava'
import {
  enroll,
  generateHostKeys,
  hostIdOf,
  pollApproval,
  publicOf,
  requestUnlock,
  sealVolumeKey,
} from '../../shared/client/host-client.ts'
import type { Transport } from '../../shared/client/transport.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'
import type { HostKeys } from '../../shared/crypto/keys.ts'
import type { OpenedUnlock as UnlockResponse } from '../../shared/client/host-client.ts'
import { totpCodeAt } from '../../server/approvals/totp.ts'
import { secretOfUri, type TestServer } from './server.ts'

export interface TestClock {
  now(): number
  advance(seconds: number): void
}

/** Starts at the real time (so host `iat` stays in range) and moves only when told. */
export function testClock(): TestClock {
  let t = Math.floor(Date.now() / 1000)
  return {
    now: () => t,
    advance: (s) => {
      t += s
    },
  }
}

export interface TestHost {
  name: string
  keys: HostKeys
  hostId: string
  vk: Uint8Array
}

export async function enrollHost(
  t: ExecutionContext,
  srv: TestServer,
  name: string,
  policy: Record<string, unknown> = {},
): Promise<TestHost> {
  const tok = await srv.admin('POST', '/tokens', { host: name, ttlSeconds: 600 })
  t.is(tok.status, 201, JSON.stringify(tok.body))
  const keys = await generateHostKeys()
  const vk = randomBytes(32)
  const blob = await sealVolumeKey(vk, [publicOf(keys.sealing)])
  const res = await enroll(srv.transport, {
    token: tok.body.token,
    name,
    keys,
    volumes: [{ name: 'data', kind: 'luks', blob }],
  })
  t.is(res.hostId, await hostIdOf(keys))
  if (Object.keys(policy).length > 0) {
    const p = await srv.admin('PATCH', `/hosts/${name}/policy`, policy)
    t.is(p.status, 200, JSON.stringify(p.body))
  }
  return { name, keys, hostId: res.hostId, vk }
}

export function askUnlock(
  transport: Transport,
  h: TestHost,
  bootId: string,
): Promise<UnlockResponse> {
  return requestUnlock(transport, { keys: h.keys, hostId: h.hostId, bootId, volumes: [] })
}

export interface TestOperator {
  name: string
  token: string
  secret: string
}

export const secretOf = secretOfUri

/**
 * Redeem a one-time operator enrollment code over POST /v1/operator/enroll, as the operator it
 * was made for would (`bearer`: that operator's own token, which a reset enrollment needs).
 */
export function redeemEnrollment(
  srv: Pick<TestServer, 'transport'>,
  code: string,
  bearer?: string,
): Promise<{ status: number; body: any }> {
  return srv.transport({
    method: 'POST',
    path: '/v1/operator/enroll',
    body: { code },
    ...(bearer === undefined ? {} : { bearer }),
  }) as Promise<{ status: number; body: any }>
}

/**
 * Add an operator as `by` (default: the init operator, with its fresh code), then redeem its
 * enrollment code as the new operator: the adder only ever sees the code.
 */
export async function addOperator(
  t: ExecutionContext,
  srv: TestServer,
  name: string,
  by?: TestOperator,
): Promise<TestOperator> {
  const r = by
    ? await asOperator(srv, by, 'POST', '/operators', { name, code: codeNow(srv, by) })
    : await srv.admin('POST', '/operators', { name, code: await srv.adminCode() })
  t.is(r.status, 201, JSON.stringify(r.body))
  t.is(r.body.token, undefined, 'operator add never returns the new operator token')
  t.is(r.body.otpauthUri, undefined, 'operator add never returns the new operator secret')
  const e = await redeemEnrollment(srv, r.body.enrollment.code)
  t.is(e.status, 201, JSON.stringify(e.body))
  return { name, token: e.body.token, secret: secretOf(e.body.otpauthUri) }
}

/** The operator's code at the server's current time. */
export function codeNow(srv: TestServer, op: { secret: string }): string {
  return totpCodeAt(op.secret, srv.deps.now())
}

/** A 6-digit code that is valid at none of the accepted steps around `now`. */
export function wrongCode(secret: string, now: number): string {
  const valid = new Set([-1, 0, 1].map((d) => totpCodeAt(secret, now + d * 30)))
  for (let i = 0; ; i++) {
    const c = String((123456 + i * 7919) % 1_000_000).padStart(6, '0')
    if (!valid.has(c)) return c
  }
}

/** Call the admin API as a given operator. */
export async function asOperator(
  srv: TestServer,
  op: { token: string },
  method: 'GET' | 'POST' | 'PATCH',
  path: string,
  body?: unknown,
  totp?: string,
): Promise<{ status: number; body: any }> {
  return srv.transport({
    method,
    path: `/v1/admin${path}`,
    bearer: op.token,
    ...(body === undefined ? {} : { body }),
    ...(totp ? { headers: { 'x-unlockd-totp': totp } } : {}),
  }) as Promise<{ status: number; body: any }>
}

/** The agent's wait: long-poll until released or refused, at most `maxPolls` times. */
export async function waitForRelease(
  transport: Transport,
  h: TestHost,
  bootId: string,
  approvalId: string,
  maxPolls = 15,
): Promise<UnlockResponse> {
  for (let i = 0; i < maxPolls; i++) {
    const r = await pollApproval(transport, {
      keys: h.keys,
      hostId: h.hostId,
      bootId,
      approvalId,
      holdMs: 2000,
    })
    if (r.status === 'released') return r
  }
  throw new Error(`approval ${approvalId} still pending after ${maxPolls} polls`)
}
