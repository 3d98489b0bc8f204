/**
 * Crypto-shred and the kill-switch channel over real HTTP: TOTP required, dry run
 * changes nothing, shred is idempotent, a shredded host is refused and can never enroll again,
 * a volume-only shred leaves the host and its other volumes, the watch channel delivers the
 * order (to a host already waiting, and to one that connects later, even after a restart), the
 * report closes it, and KEK rotation (on demand and on schedule) keeps every survivor opening to
 * its exact volume key while old KEKs go.
 */
import test from 'ava'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  enroll,
  fetchNonce,
  generateHostKeys,
  openEscrowBlob,
  publicOf,
  report,
  requestUnlock,
  sealVolumeKey,
  watch,
} from '../../shared/client/host-client.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'
import { signHostRequest } from '../../shared/crypto/jws.ts'
import { verifyAuditChain } from '../../shared/audit.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import { parseKekStatus, parseShredResult } from '../../shared/protocol/shred.ts'
import { requestRotation, rotateIfDue, ROTATION_META } from '../../server/keys/rotation.ts'
import { Keystore, backupPathOf } from '../../server/keys/keystore.ts'
import { TEST_PASSPHRASE, startTestServer, type TestServer } from '../helpers/server.ts'
import { until } from '../helpers/wait.ts'
import {
  addOperator,
  asOperator,
  codeNow,
  enrollHost,
  testClock,
  wrongCode,
  type TestHost,
  type TestOperator,
} from '../helpers/approval.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

async function setup(
  t: Parameters<typeof startTestServer>[0],
  settings: Record<string, number> = {},
) {
  const clock = testClock()
  const srv = await startTestServer(t, { now: clock.now, settings })
  const alice = await addOperator(t, srv, 'alice')
  return { srv, clock, alice }
}

/** A fresh TOTP step for each call (a code is single-use per step). */
function shredAs(srv: TestServer, clock: ReturnType<typeof testClock>, op: TestOperator) {
  return async (body: Record<string, unknown>) => {
    clock.advance(30)
    return asOperator(srv, op, 'POST', '/shred', { ...body, code: codeNow(srv, op) })
  }
}

async function unlockOk(
  t: Parameters<typeof startTestServer>[0],
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
  t.is(r.status, 'released')
  if (r.status === 'released')
    t.deepEqual(
      await openEscrowBlob(r.volumes[0]!.blob, h.keys.sealing),
      h.vk,
      `${h.name} opens to its exact key`,
    )
}

async function auditActions(srv: TestServer): Promise<AuditEntry[]> {
  return (await srv.admin('GET', '/audit?limit=10000')).body.entries as AuditEntry[]
}

test('shred needs a valid TOTP code; a refused shred destroys nothing', async (t) => {
  const { srv, alice } = await setup(t)
  const h = await enrollHost(t, srv, 'web-1')
  const none = await asOperator(srv, alice, 'POST', '/shred', { host: 'web-1' })
  t.is(none.status, 403)
  t.is(none.body.error, 'totp_invalid')
  const bad = await asOperator(srv, alice, 'POST', '/shred', {
    host: 'web-1',
    code: wrongCode(alice.secret, srv.deps.now()),
  })
  t.is(bad.status, 403)
  t.is(bad.body.error, 'totp_invalid')
  // An operator with no TOTP at all (an old data dir's init operator) is refused outright.
  await srv.deps.store.tx(async (tx) => {
    const op = await tx.getOperatorByName('admin')
    if (op) await tx.updateOperator(op.id, { totpCt: null, totpIv: null, totpKekVersion: null })
  })
  const admin = await srv.admin('POST', '/shred', { host: 'web-1', code: '123456' })
  t.is(admin.status, 403)
  t.is(admin.body.error, 'forbidden')
  await unlockOk(t, srv, h, 'boot-0001')
  const entries = await auditActions(srv)
  t.true(entries.some((e) => e.action === 'totp.fail'))
  t.false(entries.some((e) => e.action === 'host.shred'))
})

test('--dry-run lists what would go and changes nothing', async (t) => {
  const { srv, alice } = await setup(t)
  const h = await enrollHost(t, srv, 'web-1')
  const before = await auditActions(srv)
  const kekBefore = parseKekStatus((await srv.admin('GET', '/kek')).body)
  const r = await asOperator(srv, alice, 'POST', '/shred', { host: 'web-1', dryRun: true })
  t.is(r.status, 200, JSON.stringify(r.body))
  const res = parseShredResult(r.body)
  t.true(res.dryRun)
  t.deepEqual(res.targets, [
    { host: 'web-1', id: h.hostId, wholeHost: true, alreadyShredded: false, volumes: ['data'] },
  ])
  t.is(res.deletedBlobs, 0)
  t.true(res.cannot.length >= 3)
  // Nothing moved: audit, KEK, host state, blobs.
  t.deepEqual(await auditActions(srv), before)
  t.deepEqual(parseKekStatus((await srv.admin('GET', '/kek')).body), kekBefore)
  t.is((await srv.admin('GET', '/hosts/web-1')).body.state, 'active')
  await unlockOk(t, srv, h, 'boot-0001')
  const all = parseShredResult(
    (await asOperator(srv, alice, 'POST', '/shred', { all: true, dryRun: true })).body,
  )
  t.deepEqual(
    all.targets.map((x) => x.host),
    ['web-1'],
  )
})

test('shred: blobs gone, host tombstoned and refused, never enrolls again, KEK rotated; a second shred is a no-op', async (t) => {
  const { srv, clock, alice } = await setup(t)
  const victim = await enrollHost(t, srv, 'web-1')
  const survivor = await enrollHost(t, srv, 'web-2')
  const kek0 = srv.deps.keystore.currentVersion
  const doShred = shredAs(srv, clock, alice)

  const r = await doShred({ host: 'web-1', reason: 'decommissioned' })
  t.is(r.status, 200, JSON.stringify(r.body))
  const res = parseShredResult(r.body)
  t.false(res.dryRun)
  t.is(res.deletedBlobs, 1)
  t.is(res.kek?.status, 'rotated')
  t.deepEqual(res.kek?.destroyed, [kek0])
  t.is(srv.deps.keystore.currentVersion, kek0 + 1)
  t.deepEqual(srv.deps.keystore.versions, [kek0 + 1])

  const view = (await srv.admin('GET', '/hosts/web-1')).body
  t.is(view.state, 'shredded')
  t.is(view.stateReason, 'decommissioned')
  t.deepEqual(view.volumes, [])
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: victim.keys,
      hostId: victim.hostId,
      bootId: 'boot-0002',
      volumes: [],
    }),
    'host_shredded',
  )
  // The tombstone keeps the identity: the same keys can never enroll again, under any name.
  const tok = await srv.admin('POST', '/tokens', { host: 'web-1', ttlSeconds: 600 })
  t.is(tok.status, 201, 'the name is free for a new host')
  const blob = await sealVolumeKey(victim.vk, [publicOf(victim.keys.sealing)])
  await rejectsWithCode(
    t,
    enroll(srv.transport, {
      token: tok.body.token,
      name: 'web-1',
      keys: victim.keys,
      volumes: [{ name: 'data', kind: 'luks', blob }],
    }),
    'host_shredded',
  )
  const exp = await srv.admin('POST', '/hosts/web-1/escrow-export', {}, { totp: true })
  t.is(exp.status, 403)
  t.is(exp.body.error, 'host_shredded')

  // The survivor was re-wrapped under the new KEK and still opens to its exact key.
  await unlockOk(t, srv, survivor, 'boot-0003')

  // Idempotent: shredding again succeeds, destroys nothing more, does not rotate again.
  const r2 = await doShred({ host: 'web-1' })
  t.is(r2.status, 200, JSON.stringify(r2.body))
  const res2 = parseShredResult(r2.body)
  t.deepEqual(res2.targets, [
    { host: 'web-1', id: victim.hostId, wholeHost: true, alreadyShredded: true, volumes: [] },
  ])
  t.is(res2.deletedBlobs, 0)
  t.is(res2.kek?.status, 'unchanged')
  t.is(srv.deps.keystore.currentVersion, kek0 + 1)

  const entries = await auditActions(srv)
  const shredEntries = entries.filter((e) => e.action === 'host.shred')
  t.is(shredEntries.length, 1)
  t.is(shredEntries[0]!.actor, 'operator:alice')
  t.deepEqual(shredEntries[0]!.detail['volumes'], ['data'])
  t.true(entries.some((e) => e.action === 'kek.rotate' && e.detail['kek'] === kek0 + 1))
  t.true(verifyAuditChain(entries, srv.deps.keystore.auditKey).ok)
  t.false(JSON.stringify(entries).includes('"ciphertext"'), 'no blob in the audit log')
  // No journal is left behind.
  t.is(await srv.deps.store.tx((tx) => tx.getMeta(ROTATION_META)), undefined)
})

test('shred --volume removes only that volume; the host and its other volumes stay', async (t) => {
  const { srv, clock, alice } = await setup(t)
  const tok = await srv.admin('POST', '/tokens', { host: 'db-1', ttlSeconds: 600 })
  const keys = await generateHostKeys()
  const vkA = randomBytes(64)
  const vkB = randomBytes(64)
  const sealed = async (vk: Uint8Array) => sealVolumeKey(vk, [publicOf(keys.sealing)])
  const e = await enroll(srv.transport, {
    token: tok.body.token,
    name: 'db-1',
    keys,
    volumes: [
      { name: 'data', kind: 'luks', blob: await sealed(vkA) },
      { name: 'backups', kind: 'fscrypt', blob: await sealed(vkB) },
    ],
  })
  const doShred = shredAs(srv, clock, alice)
  const unknown = await doShred({ host: 'db-1', volumes: ['nope'] })
  t.is(unknown.body.error, 'volume_unknown')
  const r = parseShredResult((await doShred({ host: 'db-1', volumes: ['backups'] })).body)
  t.deepEqual(r.targets, [
    { host: 'db-1', id: e.hostId, wholeHost: false, alreadyShredded: false, volumes: ['backups'] },
  ])
  t.is(r.deletedBlobs, 1)
  const view = (await srv.admin('GET', '/hosts/db-1')).body
  t.is(view.state, 'active')
  t.deepEqual(
    view.volumes.map((v: { name: string }) => v.name),
    ['data'],
  )
  const un = await requestUnlock(srv.transport, {
    keys,
    hostId: e.hostId,
    bootId: 'boot-0001',
    volumes: [],
  })
  t.is(un.status, 'released')
  if (un.status === 'released') {
    t.deepEqual(
      un.volumes.map((v) => v.name),
      ['data'],
    )
    t.deepEqual(await openEscrowBlob(un.volumes[0]!.blob, keys.sealing), vkA)
  }
  // Again: a no-op for a volume already shredded.
  const again = parseShredResult((await doShred({ host: 'db-1', volumes: ['backups'] })).body)
  t.is(again.deletedBlobs, 0)
  // The order names the volume only.
  const w = await watch(srv.transport, { keys, hostId: e.hostId, bootId: 'boot-0001' })
  t.deepEqual(w, { order: 'shred', volumes: ['backups'] })
  await report(srv.transport, {
    keys,
    hostId: e.hostId,
    event: 'shred_done',
    actions: ['fscrypt: removed key of backups'],
  })
  const w2 = await watch(srv.transport, {
    keys,
    hostId: e.hostId,
    bootId: 'boot-0001',
    holdMs: 2000,
  })
  t.deepEqual(w2, { order: 'none', volumes: [] }, 'a live host that reported is not told again')

  // That report may have come from a copy of the host keys. A host that still asks for the
  // volume has not erased it: the order is outstanding again, and its next watch gets it.
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys,
      hostId: e.hostId,
      bootId: 'boot-0002',
      volumes: ['backups'],
    }),
    'volume_unknown',
  )
  const w3 = await watch(srv.transport, { keys, hostId: e.hostId, bootId: 'boot-0002' })
  t.deepEqual(w3, { order: 'shred', volumes: ['backups'] }, 'the order is outstanding again')
  const reopened = (await auditActions(srv)).filter((x) => x.action === 'shred.order_reopened')
  t.is(reopened.length, 1)
  t.deepEqual(reopened[0]!.detail['volumes'], ['backups'])
  // Asking only for the surviving volume does not reopen anything.
  await report(srv.transport, { keys, hostId: e.hostId, event: 'shred_done', actions: [] })
  const ok = await requestUnlock(srv.transport, {
    keys,
    hostId: e.hostId,
    bootId: 'boot-0003',
    volumes: ['data'],
  })
  t.is(ok.status, 'released')
  t.deepEqual(
    await watch(srv.transport, { keys, hostId: e.hostId, bootId: 'boot-0003', holdMs: 2000 }),
    { order: 'none', volumes: [] },
  )
})

test('watch: none before; a waiting host is woken by the shred; a host that connects later (after a restart) learns it; report closes it', async (t) => {
  const { srv, clock, alice } = await setup(t, { pollHold: 20 })
  const h = await enrollHost(t, srv, 'web-1')
  const other = await enrollHost(t, srv, 'web-2')
  const doShred = shredAs(srv, clock, alice)

  // Nothing to do: the watch ends with `none` once the hold passes (short hold for this one).
  srv.deps.settings.pollHold = 1
  t.deepEqual(
    await watch(srv.transport, {
      keys: h.keys,
      hostId: h.hostId,
      bootId: 'boot-0001',
      holdMs: 1000,
    }),
    { order: 'none', volumes: [] },
  )
  srv.deps.settings.pollHold = 20

  // A host already waiting is answered when the shred commits, well before its 20 s hold.
  const waiting = watch(srv.transport, {
    keys: h.keys,
    hostId: h.hostId,
    bootId: 'boot-0001',
    holdMs: 20_000,
  })
  await until(
    () => srv.deps.events.listenerCount(`shred:${h.hostId}`) > 0,
    'the watch to wait for a shred order',
  )
  t.is((await doShred({ host: 'web-1' })).status, 200)
  t.deepEqual(await waiting, { order: 'shred', volumes: ['data'] })

  // Another host sees nothing.
  srv.deps.settings.pollHold = 1
  t.deepEqual(
    await watch(srv.transport, {
      keys: other.keys,
      hostId: other.hostId,
      bootId: 'boot-0002',
      holdMs: 1000,
    }),
    { order: 'none', volumes: [] },
  )

  // The order survives a restart: a host that was offline gets it at its next contact.
  const srv2 = await srv.restart()
  srv2.deps.settings.pollHold = 1
  t.deepEqual(
    await watch(srv2.transport, {
      keys: h.keys,
      hostId: h.hostId,
      bootId: 'boot-0009',
      holdMs: 1000,
    }),
    { order: 'shred', volumes: ['data'] },
  )
  await report(srv2.transport, {
    keys: h.keys,
    hostId: h.hostId,
    event: 'shred_done',
    actions: ['luksErase /dev/vdb', 'deleted host keys'],
  })
  // A shredded host is told on every contact, even after it reported (a restored disk image).
  t.deepEqual(
    await watch(srv2.transport, {
      keys: h.keys,
      hostId: h.hostId,
      bootId: 'boot-0010',
      holdMs: 1000,
    }),
    { order: 'shred', volumes: ['data'] },
  )
  const entries = (await srv2.admin('GET', '/audit?limit=10000')).body.entries as AuditEntry[]
  const rep = entries.find((e) => e.action === 'shred.report')
  t.truthy(rep)
  t.is(rep?.actor, 'host:web-1')
  t.deepEqual(rep?.detail['actions'], ['luksErase /dev/vdb', 'deleted host keys'])
  t.is(rep?.detail['event'], 'shred_done')
  t.true(entries.some((e) => e.action === 'shred.order_sent'))
})

test('watch: a signed request is single-use and must be from the host', async (t) => {
  const { srv } = await setup(t)
  const h = await enrollHost(t, srv, 'web-1')
  const stranger = await generateHostKeys()
  await rejectsWithCode(
    t,
    watch(srv.transport, { keys: stranger, hostId: h.hostId, bootId: 'boot-0001', holdMs: 1000 }),
    'bad_signature',
  )
  srv.deps.settings.pollHold = 1
  const nonce = await fetchNonce(srv.transport)
  const jws = await signHostRequest(
    'watch',
    { v: 1, host: h.hostId, nonce, bootId: 'boot-0001', iat: srv.deps.now() },
    h.keys.signing,
    h.hostId,
  )
  const first = await srv.transport({ method: 'POST', path: '/v1/watch', body: { jws } })
  t.is(first.status, 200)
  const replay = await srv.transport({ method: 'POST', path: '/v1/watch', body: { jws } })
  t.is(replay.status, 403)
  t.is((replay.body as { error: string }).error, 'nonce_reused')
  // A JWS made for another purpose does not pass as a watch.
  const unlockJws = await signHostRequest(
    'unlock',
    {
      v: 1,
      host: h.hostId,
      volumes: [],
      nonce: await fetchNonce(srv.transport),
      bootId: 'boot-0001',
      iat: srv.deps.now(),
    },
    h.keys.signing,
    h.hostId,
  )
  const wrongPurpose = await srv.transport({
    method: 'POST',
    path: '/v1/watch',
    body: { jws: unlockJws },
  })
  t.is(wrongPurpose.status, 400)
})

test('kek rotate: survivors still unlock to their exact keys, TOTP secrets are re-wrapped, the old KEK is gone from both keystore files', async (t) => {
  const { srv, clock, alice } = await setup(t)
  const a = await enrollHost(t, srv, 'web-1')
  const b = await enrollHost(t, srv, 'web-2')
  const v0 = srv.deps.keystore.currentVersion
  const r = await srv.admin('POST', '/kek/rotate', {}, { totp: true })
  t.is(r.status, 200, JSON.stringify(r.body))
  const s = parseKekStatus(r.body)
  t.is(s.current, v0 + 1)
  t.deepEqual(s.versions, [v0 + 1])
  t.deepEqual(s.rotated?.destroyed, [v0])
  // alice's and the init operator's secrets
  t.deepEqual(s.rotated?.rewrapped, { volumes: 2, totpSecrets: 2 })
  t.is(s.pending, null)
  t.is(s.behind, 0)
  await unlockOk(t, srv, a, 'boot-0001')
  await unlockOk(t, srv, b, 'boot-0002')
  // alice's TOTP secret still verifies (it was re-wrapped): a dry run needs none, a real shred does.
  const shredB = await shredAs(srv, clock, alice)({ host: 'web-2' })
  t.is(shredB.status, 200, JSON.stringify(shredB.body))
  for (const file of [
    join(srv.dataDir, 'keystore.json'),
    backupPathOf(join(srv.dataDir, 'keystore.json')),
  ]) {
    t.true(existsSync(file))
    t.false(
      readFileSync(file, 'utf8').includes(`"version":${v0}`),
      'sealed file never holds plaintext',
    )
  }
  await srv.close()
  const ks = Keystore.open(join(srv.dataDir, 'keystore.json'), TEST_PASSPHRASE)
  t.deepEqual(ks.versions, [v0 + 2])
  ks.close()
})

test('scheduled rotation: the maintenance job rotates once the period has passed, and not before', async (t) => {
  const { srv, clock } = await setup(t, { kekRotationPeriod: 3600 })
  const a = await enrollHost(t, srv, 'web-1')
  const v0 = srv.deps.keystore.currentVersion
  t.is(await rotateIfDue(srv.deps), undefined)
  t.is(srv.deps.keystore.currentVersion, v0)
  clock.advance(3601)
  const r = await rotateIfDue(srv.deps)
  t.is(r?.current, v0 + 1)
  t.deepEqual(r?.reasons, ['schedule'])
  t.deepEqual(srv.deps.keystore.versions, [v0 + 1])
  t.is(await rotateIfDue(srv.deps), undefined, 'the clock restarted')
  clock.advance(-3601) // back to real time for the host's signed iat
  await unlockOk(t, srv, a, 'boot-0001')
  const s = parseKekStatus((await srv.admin('GET', '/kek')).body)
  t.is(s.nextRotationAt, (s.rotatedAt ?? 0) + 3600)
})

test('a shred that commits while a rotation runs is not lost: the rotation goes another round', async (t) => {
  const { srv } = await setup(t)
  const a = await enrollHost(t, srv, 'web-1')
  const v0 = srv.deps.keystore.currentVersion
  const store = srv.deps.store
  const realScrub = store.scrub.bind(store)
  let injected = false
  // In the middle of the first round (after the new KEK exists, before the old one goes), a
  // shred elsewhere journals "destroy everything up to the current KEK", which is the new one.
  ;(store as { scrub: () => Promise<void> }).scrub = async () => {
    if (!injected) {
      injected = true
      await store.tx((x) =>
        requestRotation(x, srv.deps.keystore.currentVersion, 'shred', srv.deps.now()),
      )
    }
    return realScrub()
  }
  const r = await srv.admin('POST', '/kek/rotate', {}, { totp: true })
  t.is(r.status, 200, JSON.stringify(r.body))
  t.true(injected)
  const s = parseKekStatus(r.body)
  t.is(s.current, v0 + 2, 'a second round retired the KEK the concurrent shred covered')
  t.deepEqual(s.versions, [v0 + 2])
  t.deepEqual(s.rotated?.destroyed, [v0, v0 + 1])
  t.is(s.pending, null)
  await unlockOk(t, srv, a, 'boot-0001')
})
