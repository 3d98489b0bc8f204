/**
 * What a shred destroys, proven against copies taken just before it (a stolen disk image or database backup).
 *
 * Before the shred we copy everything an attacker could later hold: the database file with its
 * WAL, the keystore and its backup, and the host's private key JWKs (a disk image of the host).
 * After the shred:
 *  - the KEK that wrapped the blob is gone from the live keystore AND its backup;
 *  - the pre-shred database copy's wrapped blob does not unwrap with any KEK the server still
 *    holds, so the host keys on an old disk image plus an old database backup recover nothing;
 *  - the live database files (main + WAL) no longer contain the wrapped blob's bytes;
 *  - the live server refuses the host, and a survivor still opens to its exact key.
 *
 * What shred cannot do, asserted here so that it stays documented: a pre-shred copy of the
 * keystore file, together with the passphrase and a pre-shred copy of the database, DOES
 * recover the volume key. Those are copies unlockd does not control; the operator must destroy
 * them (or change the passphrase after each backup and forget the old one). See SHRED_CANNOT.
 */
import test from 'ava'
import { copyFileSync, existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { openEscrowBlob, requestUnlock } from '../../shared/client/host-client.ts'
import { fromUtf8 } from '../../shared/crypto/bytes.ts'
import { parseEscrowBlob } from '../../shared/crypto/blob.ts'
import type { HostKeys } from '../../shared/crypto/keys.ts'
import { parseShredResult } from '../../shared/protocol/shred.ts'
import { blobAad, unwrap } from '../../server/keys/kek-wrap.ts'
import { Keystore, backupPathOf } from '../../server/keys/keystore.ts'
import { SqliteStore } from '../../server/store/sqlite.ts'
import type { VolumeRow } from '../../server/store/store.ts'
import { SHRED_CANNOT } from '../../server/escrow/shred.ts'
import { TEST_PASSPHRASE, startTestServer } from '../helpers/server.ts'
import { addOperator, asOperator, codeNow, enrollHost, testClock } from '../helpers/approval.ts'
import { tempDir } from '../helpers/tmp.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

function contains(hay: Buffer, needle: Uint8Array): boolean {
  return hay.indexOf(Buffer.from(needle)) >= 0
}

/** The bytes of a SQLite database as they sit on disk: main file plus WAL. */
function dbBytes(path: string): Buffer {
  return Buffer.concat([
    readFileSync(path),
    existsSync(`${path}-wal`) ? readFileSync(`${path}-wal`) : Buffer.alloc(0),
  ])
}

/** Open one keystore file on its own (in a scratch dir, so the original is never touched). */
function openAlone(file: string, scratch: string, passphrase = TEST_PASSPHRASE): Keystore {
  const p = join(scratch, `ks-${Math.random().toString(36).slice(2)}.json`)
  copyFileSync(file, p)
  return Keystore.open(p, passphrase)
}

async function rowsIn(dbPath: string, hostId: string): Promise<VolumeRow[]> {
  const s = new SqliteStore(dbPath)
  try {
    return await s.tx((t) => t.listVolumes(hostId))
  } finally {
    await s.close()
  }
}

async function recoverWith(ks: Keystore, row: VolumeRow, keys: HostKeys): Promise<Uint8Array> {
  const plain = unwrap(
    ks.kek(row.kekVersion),
    row.iv,
    row.ct,
    blobAad(row.hostId, row.name, row.kekVersion),
  )
  return openEscrowBlob(parseEscrowBlob(JSON.parse(fromUtf8(plain))), keys.sealing)
}

test('after a shred, no copy unlockd controls recovers the volume key (and pre-shred outside copies still would)', async (t) => {
  const clock = testClock()
  const srv = await startTestServer(t, { now: clock.now })
  const alice = await addOperator(t, srv, 'alice')
  const victim = await enrollHost(t, srv, 'web-1')
  const survivor = await enrollHost(t, srv, 'web-2')
  const dbPath = join(srv.dataDir, 'unlockd.db')
  const ksPath = join(srv.dataDir, 'keystore.json')

  // --- copies taken just before the shred -------------------------------------------------
  const before = await tempDir(t, 'unlockd-before-')
  copyFileSync(dbPath, join(before, 'unlockd.db'))
  if (existsSync(`${dbPath}-wal`)) copyFileSync(`${dbPath}-wal`, join(before, 'unlockd.db-wal'))
  copyFileSync(ksPath, join(before, 'keystore.json'))
  copyFileSync(backupPathOf(ksPath), join(before, 'keystore.json.bak'))
  const hostKeysOnOldImage: HostKeys = JSON.parse(JSON.stringify(victim.keys))
  const [liveRow] = await srv.deps.store.tx((tx) => tx.listVolumes(victim.hostId))
  if (!liveRow) throw new Error('victim has no stored blob')
  const oldKek = liveRow.kekVersion
  // The search below means something: the wrapped bytes are in the files before the shred,
  // and the KEK layer means the blob's own JWE ciphertext never is.
  t.true(
    contains(dbBytes(dbPath), liveRow.ct),
    'wrapped blob is in the live files before the shred',
  )
  const jweCiphertext = parseEscrowBlob(
    JSON.parse(
      fromUtf8(
        unwrap(
          srv.deps.keystore.kek(oldKek),
          liveRow.iv,
          liveRow.ct,
          blobAad(victim.hostId, 'data', oldKek),
        ),
      ),
    ),
  ).ciphertext
  t.false(dbBytes(dbPath).includes(jweCiphertext), 'the JWE is stored only under the KEK layer')

  // --- shred -------------------------------------------------------------------------------
  clock.advance(30)
  const r = await asOperator(srv, alice, 'POST', '/shred', {
    host: 'web-1',
    code: codeNow(srv, alice),
  })
  t.is(r.status, 200, JSON.stringify(r.body))
  const res = parseShredResult(r.body)
  t.is(res.kek?.status, 'rotated')
  t.true(res.kek?.destroyed.includes(oldKek))

  // --- what unlockd controls no longer recovers it -----------------------------------------
  const scratch = await tempDir(t, 'unlockd-scratch-')
  const liveMain = openAlone(ksPath, scratch)
  const liveBackup = openAlone(backupPathOf(ksPath), scratch)
  t.teardown(() => {
    liveMain.close()
    liveBackup.close()
  })
  t.false(liveMain.versions.includes(oldKek), 'old KEK absent from keystore.json')
  t.false(liveBackup.versions.includes(oldKek), 'old KEK absent from keystore.json.bak')
  t.true(
    liveMain.versions.every((v) => v > oldKek) && liveBackup.versions.every((v) => v > oldKek),
    'no KEK at or below the shredded one survives',
  )

  // The old database copy (old disk image's host keys at hand) vs every KEK the server still holds.
  const [oldRow] = await rowsIn(join(before, 'unlockd.db'), victim.hostId)
  if (!oldRow) throw new Error('the pre-shred copy lacks the blob')
  t.deepEqual(oldRow.ct, liveRow.ct)
  for (const ks of [liveMain, liveBackup]) {
    for (const v of ks.versions) {
      for (const aadVersion of new Set([oldRow.kekVersion, v])) {
        t.throws(
          () =>
            unwrap(
              ks.kek(v),
              oldRow.iv,
              oldRow.ct,
              blobAad(oldRow.hostId, oldRow.name, aadVersion),
            ),
          { any: true },
          `KEK v${v} must not unwrap the old blob`,
        )
      }
    }
    t.throws(() => ks.kek(oldRow.kekVersion), { any: true })
  }
  await t.throwsAsync(recoverWith(liveMain, oldRow, hostKeysOnOldImage))

  // The live database files hold neither the row nor its bytes (secure_delete + VACUUM + checkpoint).
  t.deepEqual(await srv.deps.store.tx((tx) => tx.listVolumes(victim.hostId)), [])
  const liveBytes = dbBytes(dbPath)
  t.false(
    contains(liveBytes, liveRow.ct),
    'wrapped blob bytes are gone from unlockd.db and its WAL',
  )
  t.false(contains(liveBytes, liveRow.ct.subarray(0, 32)), 'not even a fragment of it')
  t.false(contains(liveBytes, liveRow.iv), 'nor its IV')

  // The live server refuses the host keys from the old image.
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: hostKeysOnOldImage,
      hostId: victim.hostId,
      bootId: 'boot-0001',
      volumes: [],
    }),
    'host_shredded',
  )

  // A survivor still opens to its exact key.
  const un = await requestUnlock(srv.transport, {
    keys: survivor.keys,
    hostId: survivor.hostId,
    bootId: 'boot-0002',
    volumes: [],
  })
  t.is(un.status, 'released')
  if (un.status === 'released')
    t.deepEqual(await openEscrowBlob(un.volumes[0]!.blob, survivor.keys.sealing), survivor.vk)

  // --- what shred cannot do: copies it does not control -------------------------------------
  // A pre-shred keystore copy + the passphrase + a pre-shred DB copy + the old host keys still
  // recover the key. The live post-shred database with that old keystore does not (no row).
  const oldKeystore = openAlone(join(before, 'keystore.json'), scratch)
  t.teardown(() => oldKeystore.close())
  t.deepEqual(
    await recoverWith(oldKeystore, oldRow, hostKeysOnOldImage),
    victim.vk,
    "outside copies of keystore + DB are the operator's to destroy",
  )
  t.deepEqual(await rowsIn(dbPath, victim.hostId), [])
  // Without the passphrase the old keystore copy is useless.
  t.throws(() => openAlone(join(before, 'keystore.json'), scratch, 'not the passphrase'), {
    any: true,
  })
  // ...and that limit is what the operator is told.
  t.true(SHRED_CANNOT.some((line) => line.includes('keystore AND the database')))
  t.deepEqual(res.cannot, SHRED_CANNOT)
})
