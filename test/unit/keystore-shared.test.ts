/**
 * One keystore file seen by two server instances (PostgreSQL deployments share it): a rotation
 * on one is followed by the other before it wraps anything, a level pair is not rewritten on
 * open, and a keystore re-sealed under another passphrase is never overwritten by a stale
 * instance (nor is a KEK it could not save handed out).
 */
import test from 'ava'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Keystore, backupPathOf } from '../../server/keys/keystore.ts'
import { throwsWithCode } from '../helpers/errors.ts'

const PASS = 'shared passphrase'

function path(t: { teardown(f: () => void): void }): string {
  const d = mkdtempSync(join(tmpdir(), 'unlockd-ks-shared-'))
  t.teardown(() => rmSync(d, { recursive: true, force: true }))
  return join(d, 'keystore.json')
}

test('opening a level pair does not rewrite it', (t) => {
  const p = path(t)
  Keystore.create(p, PASS, 1).close()
  const before = [readFileSync(p), readFileSync(backupPathOf(p))]
  Keystore.open(p, PASS).close()
  t.deepEqual([readFileSync(p), readFileSync(backupPathOf(p))], before)
})

test('instance B follows a rotation made by instance A', (t) => {
  const p = path(t)
  Keystore.create(p, PASS, 1).close()
  const a = Keystore.open(p, PASS)
  const b = Keystore.open(p, PASS)
  t.teardown(() => {
    a.close()
    b.close()
  })
  const v2 = a.addKek(2)
  t.is(b.currentVersion, v2, 'B wraps new blobs with the KEK A just made')
  t.deepEqual(Buffer.from(b.kek(v2)), Buffer.from(a.kek(v2)))
  a.destroyBelow(v2)
  t.deepEqual(b.versions, [v2])
  // B can rotate in turn (its view is the file's, so it does not clobber A's change).
  const v3 = b.addKek(3)
  t.is(a.currentVersion, v3)
  t.deepEqual(Keystore.open(p, PASS).versions, [v2, v3])
})

test('a keystore re-sealed under a new passphrase is not overwritten by a stale instance', (t) => {
  const p = path(t)
  Keystore.create(p, PASS, 1).close()
  const stale = Keystore.open(p, PASS)
  t.teardown(() => stale.close())
  const other = Keystore.open(p, PASS)
  other.changePassphrase('a different passphrase')
  other.close()
  throwsWithCode(t, () => stale.addKek(2), 'keystore_invalid')
  t.is(stale.currentVersion, 1, 'the KEK that could not be saved is not handed out')
  t.throws(() => stale.kek(2))
  t.throws(() => stale.destroyBelow(2 + 1))
  t.deepEqual(stale.versions, [1])
  const reopened = Keystore.open(p, 'a different passphrase')
  t.deepEqual(reopened.versions, [1])
  reopened.close()
})
