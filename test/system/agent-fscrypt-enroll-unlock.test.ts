/**
 * Story: enroll an fscrypt directory on a loop-mounted ext4 image through the CLI, write a file,
 * remove the key (names and content unreadable), `unlockd unlock`, read the file back byte for
 * byte. A non-empty directory and a filesystem without the encrypt feature get clear errors.
 */
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { rootTest } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { EXT4_NEEDS, mountExt4 } from '../helpers/ext4.ts'
import { startTestServer } from '../helpers/server.ts'
import { runCli } from '../helpers/cli.ts'
import { removeKey } from '../../agent/volumes/fscrypt.ts'

rootTest(
  'enroll an fscrypt directory, lock it, unlock it through the escrow, read back byte for byte',
  async (t) => {
    const srv = await startTestServer(t)
    const fs = await mountExt4(t)
    const dir = await tempDir(t)
    const secrets = join(fs.mnt, 'secrets')
    await mkdir(secrets)
    const tok = await srv.admin('POST', '/tokens', { host: 'db-1', ttlSeconds: 600 })
    const env = { UNLOCKD_ENROLL_TOKEN: tok.body.token, UNLOCKD_RUN_DIR: join(dir, 'run') }
    const cfg = join(dir, 'etc')
    const e = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--name',
        'db-1',
        '--config',
        cfg,
        '--fscrypt',
        `${secrets}:secrets`,
        '--json',
      ],
      env,
    )
    t.is(e.code, 0, e.stderr)

    const content = randomBytes(4096)
    await writeFile(join(secrets, 'payroll.csv'), content)
    const config = JSON.parse(await readFile(join(cfg, 'agent.json'), 'utf8'))
    t.is(await removeKey(fs.mnt, config.volumes[0].keyId, { allUsers: true }), 'removed')
    const locked = await readdir(secrets)
    t.false(locked.includes('payroll.csv'), 'file names are ciphertext while locked')
    await t.throwsAsync(readFile(join(secrets, locked[0] as string)))

    const u = await runCli(['unlock', '--config', cfg, '--json'], env)
    t.is(u.code, 0, u.stderr)
    t.deepEqual(u.json.unlocked, ['secrets'])
    t.deepEqual(await readFile(join(secrets, 'payroll.csv')), content)

    // Second run: nothing to do.
    const again = await runCli(['unlock', '--config', cfg, '--json'], env)
    t.deepEqual(again.json.already, ['secrets'])
  },
  EXT4_NEEDS,
)

rootTest(
  'enrolling a non-empty directory or a filesystem without encrypt says how to fix it',
  async (t) => {
    const srv = await startTestServer(t)
    const enc = await mountExt4(t)
    const plain = await mountExt4(t, { encrypt: false })
    const dir = await tempDir(t)
    const full = join(enc.mnt, 'full')
    await mkdir(full)
    await writeFile(join(full, 'x'), 'x')
    await mkdir(join(plain.mnt, 'd'))
    const tok = await srv.admin('POST', '/tokens', { host: 'db-2', ttlSeconds: 600 })
    const env = { UNLOCKD_ENROLL_TOKEN: tok.body.token, UNLOCKD_RUN_DIR: join(dir, 'run') }
    const a = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--name',
        'db-2',
        '--config',
        join(dir, 'etc'),
        '--fscrypt',
        `${full}:full`,
      ],
      env,
    )
    t.is(a.code, 1)
    t.regex(a.stderr, /not empty.*move its files out/)
    const b = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--name',
        'db-2',
        '--config',
        join(dir, 'etc'),
        '--fscrypt',
        `${join(plain.mnt, 'd')}:d`,
      ],
      env,
    )
    t.is(b.code, 1)
    t.regex(b.stderr, /tune2fs -O encrypt/)
    // Nothing was consumed: the token still enrolls once a valid directory is given.
    await mkdir(join(enc.mnt, 'ok'))
    const c = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--name',
        'db-2',
        '--config',
        join(dir, 'etc'),
        '--fscrypt',
        `${join(enc.mnt, 'ok')}:ok`,
      ],
      env,
    )
    t.is(c.code, 0, c.stderr)
  },
  EXT4_NEEDS,
)
