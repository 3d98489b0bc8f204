/**
 * Failed host authentication is audited as summaries over real HTTP: one `host.auth_failure`
 * entry per (reason, source) per minute, with the count of failures it stands for, and a chain
 * that still verifies. A spray of sources cannot flood the audit either.
 */
import test from 'ava'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import {
  enroll,
  fetchNonce,
  generateHostKeys,
  hostIdOf,
  publicOf,
  requestUnlock,
  sealVolumeKey,
} from '../../shared/client/host-client.ts'
import { signHostRequest } from '../../shared/crypto/jws.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'
import { verifyAuditChain } from '../../shared/audit.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import { UnlockdError } from '../../shared/errors.ts'
import {
  MAX_PAIRS,
  auditAuthFailure,
  flushAuthFailureAudit,
} from '../../server/escrow/auth-failure-audit.ts'

async function failures(srv: TestServer): Promise<AuditEntry[]> {
  const entries = (await srv.admin('GET', '/audit?limit=10000')).body.entries as AuditEntry[]
  return entries.filter((e) => e.action === 'host.auth_failure')
}

const detailOf = (e: AuditEntry): { reason: string; source: string; count: number } =>
  e.detail as { reason: string; source: string; count: number }

test('unknown hosts and bad signatures are audited once a minute per source, with counts', async (t) => {
  let clock = Math.floor(Date.now() / 1000)
  const srv = await startTestServer(t, { now: () => clock })

  const stranger = await generateHostKeys()
  const strangerId = await hostIdOf(stranger)
  const unknownUnlock = async (): Promise<void> => {
    const err = await t.throwsAsync(
      requestUnlock(srv.transport, {
        keys: stranger,
        hostId: strangerId,
        bootId: 'boot-aaaa',
        volumes: [],
      }),
    )
    t.is((err as UnlockdError).code, 'host_unknown')
  }
  // A host that enrolled, and a JWS for it signed with someone else's key.
  const tok = await srv.admin('POST', '/tokens', { host: 'a-1', ttlSeconds: 600 })
  const keys = await generateHostKeys()
  const blob = await sealVolumeKey(randomBytes(64), [publicOf(keys.sealing)])
  const { hostId } = await enroll(srv.transport, {
    token: tok.body.token as string,
    name: 'a-1',
    keys,
    volumes: [{ name: 'data', kind: 'luks', blob }],
  })
  const forged = async (): Promise<void> => {
    const jws = await signHostRequest(
      'unlock',
      {
        v: 1,
        host: hostId,
        volumes: [],
        nonce: await fetchNonce(srv.transport),
        bootId: 'boot-aaaa',
        iat: clock,
      },
      stranger.signing,
      hostId,
    )
    const r = await srv.transport({ method: 'POST', path: '/v1/unlock', body: { jws } })
    t.is((r.body as { error: string }).error, 'bad_signature')
  }

  for (let i = 0; i < 20; i++) await unknownUnlock()
  for (let i = 0; i < 5; i++) await forged()
  let f = await failures(srv)
  t.deepEqual(
    f.map(detailOf).map(({ reason, source, count }) => ({ reason, source, count })),
    [
      { reason: 'host_unknown', source: '127.0.0.1', count: 1 },
      { reason: 'bad_signature', source: '127.0.0.1', count: 1 },
    ],
  )
  t.true(f.every((e) => e.actor === 'anonymous' && e.host === null))

  // A minute later: the next failure writes one entry for itself and the 19 held back.
  clock += 61
  await unknownUnlock()
  f = await failures(srv)
  t.is(f.length, 3)
  t.like(detailOf(f[2] as AuditEntry), { reason: 'host_unknown', count: 20 })

  // The maintenance flush writes what is still held once its minute has passed.
  await flushAuthFailureAudit(srv.deps)
  t.is((await failures(srv)).length, 4)
  t.like(detailOf((await failures(srv))[3] as AuditEntry), { reason: 'bad_signature', count: 4 })
  await flushAuthFailureAudit(srv.deps, true)
  t.is((await failures(srv)).length, 4, 'nothing is pending')

  const all = (await srv.admin('GET', '/audit?limit=10000')).body.entries as AuditEntry[]
  t.true(verifyAuditChain(all, srv.deps.keystore.auditKey).ok)
})

test('a spray of sources is folded into one summary per reason past the pair bound', async (t) => {
  const srv = await startTestServer(t)
  const err = new UnlockdError('nonce_unknown', 'this nonce was not issued by this server')
  for (let i = 0; i < MAX_PAIRS * 4; i++)
    await auditAuthFailure(srv.deps, err, `10.0.${i >> 8}.${i & 255}`)
  // Not an authentication failure: never audited here.
  await auditAuthFailure(srv.deps, new UnlockdError('cidr_denied', 'no'), '10.9.9.9')
  await flushAuthFailureAudit(srv.deps, true)
  const f = await failures(srv)
  t.is(f.length, MAX_PAIRS + 2) // one per tracked pair, the first "*" entry, its summary
  const star = f.filter((e) => detailOf(e).source === '*')
  t.is(
    star.reduce((n, e) => n + detailOf(e).count, 0),
    MAX_PAIRS * 3,
  )
  t.false(f.some((e) => detailOf(e).reason === 'cidr_denied'))
})
