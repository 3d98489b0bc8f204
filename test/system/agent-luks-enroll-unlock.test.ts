/**
 * Story: enroll a real LUKS2 image through the CLI, unlock it with the released key (test mode:
 * no device-mapper here), the operator's own keyslot keeps working, enrolling twice adds no
 * keyslot, and after the host is suspended the unlock is refused with its code.
 */
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { rootTest } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { makeLuksImage, luksMetadata } from '../helpers/luks.ts'
import { startTestServer } from '../helpers/server.ts'
import { runCli } from '../helpers/cli.ts'
import { testKey } from '../../agent/volumes/luks.ts'

rootTest(
  'enroll a LUKS2 image, unlock --test, idempotent re-enroll, refused after suspend',
  async (t) => {
    const srv = await startTestServer(t)
    const dir = await tempDir(t)
    const opKey = new TextEncoder().encode('operator passphrase 1')
    const img = await makeLuksImage(dir, opKey)
    const keyFile = join(dir, 'existing.key')
    await writeFile(keyFile, opKey, { mode: 0o600 })
    const tok = await srv.admin('POST', '/tokens', { host: 'web-1', ttlSeconds: 600 })
    const tokenFile = join(dir, 'token')
    await writeFile(tokenFile, tok.body.token, { mode: 0o600 })
    const cfg = join(dir, 'etc')
    const env = { UNLOCKD_LUKS_PBKDF: 'fast', UNLOCKD_RUN_DIR: join(dir, 'run') }

    const e1 = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--token-file',
        tokenFile,
        '--name',
        'web-1',
        '--config',
        cfg,
        '--luks',
        `${img}:data`,
        '--existing-key-file',
        keyFile,
        '--json',
      ],
      env,
    )
    t.is(e1.code, 0, e1.stderr)
    t.deepEqual(e1.json.added, ['data'])
    const slotsAfterFirst = Object.keys((await luksMetadata(img)).keyslots)
    t.is(slotsAfterFirst.length, 2)

    const e2 = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--name',
        'web-1',
        '--config',
        cfg,
        '--luks',
        `${img}:data`,
        '--existing-key-file',
        keyFile,
        '--json',
      ],
      env,
    )
    t.is(e2.code, 0, e2.stderr)
    t.false(e2.json.changed)
    t.deepEqual(
      Object.keys((await luksMetadata(img)).keyslots),
      slotsAfterFirst,
      'enrolling twice adds no keyslot',
    )

    const u = await runCli(['unlock', '--config', cfg, '--test', '--json'], env)
    t.is(u.code, 0, u.stderr)
    t.deepEqual(u.json.unlocked, ['data'])
    t.true(await testKey(img, opKey), "the operator's own keyslot still opens the volume")

    const st = await runCli(['status', '--config', cfg, '--json'], env)
    t.is(st.code, 0, st.stderr)
    t.is(st.json.volumes[0].lastResult, 'unlocked')

    t.is((await srv.admin('POST', '/hosts/web-1/suspend', { reason: 'incident 42' })).status, 200)
    const denied = await runCli(['unlock', '--config', cfg, '--test'], env)
    t.is(denied.code, 3, 'exit code 3: refused by the server')
    t.regex(denied.stderr, /host_suspended/)
    const st2 = await runCli(['status', '--config', cfg, '--json'], env)
    t.is(st2.json.volumes[0].code, 'host_suspended')
  },
  { bins: ['cryptsetup'] },
)
