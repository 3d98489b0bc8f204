/**
 * Two real server instances on one PostgreSQL database (sharing the keystore file, as two
 * instances behind a load balancer share their KEK): state written through one is served by
 * the other, and a nonce is single-use across both. Skipped loudly without
 * `UNLOCKD_TEST_PG_URL`; failed under CI.
 */
import test, { type ExecutionContext } from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
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
import { randomBytes } from '../../shared/crypto/bytes.ts'
import { signHostRequest } from '../../shared/crypto/jws.ts'
import { parseUnlockResponse } from '../../shared/protocol/messages.ts'
import { freshPgDatabase, inCi, pgSkipBanner, pgUnavailable } from '../helpers/pg.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'

function pgOnly(title: string, impl: (t: ExecutionContext) => Promise<void>): void {
  const why = pgUnavailable()
  if (why === undefined) test(title, impl)
  else if (inCi())
    test(title, (t) => {
      t.fail(`${why}; CI must run the PostgreSQL tests (.ci/run sources .ci/pg.sh)`)
    })
  else {
    pgSkipBanner(title)
    test.skip(`${title} [SKIPPED: ${why}]`, () => {})
  }
}

/** Instance A initializes the data dir with `--db URL`; B starts on A's data dir (same keystore). */
async function twoInstances(
  t: ExecutionContext,
): Promise<{ a: TestServer; b: TestServer; url: string }> {
  const url = await freshPgDatabase(t)
  const a = await startTestServer(t, { db: url })
  const b = await startTestServer(t, {
    dataDir: a.dataDir,
    token: a.token,
    adminSecret: a.adminSecret,
    db: url,
  })
  return { a, b, url }
}

async function enrolledHost(
  a: TestServer,
  name: string,
): Promise<{ keys: Awaited<ReturnType<typeof generateHostKeys>>; hostId: string; vk: Uint8Array }> {
  const tok = await a.admin('POST', '/tokens', { host: name, ttlSeconds: 600 })
  if (tok.status !== 201) throw new Error(`token: ${tok.status} ${JSON.stringify(tok.body)}`)
  const keys = await generateHostKeys()
  const vk = randomBytes(64)
  const blob = await sealVolumeKey(vk, [publicOf(keys.sealing)])
  const res = await enroll(a.transport, {
    token: tok.body.token,
    name,
    keys,
    volumes: [{ name: 'data', kind: 'luks', blob }],
  })
  return { keys, hostId: res.hostId, vk }
}

async function postJws(
  url: string,
  path: string,
  jws: string,
): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jws }),
    signal: AbortSignal.timeout(120_000),
  })
  return { status: res.status, body: await res.json() }
}

pgOnly('two instances on one PostgreSQL: enrolled through A, unlocked through B', async (t) => {
  const { a, b, url } = await twoInstances(t)
  t.is(a.deps.store.kind, 'postgres')
  t.is(b.deps.store.kind, 'postgres')
  // `server init --db` recorded the database in server.json; no SQLite file was made.
  t.deepEqual(JSON.parse(readFileSync(join(a.dataDir, 'server.json'), 'utf8')), { db: url })
  t.false(existsSync(join(a.dataDir, 'unlockd.db')))

  const { keys, hostId, vk } = await enrolledHost(a, 'web-1')
  t.is(hostId, await hostIdOf(keys))
  const un = await requestUnlock(b.transport, { keys, hostId, bootId: 'boot-0001', volumes: [] })
  t.is(un.status, 'released')
  if (un.status === 'released')
    t.deepEqual(await openEscrowBlob(un.volumes[0]!.blob, keys.sealing), vk)

  // Both instances see the same host and the same audit chain.
  const hb = await b.admin('GET', '/hosts/web-1')
  t.is(hb.status, 200)
  t.not(hb.body.lastUnlockAt, null)
  const auditA = await a.admin('GET', '/audit')
  const auditB = await b.admin('GET', '/audit')
  t.is(auditA.status, 200)
  t.deepEqual(auditA.body, auditB.body)
})

pgOnly(
  'two instances on one PostgreSQL: a nonce from A works once at B, and its replay at A is refused',
  async (t) => {
    const { a, b } = await twoInstances(t)
    const { keys, hostId, vk } = await enrolledHost(a, 'web-2')

    const nonce = await fetchNonce(a.transport)
    const iat = Math.floor(Date.now() / 1000)
    const jws = await signHostRequest(
      'unlock',
      // A v1 request (an agent from before signed verdicts): still served, same nonce rules.
      { v: 1, host: hostId, volumes: ['data'], nonce, bootId: 'boot-0002', iat },
      keys.signing,
      hostId,
    )

    const first = await postJws(b.url, '/v1/unlock', jws)
    t.is(first.status, 200)
    const released = parseUnlockResponse(first.body)
    t.is(released.status, 'released')
    if (released.status === 'released')
      t.deepEqual(await openEscrowBlob(released.volumes[0]!.blob!, keys.sealing), vk)

    const replayA = await postJws(a.url, '/v1/unlock', jws)
    t.is(replayA.status, 403)
    t.is(replayA.body.error, 'nonce_reused')
    const replayB = await postJws(b.url, '/v1/unlock', jws)
    t.is(replayB.body.error, 'nonce_reused')

    // The same signed request sent to both at once: exactly one instance releases.
    const nonce2 = await fetchNonce(b.transport)
    const jws2 = await signHostRequest(
      'unlock',
      { v: 1, host: hostId, volumes: [], nonce: nonce2, bootId: 'boot-0003', iat },
      keys.signing,
      hostId,
    )
    const both = await Promise.all([
      postJws(a.url, '/v1/unlock', jws2),
      postJws(b.url, '/v1/unlock', jws2),
    ])
    t.deepEqual(both.map((r) => r.status).sort(), [200, 403])
    t.is(both.find((r) => r.status === 403)?.body.error, 'nonce_reused')
  },
)

pgOnly(
  'a rate limit holds across instances under concurrent unlocks of one host; other hosts proceed',
  async (t) => {
    const { a, b } = await twoInstances(t)
    const h = await enrolledHost(a, 'rl-1')
    const other = await enrolledHost(a, 'rl-2')
    t.is(
      (
        await a.admin('PATCH', '/hosts/rl-1/policy', {
          maxUnlocks: { count: 3, periodSeconds: 3600 },
        })
      ).status,
      200,
    )
    const attempts = Array.from({ length: 12 }, (_, i) =>
      requestUnlock((i % 2 ? a : b).transport, {
        keys: h.keys,
        hostId: h.hostId,
        bootId: 'boot-rl01',
        volumes: [],
      })
        .then((r) => r.status)
        .catch((e: { code?: string }) => e.code ?? 'error'),
    )
    const others = Array.from({ length: 6 }, (_, i) =>
      requestUnlock((i % 2 ? a : b).transport, {
        keys: other.keys,
        hostId: other.hostId,
        bootId: 'boot-rl02',
        volumes: [],
      }).then((r) => r.status),
    )
    const results = await Promise.all(attempts)
    t.is(results.filter((r) => r === 'released').length, 3, JSON.stringify(results))
    t.is(results.filter((r) => r === 'rate_limited').length, 9, JSON.stringify(results))
    t.deepEqual(await Promise.all(others), Array(6).fill('released'))
    // The audit chain stayed linear under concurrent appends from both instances.
    const { body } = await b.admin('POST', '/audit/verify', {})
    t.true(body.ok, JSON.stringify(body))
  },
)
