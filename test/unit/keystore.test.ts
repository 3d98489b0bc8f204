/**
 * The KEK keystore: 0600 files, wrong passphrase refused, a torn main file recovered from the
 * backup, a lagging backup brought level, rotation and destruction in both copies, and
 * passphrase change without touching KEKs.
 */
import test from 'ava'
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs'
import { createCipheriv, randomBytes, scryptSync } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Keystore, backupPathOf } from '../../server/keys/keystore.ts'
import { blobAad, unwrap, wrap } from '../../server/keys/kek-wrap.ts'

function dir(t: { teardown(f: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'unlockd-ks-'))
  t.teardown(() => rmSync(d, { recursive: true, force: true }))
  return d
}

test('create writes a 0600 keystore and a backup; open needs the passphrase', (t) => {
  const p = join(dir(t), 'keystore.json')
  const ks = Keystore.create(p, 'passphrase-one', 100)
  t.is(statSync(p).mode & 0o777, 0o600)
  t.is(statSync(backupPathOf(p)).mode & 0o777, 0o600)
  const k1 = Buffer.from(ks.kek(1))
  ks.close()
  t.throws(() => Keystore.open(p, 'wrong passphrase'), { message: /wrong keystore passphrase/ })
  const again = Keystore.open(p, 'passphrase-one')
  t.deepEqual(Buffer.from(again.kek(1)), k1)
  t.throws(() => Keystore.create(p, 'passphrase-one', 1), { message: /already exists/ })
  t.throws(() => Keystore.create(join(dir(t), 'x.json'), 'short', 1), { message: /at least 8/ })
})

test('a torn main file is recovered from the backup and repaired', (t) => {
  const p = join(dir(t), 'keystore.json')
  Keystore.create(p, 'passphrase-one', 100).close()
  writeFileSync(p, '{"v":1,"kdf":') // torn write
  const ks = Keystore.open(p, 'passphrase-one')
  t.is(ks.currentVersion, 1)
  t.deepEqual(readFileSync(p), readFileSync(backupPathOf(p)), 'main file rewritten from the backup')
  rmSync(p)
  t.is(Keystore.open(p, 'passphrase-one').currentVersion, 1)
  t.true(existsSync(p))
})

test('rotation adds a KEK; destroyBelow removes the old one from both copies', (t) => {
  const p = join(dir(t), 'keystore.json')
  const ks = Keystore.create(p, 'passphrase-one', 100)
  const old = wrap(ks.kek(1), new TextEncoder().encode('blob'), blobAad('h', 'v', 1))
  t.is(ks.addKek(200), 2)
  t.deepEqual(ks.versions, [1, 2])
  t.deepEqual(ks.destroyBelow(2), [1])
  t.deepEqual(ks.versions, [2])
  const reopened = Keystore.open(p, 'passphrase-one')
  t.throws(() => reopened.kek(1), { message: /not in the keystore/ })
  t.throws(() => unwrap(reopened.kek(2), old.iv, old.ct, blobAad('h', 'v', 1)), {
    message: /failed authentication/,
  })
  // The backup alone (main deleted) has no v1 either.
  rmSync(p)
  t.deepEqual(Keystore.open(p, 'passphrase-one').versions, [2])
})

test('changing the passphrase keeps the KEKs', (t) => {
  const p = join(dir(t), 'keystore.json')
  const ks = Keystore.create(p, 'passphrase-one', 100)
  const k = Buffer.from(ks.kek(1))
  ks.changePassphrase('passphrase-two')
  t.throws(() => Keystore.open(p, 'passphrase-one'))
  t.deepEqual(Buffer.from(Keystore.open(p, 'passphrase-two').kek(1)), k)
})

test('the KEK layer binds host, volume and version', (t) => {
  const kek = new Uint8Array(32).fill(7)
  const w = wrap(kek, new TextEncoder().encode('secret blob'), blobAad('host-a', 'data', 3))
  t.is(
    new TextDecoder().decode(unwrap(kek, w.iv, w.ct, blobAad('host-a', 'data', 3))),
    'secret blob',
  )
  for (const aad of [
    blobAad('host-b', 'data', 3),
    blobAad('host-a', 'other', 3),
    blobAad('host-a', 'data', 4),
  ]) {
    t.throws(() => unwrap(kek, w.iv, w.ct, aad), { message: /failed authentication/ })
  }
})

test('the audit key is its own: KEK rotation, destruction and passphrase change keep it', (t) => {
  const p = join(dir(t), 'keystore.json')
  const ks = Keystore.create(p, 'passphrase-one', 100)
  const audit = Buffer.from(ks.auditKey)
  t.is(audit.byteLength, 32)
  t.notDeepEqual(audit, Buffer.from(ks.kek(1)))
  const v2 = ks.addKek(200)
  ks.destroyBelow(v2)
  ks.changePassphrase('passphrase-two')
  ks.close()
  const again = Keystore.open(p, 'passphrase-two')
  t.deepEqual(again.versions, [v2])
  t.deepEqual(Buffer.from(again.auditKey), audit)
  again.close()
})

test('a keystore written before audit keys gets one at its next open, kept from then on', (t) => {
  const p = join(dir(t), 'keystore.json')
  // The v1 file format without the audit field, sealed the way the keystore seals.
  const salt = randomBytes(16)
  const derived = scryptSync('passphrase-one', salt, 32, { N: 1 << 15, r: 8, p: 1, maxmem: 256e6 })
  const iv = randomBytes(12)
  const plain = {
    current: 1,
    keks: [{ version: 1, key: randomBytes(32).toString('base64url'), createdAt: 1 }],
  }
  const c = createCipheriv('aes-256-gcm', derived, iv)
  c.setAAD(Buffer.from('unlockd/keystore/v1'))
  const ct = Buffer.concat([c.update(JSON.stringify(plain)), c.final()])
  const file = {
    v: 1,
    kdf: { name: 'scrypt', N: 1 << 15, r: 8, p: 1, salt: salt.toString('base64url') },
    iv: iv.toString('base64url'),
    ct: ct.toString('base64url'),
    tag: c.getAuthTag().toString('base64url'),
  }
  writeFileSync(p, JSON.stringify(file))
  writeFileSync(backupPathOf(p), JSON.stringify(file))
  const ks = Keystore.open(p, 'passphrase-one')
  const audit = Buffer.from(ks.auditKey)
  t.deepEqual(Buffer.from(ks.kek(1)), Buffer.from(plain.keks[0]!.key, 'base64url'))
  ks.close()
  const again = Keystore.open(p, 'passphrase-one')
  t.deepEqual(Buffer.from(again.auditKey), audit, 'the key created at the first open was saved')
  again.close()
})
