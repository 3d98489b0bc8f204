/**
 * Shred and KEK rotation with two server instances on one PostgreSQL database sharing one
 * keystore file (as behind a load balancer): a rotation made by A (after a shred, or on demand)
 * is followed by B before it wraps or unwraps anything, so B keeps serving survivors, blobs B
 * enrolls after the rotation are wrapped by a KEK that exists, both see the shred order, and
 * concurrent rotations on both instances add one KEK, not two. Skipped loudly without
 * `UNLOCKD_TEST_PG_URL`; failed under CI.
 */
import test, { type ExecutionContext } from 'ava'
import { join } from 'node:path'
import { openEscrowBlob, requestUnlock, watch } from '../../shared/client/host-client.ts'
import { parseKekStatus, parseShredResult } from '../../shared/protocol/shred.ts'
import { Keystore } from '../../server/keys/keystore.ts'
import { freshPgDatabase, inCi, pgSkipBanner, pgUnavailable } from '../helpers/pg.ts'
import { TEST_PASSPHRASE, startTestServer, type TestServer } from '../helpers/server.ts'
import { addOperator, asOperator, codeNow, enrollHost, type TestHost } from '../helpers/approval.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

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

async function opensAt(
  t: ExecutionContext,
  srv: TestServer,
  h: TestHost,
  bootId: string,
): Promise<void> {
  const r = await requestUnlock(srv.transport, {
    keys: h.keys,
    hostId: h.hostId,
    bootId,
    volumes: [],
  })
  t.is(r.status, 'released', `${h.name} at ${srv.url}`)
  if (r.status === 'released')
    t.deepEqual(await openEscrowBlob(r.volumes[0]!.blob, h.keys.sealing), h.vk)
}

pgOnly(
  'two instances: a shred on A rotates the shared KEK; B follows it, enrolls under the new KEK, and sees the order',
  async (t) => {
    const url = await freshPgDatabase(t)
    const a = await startTestServer(t, { db: url })
    const b = await startTestServer(t, {
      dataDir: a.dataDir,
      token: a.token,
      adminSecret: a.adminSecret,
      db: url,
    })
    const alice = await addOperator(t, a, 'alice')
    const victim = await enrollHost(t, a, 'web-1')
    const survivor = await enrollHost(t, a, 'web-2')
    const v0 = a.deps.keystore.currentVersion

    const r = await asOperator(a, alice, 'POST', '/shred', {
      host: 'web-1',
      code: codeNow(a, alice),
    })
    t.is(r.status, 200, JSON.stringify(r.body))
    t.is(parseShredResult(r.body).kek?.status, 'rotated')

    // B never saw the rotation happen, yet serves the re-wrapped survivor and reports the new KEK.
    await opensAt(t, b, survivor, 'boot-b-0001')
    t.deepEqual(parseKekStatus((await b.admin('GET', '/kek')).body).versions, [v0 + 1])
    // A host enrolled through B is wrapped by the KEK that exists, and opens through A.
    const late = await enrollHost(t, b, 'web-3')
    await opensAt(t, a, late, 'boot-a-0001')
    // B tells the shredded host, and refuses it.
    b.deps.settings.pollHold = 1
    t.deepEqual(
      await watch(b.transport, {
        keys: victim.keys,
        hostId: victim.hostId,
        bootId: 'boot-b-0002',
        holdMs: 1000,
      }),
      { order: 'shred', volumes: ['data'] },
    )
    await rejectsWithCode(
      t,
      requestUnlock(b.transport, {
        keys: victim.keys,
        hostId: victim.hostId,
        bootId: 'boot-b-0003',
        volumes: [],
      }),
      'host_shredded',
    )

    // Both instances rotate at once (two operators, each with a code of their own): whatever
    // order they run in, one KEK is left and nothing is lost.
    const bob = await addOperator(t, a, 'bob')
    const both = await Promise.all([
      a.admin('POST', '/kek/rotate', {}, { totp: true }),
      asOperator(b, bob, 'POST', '/kek/rotate', {}, codeNow(b, bob)),
    ])
    for (const x of both) t.is(x.status, 200, JSON.stringify(x.body))
    const after = parseKekStatus((await a.admin('GET', '/kek')).body)
    t.is(after.pending, null)
    t.is(after.behind, 0)
    t.is(after.versions.length, 1, 'exactly one KEK is left')
    for (const srv of [a, b])
      for (const h of [survivor, late])
        await opensAt(t, srv, h, `boot-${Math.random().toString(36).slice(2, 10)}`)
    await a.close()
    await b.close()
    const ks = Keystore.open(join(a.dataDir, 'keystore.json'), TEST_PASSPHRASE)
    t.deepEqual(ks.versions, after.versions)
    ks.close()
  },
)
