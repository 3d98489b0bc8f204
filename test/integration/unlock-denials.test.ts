/**
 * Every refusal of POST /v1/unlock, each produced over real HTTP by making it happen, with its
 * stable code; plus a replayed JWS, a JWS signed by another host, a tampered blob at rest, and
 * the audit chain recording every decision.
 */
import test from 'ava'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import {
  enroll,
  fetchNonce,
  generateHostKeys,
  hostIdOf,
  openEscrowBlob,
  publicOf,
  requestUnlock,
  sealVolumeKey,
} from '../../shared/client/host-client.ts'
import { signHostRequest } from '../../shared/crypto/jws.ts'
import { blobDigest } from '../../shared/crypto/blob.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'
import { verifyAuditChain } from '../../shared/audit.ts'
import type { HostKeys } from '../../shared/crypto/keys.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

async function enrolled(
  srv: TestServer,
  name: string,
  cidrs: string[] = [],
): Promise<{ keys: HostKeys; hostId: string; vk: Uint8Array }> {
  const tok = await srv.admin('POST', '/tokens', { host: name, ttlSeconds: 600, cidrs })
  const keys = await generateHostKeys()
  const vk = randomBytes(64)
  const blob = await sealVolumeKey(vk, [publicOf(keys.sealing)])
  const r = await enroll(srv.transport, {
    token: tok.body.token,
    name,
    keys,
    volumes: [{ name: 'data', kind: 'luks', blob }],
  })
  return { keys, hostId: r.hostId, vk }
}

async function signedUnlock(
  srv: TestServer,
  keys: HostKeys,
  hostId: string,
  over: Record<string, unknown> = {},
): Promise<string> {
  const nonce = await fetchNonce(srv.transport)
  return signHostRequest(
    'unlock',
    {
      v: 1,
      host: hostId,
      volumes: [],
      nonce,
      bootId: 'boot-aaaa',
      iat: Math.floor(Date.now() / 1000),
      ...over,
    },
    keys.signing,
    hostId,
  )
}

async function post(srv: TestServer, jws: string): Promise<{ status: number; body: any }> {
  return (await srv.transport({ method: 'POST', path: '/v1/unlock', body: { jws } })) as {
    status: number
    body: any
  }
}

test('host_unknown: a key that never enrolled', async (t) => {
  const srv = await startTestServer(t)
  const keys = await generateHostKeys()
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys,
      hostId: await hostIdOf(keys),
      bootId: 'boot-aaaa',
      volumes: [],
    }),
    'host_unknown',
  )
})

test('bad_signature: a JWS signed by another host under this host id', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  const mallory = await generateHostKeys()
  const r = await post(srv, await signedUnlock(srv, mallory, a.hostId))
  t.is(r.status, 403)
  t.is(r.body.error, 'bad_signature')
})

test('nonce_reused: the same signed request replayed', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  const jws = await signedUnlock(srv, a.keys, a.hostId)
  const first = await post(srv, jws)
  t.is(first.status, 200)
  const replay = await post(srv, jws)
  t.is(replay.status, 403)
  t.is(replay.body.error, 'nonce_reused')
})

test('nonce_unknown and iat_skew: a made-up nonce and a stale request time', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  const made = await signHostRequest(
    'unlock',
    {
      v: 1,
      host: a.hostId,
      volumes: [],
      nonce: 'A'.repeat(43),
      bootId: 'boot-aaaa',
      iat: Math.floor(Date.now() / 1000),
    },
    a.keys.signing,
    a.hostId,
  )
  t.is((await post(srv, made)).body.error, 'nonce_unknown')
  const stale = await post(
    srv,
    await signedUnlock(srv, a.keys, a.hostId, { iat: Math.floor(Date.now() / 1000) - 3600 }),
  )
  t.is(stale.status, 400)
  t.is(stale.body.error, 'iat_skew')
})

test('cidr_denied: the source address is outside the host networks', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  t.is((await srv.admin('PATCH', '/hosts/a-1/policy', { cidrs: ['203.0.113.0/24'] })).status, 200)
  const err = await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: a.keys,
      hostId: a.hostId,
      bootId: 'boot-aaaa',
      volumes: [],
    }),
    'cidr_denied',
  )
  t.is(err?.details?.['rule'], 'cidrs')
  // widening the networks loosens: the token alone is refused, the admin's code lets it through
  const bare = await srv.admin('PATCH', '/hosts/a-1/policy', { cidrs: ['127.0.0.0/8'] })
  t.is(bare.status, 403)
  t.is(bare.body.error, 'totp_required')
  await srv.admin('PATCH', '/hosts/a-1/policy', { cidrs: ['127.0.0.0/8'] }, { totp: true })
  t.is(
    (
      await requestUnlock(srv.transport, {
        keys: a.keys,
        hostId: a.hostId,
        bootId: 'boot-aaaa',
        volumes: [],
      })
    ).status,
    'released',
  )
})

test('rate_limited: more unlocks than the policy window allows', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  await srv.admin('PATCH', '/hosts/a-1/policy', { maxUnlocks: { count: 2, periodSeconds: 3600 } })
  for (let i = 0; i < 2; i++)
    t.is(
      (
        await requestUnlock(srv.transport, {
          keys: a.keys,
          hostId: a.hostId,
          bootId: 'boot-aaaa',
          volumes: [],
        })
      ).status,
      'released',
    )
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: a.keys,
      hostId: a.hostId,
      bootId: 'boot-aaaa',
      volumes: [],
    }),
    'rate_limited',
  )
})

test('not_yet_valid and expired: validity dates', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  const now = Math.floor(Date.now() / 1000)
  await srv.admin('PATCH', '/hosts/a-1/policy', { notBefore: now + 3600 })
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: a.keys,
      hostId: a.hostId,
      bootId: 'boot-aaaa',
      volumes: [],
    }),
    'not_yet_valid',
  )
  await srv.admin(
    'PATCH',
    '/hosts/a-1/policy',
    { notBefore: null, notAfter: now - 10 },
    { totp: true },
  )
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: a.keys,
      hostId: a.hostId,
      bootId: 'boot-aaaa',
      volumes: [],
    }),
    'expired',
  )
})

test('host_suspended, then resumed', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  await srv.admin('POST', '/hosts/a-1/suspend', { reason: 'provider incident' })
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: a.keys,
      hostId: a.hostId,
      bootId: 'boot-aaaa',
      volumes: [],
    }),
    'host_suspended',
  )
  await srv.admin('POST', '/hosts/a-1/resume', undefined, { totp: true })
  t.is(
    (
      await requestUnlock(srv.transport, {
        keys: a.keys,
        hostId: a.hostId,
        bootId: 'boot-aaaa',
        volumes: [],
      })
    ).status,
    'released',
  )
})

test('volume_unknown: asking for a volume that was never enrolled', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: a.keys,
      hostId: a.hostId,
      bootId: 'boot-aaaa',
      volumes: ['nope'],
    }),
    'volume_unknown',
  )
})

test('a blob tampered at rest fails authentication (integrity, not a wrong key) and the server says so without details', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  // Flip one byte of the wrapped blob in the database.
  const db = (srv.deps.store as unknown as { path: string }).path
  const Database = (await import('better-sqlite3')).default
  const raw = new Database(db)
  const row = raw.prepare('SELECT ct FROM volumes WHERE host_id = ?').get(a.hostId) as {
    ct: Buffer
  }
  row.ct[10] = (row.ct[10] as number) ^ 1
  raw.prepare('UPDATE volumes SET ct = ? WHERE host_id = ?').run(row.ct, a.hostId)
  raw.close()
  const r = await post(srv, await signedUnlock(srv, a.keys, a.hostId))
  t.is(r.status, 500)
  t.is(r.body.error, 'integrity_failed')
  t.notRegex(JSON.stringify(r.body), /stack|at /)
})

test('a blob tampered in transit is an integrity error at the host, not a wrong key', async (t) => {
  const srv = await startTestServer(t)
  const a = await enrolled(srv, 'a-1')
  const res = await requestUnlock(srv.transport, {
    keys: a.keys,
    hostId: a.hostId,
    bootId: 'boot-aaaa',
    volumes: [],
  })
  if (res.status !== 'released') return t.fail()
  const blob = res.volumes[0]!.blob
  const digest = await blobDigest(blob)
  const ct = blob.ciphertext
  const tampered = { ...blob, ciphertext: (ct[0] === 'A' ? 'B' : 'A') + ct.slice(1) }
  t.not(await blobDigest(tampered), digest)
  await rejectsWithCode(t, openEscrowBlob(tampered, a.keys.sealing), 'integrity_failed')
  const other = await generateHostKeys()
  await rejectsWithCode(t, openEscrowBlob(blob, other.sealing), 'decryption_failed')
  t.deepEqual(await openEscrowBlob(blob, a.keys.sealing), a.vk)
})

test('enrollment tokens: single use, expiry, revocation, name binding and CIDRs give stable codes', async (t) => {
  const srv = await startTestServer(t)
  const keys = await generateHostKeys()
  const blob = await sealVolumeKey(randomBytes(32), [publicOf(keys.sealing)])
  const tok = await srv.admin('POST', '/tokens', { host: 'h-1', ttlSeconds: 600 })
  await rejectsWithCode(
    t,
    enroll(srv.transport, { token: tok.body.token, name: 'h-2', keys, volumes: [] }),
    'forbidden',
  )
  await enroll(srv.transport, {
    token: tok.body.token,
    name: 'h-1',
    keys,
    volumes: [{ name: 'd', kind: 'luks', blob }],
  })
  const other = await generateHostKeys()
  await rejectsWithCode(
    t,
    enroll(srv.transport, { token: tok.body.token, name: 'h-1', keys: other, volumes: [] }),
    'token_used',
  )
  const tok2 = await srv.admin('POST', '/tokens', { host: 'h-3', ttlSeconds: 600 })
  t.is((await srv.admin('DELETE', `/tokens/${tok2.body.id}`)).body.state, 'revoked')
  await rejectsWithCode(
    t,
    enroll(srv.transport, { token: tok2.body.token, name: 'h-3', keys: other, volumes: [] }),
    'token_revoked',
  )
  const tok3 = await srv.admin('POST', '/tokens', {
    host: 'h-4',
    ttlSeconds: 600,
    cidrs: ['198.51.100.0/24'],
  })
  await rejectsWithCode(
    t,
    enroll(srv.transport, { token: tok3.body.token, name: 'h-4', keys: other, volumes: [] }),
    'cidr_denied',
  )
  await rejectsWithCode(
    t,
    enroll(srv.transport, {
      token: 'ue_' + 'x'.repeat(43),
      name: 'h-4',
      keys: other,
      volumes: [],
    }),
    'token_invalid',
  )
  const listed = await srv.admin('GET', '/tokens')
  t.deepEqual(listed.body.tokens.map((x: any) => x.state).sort(), ['revoked', 'unused', 'used'])
  t.false(JSON.stringify(listed.body).includes(tok.body.token), 'token secrets are never listed')
})

test('expired enrollment token (server clock moved forward)', async (t) => {
  let now = Math.floor(Date.now() / 1000)
  const srv = await startTestServer(t, { now: () => now })
  const tok = await srv.admin('POST', '/tokens', { host: 'h-1', ttlSeconds: 60 })
  now += 120
  const keys = await generateHostKeys()
  await rejectsWithCode(
    t,
    enroll(srv.transport, { token: tok.body.token, name: 'h-1', keys, volumes: [] }),
    ['token_expired', 'iat_skew'],
  )
})

test('bad input: malformed bodies get 4xx with a code and a sentence, never a 500', async (t) => {
  const srv = await startTestServer(t)
  const cases: [string, unknown][] = [
    ['/v1/unlock', {}],
    ['/v1/unlock', { jws: 'a.b' }],
    ['/v1/unlock', { jws: 42 }],
    ['/v1/enroll', { jws: 'x.y.z' }],
    ['/v1/unlock', { jws: 'eyJhbGciOiJub25lIn0.e30.' }],
  ]
  for (const [path, body] of cases) {
    const r = await srv.transport({ method: 'POST', path, body, bearer: 'ue_' + 'y'.repeat(43) })
    t.true(r.status >= 400 && r.status < 500, `${path} ${JSON.stringify(body)} → ${r.status}`)
    t.is(typeof (r.body as any).error, 'string')
    t.is(typeof (r.body as any).message, 'string')
  }
  const raw = await fetch(`${srv.url}/v1/unlock`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: '{not json',
  })
  t.is(raw.status, 400)
  t.is(((await raw.json()) as any).error, 'bad_request')
  const big = await fetch(`${srv.url}/v1/unlock`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jws: 'a'.repeat(300_000) }),
  })
  t.is(big.status, 413)
  const noAuth = await fetch(`${srv.url}/v1/admin/hosts`)
  t.is(noAuth.status, 401)
  const badAuth = await fetch(`${srv.url}/v1/admin/hosts`, {
    headers: { authorization: 'Bearer uo_' + 'z'.repeat(43) },
  })
  t.is(badAuth.status, 401)
})

test('every decision is audited and the chain verifies; secrets never reach the log or the audit', async (t) => {
  const srv = await startTestServer(t)
  const tok = await srv.admin('POST', '/tokens', { host: 'a-1', ttlSeconds: 600 })
  const keys = await generateHostKeys()
  const blob = await sealVolumeKey(randomBytes(64), [publicOf(keys.sealing)])
  const { hostId } = await enroll(srv.transport, {
    token: tok.body.token,
    name: 'a-1',
    keys,
    volumes: [{ name: 'data', kind: 'luks', blob }],
  })
  await requestUnlock(srv.transport, { keys, hostId, bootId: 'boot-aaaa', volumes: [] })
  await srv.admin('POST', '/hosts/a-1/suspend')
  await t.throwsAsync(
    requestUnlock(srv.transport, { keys, hostId, bootId: 'boot-aaaa', volumes: [] }),
  )
  const { body } = await srv.admin('GET', '/audit')
  const actions = body.entries.map((e: any) => e.action)
  t.deepEqual(actions, [
    'server.init',
    'token.create',
    'host.enroll',
    'unlock.release',
    'host.suspend',
    'unlock.deny',
  ])
  t.true(verifyAuditChain(body.entries, srv.deps.keystore.auditKey).ok)
  const everything = JSON.stringify(body) + srv.logs.join('\n')
  for (const secret of [tok.body.token, srv.token, blob.ciphertext, keys.signing.d, keys.sealing.d])
    t.false(everything.includes(secret))
  // Tampering with one entry is caught and named.
  const bad = body.entries.map((e: any) =>
    e.seq === 4 ? { ...e, detail: { ...e.detail, source: '10.9.9.9' } } : e,
  )
  const v = verifyAuditChain(bad, srv.deps.keystore.auditKey)
  t.false(v.ok)
  if (!v.ok) t.is(v.badSeq, 4)
})
