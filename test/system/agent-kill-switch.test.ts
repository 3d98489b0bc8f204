/**
 * Story: a running agent holds its watch connection; an operator runs a shred (with TOTP) for
 * its host; the agent removes its fscrypt key (the files become unreadable), erases its LUKS2
 * header (luksDump shows no keyslots, no key opens it), deletes its host keys, reports, and
 * the report lands in the audit log. A restored copy of the host keys can no longer unlock.
 */
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, readdir, readFile, writeFile, cp } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { until } from '../helpers/wait.ts'
import { rootTest } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { makeLuksImage, luksMetadata } from '../helpers/luks.ts'
import { EXT4_NEEDS, mountExt4 } from '../helpers/ext4.ts'
import { startTestServer } from '../helpers/server.ts'
import { runCli, UNLOCKD } from '../helpers/cli.ts'
import { addOperator, asOperator, codeNow } from '../helpers/approval.ts'
import { keyStatus } from '../../agent/volumes/fscrypt.ts'
import { testKey } from '../../agent/volumes/luks.ts'

rootTest(
  'a running agent obeys a shred: fscrypt unreadable, LUKS header erased, host keys gone',
  async (t) => {
    const srv = await startTestServer(t)
    const fs = await mountExt4(t)
    const dir = await tempDir(t)
    const opKey = new TextEncoder().encode('operator key ks')
    const img = await makeLuksImage(dir, opKey)
    await writeFile(join(dir, 'k'), opKey, { mode: 0o600 })
    const secrets = join(fs.mnt, 'secrets')
    await mkdir(secrets)
    const tok = await srv.admin('POST', '/tokens', { host: 'doomed-1', ttlSeconds: 600 })
    const cfg = join(dir, 'etc')
    const env = {
      UNLOCKD_LUKS_PBKDF: 'fast',
      UNLOCKD_RUN_DIR: join(dir, 'run'),
      UNLOCKD_ENROLL_TOKEN: tok.body.token,
    }
    const e = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--name',
        'doomed-1',
        '--config',
        cfg,
        '--luks',
        `${img}:data`,
        '--existing-key-file',
        join(dir, 'k'),
        '--fscrypt',
        `${secrets}:secrets`,
      ],
      env,
    )
    t.is(e.code, 0, e.stderr)
    await writeFile(join(secrets, 'customer.db'), 'very private')
    const keyCopy = join(dir, 'image-copy-of-etc')
    await cp(cfg, keyCopy, { recursive: true }) // what a provider snapshot would hold

    const child = spawn(process.execPath, [UNLOCKD, 'agent', '--config', cfg, '--test'], {
      env: {
        PATH: process.env['PATH'] ?? '',
        UNLOCKD_RUN_DIR: join(dir, 'run'),
        UNLOCKD_BACKOFF_MS: '200',
        UNLOCKD_ASK_PASSWORD_DIR: join(dir, 'ask'),
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let log = ''
    child.stderr.on('data', (d: Buffer) => (log += d.toString()))
    const exited = new Promise<number | null>((resolve) =>
      child.on('exit', (code) => resolve(code)),
    )
    t.teardown(() => {
      child.kill('SIGKILL')
    })
    await until(
      () => /unlocked: /.test(log),
      () => `the agent to unlock: ${log}`,
    )
    t.regex(log, /unlocked: /)

    const alice = await addOperator(t, srv, 'alice')
    const shred = await asOperator(srv, alice, 'POST', '/shred', {
      host: 'doomed-1',
      code: codeNow(srv, alice),
    })
    t.is(shred.status, 200, JSON.stringify(shred.body))

    const code = await Promise.race([exited, sleep(120_000).then(() => 'timeout' as const)])
    t.not(code, 'timeout', `agent did not finish the shred: ${log}`)
    t.regex(log, /shred order received/)

    // fscrypt: key gone, names are ciphertext, content unreachable.
    const conf = JSON.parse(await readFile(join(keyCopy, 'agent.json'), 'utf8'))
    const fsVol = conf.volumes.find((v: { kind: string }) => v.kind === 'fscrypt')
    t.is(await keyStatus(fs.mnt, fsVol.keyId), 'absent')
    const names = await readdir(secrets)
    t.false(names.includes('customer.db'))
    await t.throwsAsync(readFile(join(secrets, names[0] as string)))
    // LUKS: no keyslots left; not even the operator's own key opens it.
    t.deepEqual(Object.keys((await luksMetadata(img)).keyslots), [])
    t.false(await testKey(img, opKey))
    // Host keys deleted.
    t.false(existsSync(join(cfg, 'signing.jwk')))
    t.false(existsSync(join(cfg, 'sealing.jwk')))
    // The report is in the audit log.
    await until(
      async () =>
        (await srv.admin('GET', '/audit')).body.entries.some(
          (x: { action: string }) => x.action === 'shred.report',
        ),
      'the shred report in the audit log',
    )
    const { body } = await srv.admin('GET', '/audit')
    const rep = body.entries.find((x: { action: string }) => x.action === 'shred.report')
    t.truthy(rep)
    t.is(rep.detail.event, 'shred_done')
    // A snapshot's copy of the host keys cannot get anything any more.
    const again = await runCli(['unlock', '--config', keyCopy, '--test'], {
      UNLOCKD_RUN_DIR: join(dir, 'run2'),
    })
    t.is(again.code, 3)
    t.regex(again.stderr, /host_shredded/)
  },
  { bins: ['cryptsetup', ...EXT4_NEEDS.bins] },
)
