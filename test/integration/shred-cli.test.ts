/**
 * The issue-5 commands through the real `unlockd` bundle: `shred` (dry run, confirmation, TOTP,
 * what it cannot do), `recovery-key create` + `escrow export` + `recover` (round trip to the
 * exact volume key, offline), and `keystore passwd` (old passphrase refused, the server starts
 * with the new one, data intact, and a running server does not undo the change).
 */
import test from 'ava'
import { copyFileSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import {
  enroll,
  generateHostKeys,
  openEscrowBlob,
  publicOf,
  requestUnlock,
  sealVolumeKey,
} from '../../shared/client/host-client.ts'
import { fetchTransport } from '../../shared/client/transport.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'
import { parseEscrowExport, parseKekStatus } from '../../shared/protocol/shred.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import { Keystore, backupPathOf } from '../../server/keys/keystore.ts'
import { startTestServer } from '../helpers/server.ts'
import { totpCodeAt } from '../../server/approvals/totp.ts'
import { addOperator, codeNow, enrollHost, testClock } from '../helpers/approval.ts'
import { runCli } from '../helpers/cli.ts'
import { initDataDirCli, startCliServer } from '../helpers/cli-server.ts'
import { tempDir } from '../helpers/tmp.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

const mode = (p: string): number => statSync(p).mode & 0o777

test('unlockd shred: dry run changes nothing; no terminal and no --yes refuses; --yes --code shreds and says what it cannot do', async (t) => {
  const clock = testClock()
  const srv = await startTestServer(t, { now: clock.now })
  const alice = await addOperator(t, srv, 'alice')
  const h = await enrollHost(t, srv, 'web-1')
  const env = { UNLOCKD_URL: srv.url, UNLOCKD_TOKEN: alice.token }

  const usage = await runCli(['shred', '--host', 'web-1', '--all'], env)
  t.is(usage.code, 2, usage.stderr)

  const dry = await runCli(['shred', '--host', 'web-1', '--dry-run'], env)
  t.is(dry.code, 0, dry.stderr)
  t.regex(dry.stdout, /Would destroy \(dry run, nothing changed\)/)
  t.regex(dry.stdout, /web-1 .*would be marked shredded; escrow blobs: data/)
  t.regex(dry.stdout, /What shred cannot do:/)
  const dryAll = await runCli(['shred', '--all', '--dry-run', '--json'], env)
  t.is(dryAll.code, 0, dryAll.stderr)
  t.deepEqual(
    dryAll.json.targets.map((x: { host: string }) => x.host),
    ['web-1'],
  )
  t.is((await srv.admin('GET', '/hosts/web-1')).body.state, 'active')

  clock.advance(30)
  const noYes = await runCli(['shred', '--host', 'web-1'], env, {
    stdin: `${codeNow(srv, alice)}\n`,
  })
  t.not(noYes.code, 0)
  t.regex(noYes.stderr, /destructive_needs_force/)
  t.is(
    (await srv.admin('GET', '/hosts/web-1')).body.state,
    'active',
    'refused before anything was sent',
  )

  const noCode = await runCli(['shred', '--host', 'web-1', '--yes'], env)
  t.is(noCode.code, 2, 'the code is required without a terminal')

  const done = await runCli(
    ['shred', '--host', 'web-1', '--yes', '--reason', 'decommissioned'],
    env,
    { stdin: `${codeNow(srv, alice)}\n` },
  )
  t.is(done.code, 0, done.stderr)
  t.regex(done.stdout, /Deleted 1 escrow blob\(s\)/)
  t.regex(done.stdout, /KEK rotated: every blob left is wrapped by KEK v2; destroyed v1/)
  t.regex(
    done.stdout,
    /What shred cannot do:[\s\S]*RAM of a running host[\s\S]*added by hand[\s\S]*keystore AND the database/,
  )
  t.is((await srv.admin('GET', '/hosts/web-1')).body.state, 'shredded')
  await rejectsWithCode(
    t,
    requestUnlock(srv.transport, {
      keys: h.keys,
      hostId: h.hostId,
      bootId: 'boot-0001',
      volumes: [],
    }),
    'host_shredded',
  )

  const status = await runCli(['kek', 'status', '--json'], env)
  t.is(status.code, 0, status.stderr)
  t.deepEqual(parseKekStatus(status.json).versions, [2])
  const bare = await runCli(['kek', 'rotate'], env, { stdin: '' })
  t.is(bare.code, 2, 'kek rotate needs a code')
  clock.advance(30)
  const rot = await runCli(['kek', 'rotate'], env, { stdin: `${codeNow(srv, alice)}\n` })
  t.is(rot.code, 0, rot.stderr)
  t.regex(rot.stdout, /KEK rotated to v3; destroyed v2/)
})

test('recovery-key create + escrow export + recover: offline round trip to the exact volume keys', async (t) => {
  const srv = await startTestServer(t)
  const dir = await tempDir(t)
  const rk = join(dir, 'recovery.jwk')
  const created = await runCli(['recovery-key', 'create', '--out', rk, '--json'])
  t.is(created.code, 0, created.stderr)
  t.is(mode(rk), 0o600)
  t.truthy(JSON.parse(readFileSync(rk, 'utf8')).d, 'the file holds the private key')
  t.is(created.json.publicKey.d, undefined, 'only the public half is printed')
  const again = await runCli(['recovery-key', 'create', '--out', rk])
  t.not(again.code, 0, 'never overwrites a key file')

  // A host seals each volume key to itself and to the recovery key.
  const keys = await generateHostKeys()
  const vkData = randomBytes(64)
  const vkHome = randomBytes(64)
  const recipients = [publicOf(keys.sealing), created.json.publicKey]
  const tok = await srv.admin('POST', '/tokens', { host: 'web-1', ttlSeconds: 600 })
  await enroll(srv.transport, {
    token: tok.body.token,
    name: 'web-1',
    keys,
    volumes: [
      { name: 'data', kind: 'luks', blob: await sealVolumeKey(vkData, recipients) },
      { name: 'home', kind: 'fscrypt', blob: await sealVolumeKey(vkHome, recipients) },
      // Enrolled without a recovery key: only the host keys open it, so it is never exported.
      {
        name: 'scratch',
        kind: 'luks',
        blob: await sealVolumeKey(randomBytes(64), [publicOf(keys.sealing)]),
      },
    ],
  })

  const env = { UNLOCKD_URL: srv.url, UNLOCKD_TOKEN: srv.token }
  const exportFile = join(dir, 'web-1.escrow.json')
  const ex = await runCli(
    ['escrow', 'export', '--host', 'web-1', '--out', exportFile, '--json'],
    env,
    { stdin: `${await srv.adminCode()}\n` },
  )
  t.is(ex.code, 0, ex.stderr)
  t.is(mode(exportFile), 0o600)
  const doc = parseEscrowExport(JSON.parse(readFileSync(exportFile, 'utf8')))
  t.deepEqual(
    doc.volumes.map((v) => v.name),
    ['data', 'home'],
  )
  t.deepEqual(doc.notExported, ['scratch'])
  const recoveryKid = created.json.kid as string
  for (const v of doc.volumes) {
    t.deepEqual(v.recipients, [recoveryKid], 'sealed to the recovery key only')
    t.deepEqual(
      v.blob.recipients.map((r) => r.header.kid),
      [recoveryKid],
    )
    // Every host key file (a disk image of the host) opens nothing in the export.
    for (const k of [keys.sealing, keys.signing])
      await rejectsWithCode(t, openEscrowBlob(v.blob, k), 'decryption_failed')
  }
  const hostKeyFiles = [
    [join(dir, 'host-sealing.jwk'), keys.sealing],
    [join(dir, 'host-signing.jwk'), keys.signing],
  ] as const
  for (const [file, key] of hostKeyFiles) {
    writeFileSync(file, JSON.stringify(key), { mode: 0o600 })
    for (const volume of ['data', 'home']) {
      const r = await runCli([
        'recover',
        '--blob',
        exportFile,
        '--volume',
        volume,
        '--recovery-key',
        file,
        '--out',
        join(dir, `host-${volume}.bin`),
      ])
      t.not(r.code, 0, `${file} must not open ${volume}`)
      t.false(existsSync(join(dir, `host-${volume}.bin`)))
    }
  }
  const entries = (await srv.admin('GET', '/audit?limit=10000')).body.entries as AuditEntry[]
  t.true(entries.some((e) => e.action === 'escrow.export' && e.actor === 'operator:admin'))

  // recover: to a 0600 file...
  const vkFile = join(dir, 'vk.bin')
  const rec = await runCli([
    'recover',
    '--blob',
    exportFile,
    '--volume',
    'data',
    '--recovery-key',
    rk,
    '--out',
    vkFile,
    '--json',
  ])
  t.is(rec.code, 0, rec.stderr)
  t.is(mode(vkFile), 0o600)
  t.deepEqual(new Uint8Array(readFileSync(vkFile)), vkData)
  // ...or to a pipe.
  const piped = await runCli([
    'recover',
    '--blob',
    exportFile,
    '--volume',
    'home',
    '--recovery-key',
    rk,
  ])
  t.is(piped.code, 0, piped.stderr)
  t.deepEqual(new Uint8Array(piped.raw), vkHome)
  // A bare blob works as well.
  const bare = join(dir, 'home.jwe.json')
  writeFileSync(bare, JSON.stringify(doc.volumes[1]!.blob))
  const fromBare = await runCli(['recover', '--blob', bare, '--recovery-key', rk])
  t.deepEqual(new Uint8Array(fromBare.raw), vkHome)

  const ambiguous = await runCli([
    'recover',
    '--blob',
    exportFile,
    '--recovery-key',
    rk,
    '--out',
    join(dir, 'x.bin'),
  ])
  t.is(ambiguous.code, 2, 'two volumes: --volume is required')
  const otherKey = join(dir, 'other.jwk')
  t.is((await runCli(['recovery-key', 'create', '--out', otherKey])).code, 0)
  const wrong = await runCli([
    'recover',
    '--blob',
    exportFile,
    '--volume',
    'data',
    '--recovery-key',
    otherKey,
    '--out',
    join(dir, 'y.bin'),
  ])
  t.not(wrong.code, 0)
  t.regex(wrong.stderr, /decryption_failed/)
  const exists = await runCli([
    'recover',
    '--blob',
    exportFile,
    '--volume',
    'data',
    '--recovery-key',
    rk,
    '--out',
    vkFile,
  ])
  t.not(exists.code, 0, 'never overwrites an existing file')

  // Once the host is shredded there is nothing to export.
  const alice = await addOperator(t, srv, 'alice')
  const sh = await srv.transport({
    method: 'POST',
    path: '/v1/admin/shred',
    bearer: alice.token,
    body: { host: 'web-1', code: codeNow(srv, alice) },
  })
  t.is(sh.status, 200, JSON.stringify(sh.body))
  const gone = await runCli(['escrow', 'export', '--host', 'web-1'], env, {
    stdin: `${await srv.adminCode()}\n`,
  })
  t.is(gone.code, 3)
  t.regex(gone.stderr, /host_shredded/)
})

test('keystore passwd: the old passphrase is refused, the server starts with the new one, data intact; a running server does not undo it', async (t) => {
  const root = await tempDir(t)
  const dir = join(root, 'data')
  const d = await initDataDirCli(dir, 'old passphrase 1')
  const srv = await startCliServer(t, d)
  const tr = fetchTransport(srv.url)
  const tok = await tr({
    method: 'POST',
    path: '/v1/admin/tokens',
    bearer: d.token,
    body: { host: 'web-1', ttlSeconds: 600 },
  })
  const keys = await generateHostKeys()
  const vk = randomBytes(64)
  const e = await enroll(tr, {
    token: (tok.body as { token: string }).token,
    name: 'web-1',
    keys,
    volumes: [
      { name: 'data', kind: 'luks', blob: await sealVolumeKey(vk, [publicOf(keys.sealing)]) },
    ],
  })
  await srv.stop()

  const newFile = join(root, 'new.pass')
  writeFileSync(newFile, 'new passphrase 2\n', { mode: 0o600 })
  const same = await runCli([
    'keystore',
    'passwd',
    '--data',
    dir,
    '--passphrase-file',
    d.passFile,
    '--new-passphrase-file',
    d.passFile,
  ])
  t.is(same.code, 2, same.stderr)
  const wrongOld = await runCli([
    'keystore',
    'passwd',
    '--data',
    dir,
    '--passphrase-file',
    newFile,
    '--new-passphrase-file',
    newFile,
  ])
  t.not(wrongOld.code, 0)
  t.regex(wrongOld.stderr, /keystore_locked/)
  const ok = await runCli([
    'keystore',
    'passwd',
    '--data',
    dir,
    '--passphrase-file',
    d.passFile,
    '--new-passphrase-file',
    newFile,
    '--json',
  ])
  t.is(ok.code, 0, ok.stderr)

  // Both copies refuse the old passphrase and open with the new one, with the same KEKs.
  const ksPath = join(dir, 'keystore.json')
  for (const f of [ksPath, backupPathOf(ksPath)]) {
    const p = join(root, `probe-${Math.random().toString(36).slice(2)}.json`)
    copyFileSync(f, p)
    t.throws(() => Keystore.open(p, 'old passphrase 1'), { any: true })
    const ks = Keystore.open(p, 'new passphrase 2')
    t.deepEqual(ks.versions, [1])
    ks.close()
  }
  const refused = await startCliServer(t, d, {}, { expectDeath: true })
  t.not((await refused.exited).code, 0, 'the old passphrase no longer starts the server')
  t.regex(refused.output(), /keystore_locked/)

  const srv2 = await startCliServer(t, { dir, passFile: newFile })
  const tr2 = fetchTransport(srv2.url)
  const un = await requestUnlock(tr2, { keys, hostId: e.hostId, bootId: 'boot-0001', volumes: [] })
  t.is(un.status, 'released')
  if (un.status === 'released')
    t.deepEqual(await openEscrowBlob(un.volumes[0]!.blob, keys.sealing), vk)

  // Changing it again while this server runs: the server must not write its stale copy back.
  const newer = join(root, 'newer.pass')
  writeFileSync(newer, 'newer passphrase 3\n', { mode: 0o600 })
  t.is(
    (
      await runCli([
        'keystore',
        'passwd',
        '--data',
        dir,
        '--passphrase-file',
        newFile,
        '--new-passphrase-file',
        newer,
      ])
    ).code,
    0,
  )
  const rot = await tr2({
    method: 'POST',
    path: '/v1/admin/kek/rotate',
    bearer: d.token,
    body: {},
    headers: { 'x-unlockd-totp': totpCodeAt(d.secret, Math.floor(Date.now() / 1000)) },
  })
  t.not(
    rot.status,
    200,
    'a rotation would have re-sealed the keystore under the replaced passphrase',
  )
  t.is((rot.body as { error?: string }).error, 'keystore_invalid')
  await srv2.stop()
  const srv3 = await startCliServer(t, { dir, passFile: newer })
  const tr3 = fetchTransport(srv3.url)
  // The interrupted rotation had journalled itself; the start with the right passphrase finished it.
  const status = parseKekStatus(
    (await tr3({ method: 'GET', path: '/v1/admin/kek', bearer: d.token })).body,
  )
  t.deepEqual(status.versions, [2])
  t.is(status.pending, null)
  const un3 = await requestUnlock(tr3, { keys, hostId: e.hostId, bootId: 'boot-0002', volumes: [] })
  t.is(un3.status, 'released')
  if (un3.status === 'released')
    t.deepEqual(await openEscrowBlob(un3.volumes[0]!.blob, keys.sealing), vk)
  await srv3.stop()
})
