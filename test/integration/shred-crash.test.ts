/**
 * Shred and KEK rotation survive a crash at every step. The real CLI server runs as
 * a child process; `UNLOCKD_FAULT=<point>` makes it SIGKILL itself at that step (a real kill:
 * no finally blocks, no graceful close). It is then restarted without the fault, and the end
 * state must be the one an uninterrupted run reaches:
 *   - the victim host is shredded, its blobs are gone (rows and bytes), it is refused;
 *   - exactly one KEK is left, newer than the one before; both keystore files agree;
 *   - no rotation is pending, no row lags behind the current KEK;
 *   - every survivor still unlocks and opens to its exact volume key;
 *   - the audit chain verifies; a second shred is a no-op.
 * A kill inside the shred transaction must leave nothing of the shred behind.
 */
import test, { type ExecutionContext } from 'ava'
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  enroll,
  generateHostKeys,
  openEscrowBlob,
  publicOf,
  requestUnlock,
  sealVolumeKey,
  watch,
} from '../../shared/client/host-client.ts'
import { fetchTransport, type Transport } from '../../shared/client/transport.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'
import type { HostKeys } from '../../shared/crypto/keys.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import { parseKekStatus, parseShredResult } from '../../shared/protocol/shred.ts'
import { totpCodeAt } from '../../server/approvals/totp.ts'
import { Keystore, backupPathOf } from '../../server/keys/keystore.ts'
import { SqliteStore } from '../../server/store/sqlite.ts'
import { initDataDirCli, startCliServer, type DataDir } from '../helpers/cli-server.ts'
import { redeemEnrollment, secretOf } from '../helpers/approval.ts'
import { tempDir } from '../helpers/tmp.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

const PASSPHRASE = 'crash test passphrase'

interface Host {
  name: string
  keys: HostKeys
  hostId: string
  vk: Uint8Array
}

interface World {
  d: DataDir
  alice: { token: string; secret: string }
  victim: Host
  survivors: Host[]
  victimCt: Uint8Array
  kekBefore: number
}

const nowSec = (): number => Math.floor(Date.now() / 1000)

async function admin(
  tr: Transport,
  token: string,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
  totp?: string,
): Promise<{ status: number; body: any }> {
  return (await tr({
    method,
    path: `/v1/admin${path}`,
    bearer: token,
    ...(body === undefined ? {} : { body }),
    ...(totp ? { headers: { 'x-unlockd-totp': totp } } : {}),
    timeoutMs: 60_000,
  })) as { status: number; body: any }
}

async function enrollOne(tr: Transport, token: string, name: string): Promise<Host> {
  const tok = await admin(tr, token, 'POST', '/tokens', { host: name, ttlSeconds: 600 })
  if (tok.status !== 201) throw new Error(JSON.stringify(tok.body))
  const keys = await generateHostKeys()
  const vk = randomBytes(64)
  const blob = await sealVolumeKey(vk, [publicOf(keys.sealing)])
  const r = await enroll(tr, {
    token: tok.body.token,
    name,
    keys,
    volumes: [{ name: 'data', kind: 'luks', blob }],
  })
  return { name, keys, hostId: r.hostId, vk }
}

/** A data dir with an operator that has TOTP, a victim and two survivors; the server stopped. */
async function world(t: ExecutionContext): Promise<World> {
  const root = await tempDir(t, 'unlockd-crash-')
  const dir = join(root, 'data')
  mkdirSync(dir, { mode: 0o700 })
  const d = await initDataDirCli(dir, PASSPHRASE)
  // Short long-polls, so a watch with nothing to report ends quickly.
  writeFileSync(join(dir, 'server.json'), JSON.stringify({ pollHold: '2s' }), { mode: 0o600 })
  const srv = await startCliServer(t, d)
  const tr = fetchTransport(srv.url)
  const op = await admin(tr, d.token, 'POST', '/operators', {
    name: 'alice',
    code: totpCodeAt(d.secret, nowSec()),
  })
  if (op.status !== 201) throw new Error(JSON.stringify(op.body))
  const enrolled = await redeemEnrollment({ transport: tr }, op.body.enrollment.code)
  if (enrolled.status !== 201) throw new Error(JSON.stringify(enrolled.body))
  const alice = {
    token: enrolled.body.token as string,
    secret: secretOf(enrolled.body.otpauthUri),
  }
  const victim = await enrollOne(tr, d.token, 'web-1')
  const survivors = [await enrollOne(tr, d.token, 'web-2'), await enrollOne(tr, d.token, 'web-3')]
  const kekBefore = parseKekStatus((await admin(tr, d.token, 'GET', '/kek')).body).current
  await srv.stop()
  const store = new SqliteStore(join(dir, 'unlockd.db'))
  const [row] = await store.tx((x) => x.listVolumes(victim.hostId))
  await store.close()
  if (!row) throw new Error('victim blob missing')
  return { d, alice, victim, survivors, victimCt: row.ct, kekBefore }
}

/** Start with the fault, fire the request that hits it, and make sure the process died by SIGKILL. */
async function crashAt(
  t: ExecutionContext,
  w: World,
  fault: string,
  request: (tr: Transport) => Promise<unknown>,
): Promise<void> {
  const srv = await startCliServer(t, w.d, { UNLOCKD_FAULT: fault })
  const tr = fetchTransport(srv.url)
  await request(tr).catch(() => undefined) // the connection dies with the server
  const how = await srv.exited
  t.is(how.signal, 'SIGKILL', `the server was killed at ${fault}:\n${srv.output()}`)
}

function shredVictim(w: World, stepOffset = 0) {
  return (tr: Transport) =>
    admin(tr, w.alice.token, 'POST', '/shred', {
      host: 'web-1',
      code: totpCodeAt(w.alice.secret, nowSec() + stepOffset),
    })
}

async function keystoreVersions(file: string, scratch: string): Promise<number[]> {
  const p = join(scratch, `ks-${Math.random().toString(36).slice(2)}.json`)
  copyFileSync(file, p)
  const ks = Keystore.open(p, PASSPHRASE)
  const v = ks.versions
  ks.close()
  return v
}

async function assertSurvivorsOpen(
  t: ExecutionContext,
  tr: Transport,
  hosts: Host[],
  boot: string,
): Promise<void> {
  for (const h of hosts) {
    const r = await requestUnlock(tr, {
      keys: h.keys,
      hostId: h.hostId,
      bootId: `${boot}-${h.name}`,
      volumes: [],
    })
    t.is(r.status, 'released', h.name)
    if (r.status === 'released')
      t.deepEqual(
        await openEscrowBlob(r.volumes[0]!.blob, h.keys.sealing),
        h.vk,
        `${h.name} opens to its exact key`,
      )
  }
}

/** Restart cleanly and check the end state of a completed shred of web-1. */
async function assertShredComplete(t: ExecutionContext, w: World): Promise<void> {
  const srv = await startCliServer(t, w.d)
  const tr = fetchTransport(srv.url)
  const host = await admin(tr, w.d.token, 'GET', '/hosts/web-1')
  t.is(host.body.state, 'shredded')
  t.deepEqual(host.body.volumes, [])
  const kek = parseKekStatus((await admin(tr, w.d.token, 'GET', '/kek')).body)
  t.is(kek.current, w.kekBefore + 1)
  t.deepEqual(kek.versions, [kek.current], 'only the new KEK is left')
  t.is(kek.pending, null)
  t.is(kek.behind, 0)
  await assertSurvivorsOpen(t, tr, w.survivors, 'boot-after')
  await rejectsWithCode(
    t,
    requestUnlock(tr, {
      keys: w.victim.keys,
      hostId: w.victim.hostId,
      bootId: 'boot-victim',
      volumes: [],
    }),
    'host_shredded',
  )
  t.deepEqual(
    await watch(tr, {
      keys: w.victim.keys,
      hostId: w.victim.hostId,
      bootId: 'boot-victim',
      holdMs: 1000,
    }),
    { order: 'shred', volumes: ['data'] },
  )
  const entries = (await admin(tr, w.d.token, 'GET', '/audit?limit=10000')).body
    .entries as AuditEntry[]
  t.true(entries.length > 0)
  t.true((await admin(tr, w.d.token, 'POST', '/audit/verify', {})).body.ok, 'audit chain intact')
  t.is(entries.filter((e) => e.action === 'host.shred').length, 1)
  t.true(entries.some((e) => e.action === 'kek.rotate'))
  // Idempotent after the crash too (a fresh TOTP step: the first one was spent).
  const again = await shredVictim(w, 30)(tr)
  t.is(again.status, 200, JSON.stringify(again.body))
  const res = parseShredResult(again.body)
  t.is(res.deletedBlobs, 0)
  t.true(res.targets[0]?.alreadyShredded)
  t.is(res.kek?.status, 'unchanged')
  await srv.stop()
  // Offline: both keystore files hold only the new KEK; the DB files no longer hold the blob.
  const scratch = await tempDir(t, 'unlockd-scratch-')
  const ksPath = join(w.d.dir, 'keystore.json')
  t.deepEqual(await keystoreVersions(ksPath, scratch), [w.kekBefore + 1])
  t.deepEqual(await keystoreVersions(backupPathOf(ksPath), scratch), [w.kekBefore + 1])
  const db = join(w.d.dir, 'unlockd.db')
  const bytes = Buffer.concat([
    readFileSync(db),
    existsSync(`${db}-wal`) ? readFileSync(`${db}-wal`) : Buffer.alloc(0),
  ])
  t.is(bytes.indexOf(Buffer.from(w.victimCt)), -1, 'blob bytes gone from the database files')
}

for (const fault of [
  'shred-after-delete',
  'shred-after-scrub',
  'keystore-between-copies',
  'rotate-after-addkek',
  'rotate-after-rewrap',
  'rotate-after-destroy',
]) {
  test(`SIGKILL at ${fault} during shred: the restart finishes it`, async (t) => {
    const w = await world(t)
    await crashAt(t, w, fault, shredVictim(w))
    await assertShredComplete(t, w)
  })
}

test('SIGKILL between the keystore copies while destroying the old KEK (resume of a crashed rotation): the restart finishes it', async (t) => {
  const w = await world(t)
  await crashAt(t, w, 'rotate-after-rewrap', shredVictim(w))
  // The resume runs before the server listens; it dies in destroyBelow, main file written, backup not.
  const dying = await startCliServer(
    t,
    w.d,
    { UNLOCKD_FAULT: 'keystore-between-copies' },
    { expectDeath: true },
  )
  t.is((await dying.exited).signal, 'SIGKILL')
  const scratch = await tempDir(t, 'unlockd-scratch-')
  const ksPath = join(w.d.dir, 'keystore.json')
  t.deepEqual(
    await keystoreVersions(ksPath, scratch),
    [w.kekBefore + 1],
    'main copy already without the old KEK',
  )
  t.deepEqual(
    await keystoreVersions(backupPathOf(ksPath), scratch),
    [w.kekBefore, w.kekBefore + 1],
    'backup still behind',
  )
  await assertShredComplete(t, w)
})

test('SIGKILL inside the shred transaction: nothing of the shred happened, and shredding again works', async (t) => {
  const w = await world(t)
  await crashAt(t, w, 'shred-in-tx', shredVictim(w))
  const srv = await startCliServer(t, w.d)
  const tr = fetchTransport(srv.url)
  t.is((await admin(tr, w.d.token, 'GET', '/hosts/web-1')).body.state, 'active')
  const kek = parseKekStatus((await admin(tr, w.d.token, 'GET', '/kek')).body)
  t.deepEqual(kek.versions, [w.kekBefore])
  t.is(kek.pending, null)
  await assertSurvivorsOpen(t, tr, [w.victim, ...w.survivors], 'boot-rolled-back')
  const entries = (await admin(tr, w.d.token, 'GET', '/audit?limit=10000')).body
    .entries as AuditEntry[]
  t.false(entries.some((e) => e.action === 'host.shred'))
  t.deepEqual(
    await watch(tr, {
      keys: w.victim.keys,
      hostId: w.victim.hostId,
      bootId: 'boot-victim',
      holdMs: 2000,
    }),
    { order: 'none', volumes: [] },
  )
  // The crash rolled the TOTP step back with the rest, so the same step is accepted again.
  const r = await shredVictim(w)(tr)
  t.is(r.status, 200, JSON.stringify(r.body))
  await srv.stop()
  await assertShredComplete(t, w)
})

for (const fault of [
  'rotate-after-addkek',
  'rotate-after-rewrap',
  'keystore-between-copies',
  'rotate-after-destroy',
]) {
  test(`SIGKILL at ${fault} during \`kek rotate\`: the restart finishes the rotation, nothing is lost`, async (t) => {
    const w = await world(t)
    // The admin's code one step on: its step at world() was spent by `operator add`.
    await crashAt(t, w, fault, (tr) =>
      admin(tr, w.d.token, 'POST', '/kek/rotate', {}, totpCodeAt(w.d.secret, nowSec() + 30)),
    )
    const srv = await startCliServer(t, w.d)
    const tr = fetchTransport(srv.url)
    const kek = parseKekStatus((await admin(tr, w.d.token, 'GET', '/kek')).body)
    t.deepEqual(kek.versions, [w.kekBefore + 1])
    t.is(kek.pending, null)
    t.is(kek.behind, 0)
    await assertSurvivorsOpen(t, tr, [w.victim, ...w.survivors], 'boot-rotated')
    // alice's TOTP secret was re-wrapped too: her code still verifies (a real shred needs it).
    const r = await shredVictim(w)(tr)
    t.is(r.status, 200, JSON.stringify(r.body))
    t.is(parseShredResult(r.body).kek?.current, w.kekBefore + 2)
    await srv.stop()
  })
}
