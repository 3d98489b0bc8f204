/**
 * The agent's contact points with the rest of the system, each with real parts:
 * - systemd ask-password: an ask.* file like systemd-cryptsetup writes, answered through
 *   systemd-reply-password on a datagram socket we bind as systemd would;
 * - --key-stdout for initramfs keyscripts (the key opens the volume, and a TTY is refused);
 * - a failure half-way through enrollment leaves the volume with its old keys only;
 * - a dead server among several does not stop or delay the unlock (servers asked in parallel);
 * - TLS: a pinned CA works, a wrong CA is a one-line tls_pin_mismatch.
 */
import { spawn, spawnSync } from 'node:child_process'
import { readFile, writeFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { until } from '../helpers/wait.ts'
import { rootTest } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { makeLuksImage, luksMetadata } from '../helpers/luks.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import { runCli, UNLOCKD, UNLOCKD_AGENT } from '../helpers/cli.ts'
import { listen } from '../helpers/notify-socket.ts'
import { testKey } from '../../agent/volumes/luks.ts'
import type { ExecutionContext } from 'ava'

async function enrolledLuks(
  t: ExecutionContext,
  srv: TestServer,
  name = 'web-1',
): Promise<{
  dir: string
  cfg: string
  img: string
  env: Record<string, string>
  opKey: Uint8Array
}> {
  const dir = await tempDir(t)
  const opKey = new TextEncoder().encode(`operator key for ${name}`)
  const img = await makeLuksImage(dir, opKey)
  await writeFile(join(dir, 'k'), opKey, { mode: 0o600 })
  const tok = await srv.admin('POST', '/tokens', { host: name, ttlSeconds: 600 })
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
      name,
      '--config',
      cfg,
      '--luks',
      `${img}:data`,
      '--existing-key-file',
      join(dir, 'k'),
    ],
    env,
  )
  t.is(e.code, 0, e.stderr)
  return { dir, cfg, img, env, opKey }
}

rootTest(
  'the agent answers a systemd ask-password request for its LUKS volume',
  async (t) => {
    const srv = await startTestServer(t)
    const h = await enrolledLuks(t, srv)
    const askDir = join(h.dir, 'ask')
    await mkdir(askDir)
    const sock = join(askDir, 'sck.test')
    const rx = listen(t, sock)
    const child = spawn(process.execPath, [UNLOCKD, 'agent', '--config', h.cfg, '--test'], {
      env: {
        PATH: process.env['PATH'] ?? '',
        UNLOCKD_RUN_DIR: join(h.dir, 'run'),
        UNLOCKD_ASK_PASSWORD_DIR: askDir,
        UNLOCKD_BACKOFF_MS: '200',
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    let log = ''
    child.stderr.on('data', (d: Buffer) => (log += d.toString()))
    t.teardown(() => {
      child.kill('SIGKILL')
    })
    // What systemd-cryptsetup writes when it needs a passphrase for this device.
    await writeFile(
      join(askDir, 'ask.test'),
      `[Ask]\nPID=1\nSocket=${sock}\nAcceptCached=1\nEcho=0\nNotAfter=0\nMessage=Please enter passphrase for disk data\nId=cryptsetup:${h.img}\n`,
    )
    let got: string[] = []
    await until(
      () => {
        got = rx.drain()
        return got.length > 0
      },
      () => `the agent's reply on the ask-password socket: ${log}`,
      { intervalMs: 100 },
    )
    t.is(got.length, 1, log)
    const reply = got[0] as string
    t.true(reply.startsWith('+'), 'systemd-reply-password sends "+" followed by the password')
    // systemd-reply-password sends "+", the password and a terminating NUL, which systemd strips.
    t.true(
      await testKey(h.img, new TextEncoder().encode(reply.slice(1).replace(/\0$/, ''))),
      'the answered passphrase opens the volume',
    )
    t.regex(log, /answered password request for data/)
  },
  { bins: ['cryptsetup'] },
)

rootTest(
  '--key-stdout prints exactly the key that opens the volume, for initramfs keyscripts',
  async (t) => {
    const srv = await startTestServer(t)
    const h = await enrolledLuks(t, srv)
    const r = await runCli(
      ['unlock', '--config', h.cfg, '--volume', 'data', '--key-stdout'],
      { UNLOCKD_RUN_DIR: join(h.dir, 'run') },
      { bundle: UNLOCKD_AGENT },
    )
    t.is(r.code, 0, r.stderr)
    t.is(r.raw.byteLength, 64, 'a 64-character printable passphrase, no newline')
    t.regex(r.stdout, /^[A-Za-z0-9_-]{64}$/)
    t.true(await testKey(h.img, new Uint8Array(r.raw)))
    const two = await runCli(['unlock', '--config', h.cfg, '--key-stdout'], h.env)
    t.is(two.code, 2, 'needs exactly one --volume')
  },
  { bins: ['cryptsetup'] },
)

rootTest(
  'a failure half-way through enrollment leaves the volume with its old keys only',
  async (t) => {
    const srv = await startTestServer(t)
    const dir = await tempDir(t)
    const opKey = new TextEncoder().encode('operator key x')
    const img = await makeLuksImage(dir, opKey)
    await writeFile(join(dir, 'k'), opKey, { mode: 0o600 })
    const before = await luksMetadata(img)
    // A bad token makes the server refuse after the keyslot was added locally.
    const env = {
      UNLOCKD_LUKS_PBKDF: 'fast',
      UNLOCKD_RUN_DIR: join(dir, 'run'),
      UNLOCKD_ENROLL_TOKEN: 'ue_' + 'q'.repeat(43),
    }
    const r = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--name',
        'x-1',
        '--config',
        join(dir, 'etc'),
        '--luks',
        `${img}:data`,
        '--existing-key-file',
        join(dir, 'k'),
      ],
      env,
    )
    t.is(r.code, 3, r.stderr)
    t.regex(r.stderr, /token_invalid/)
    t.deepEqual(
      Object.keys((await luksMetadata(img)).keyslots),
      Object.keys(before.keyslots),
      'the added keyslot was removed again',
    )
    t.true(await testKey(img, opKey))
    // And the server being down entirely: same outcome, exit code 4.
    const down = await runCli(
      [
        'enroll',
        '--server',
        'http://127.0.0.1:9',
        '--name',
        'x-1',
        '--config',
        join(dir, 'etc'),
        '--luks',
        `${img}:data`,
        '--existing-key-file',
        join(dir, 'k'),
      ],
      env,
    )
    t.is(down.code, 4, down.stderr)
    t.deepEqual(Object.keys((await luksMetadata(img)).keyslots), Object.keys(before.keyslots))
  },
  { bins: ['cryptsetup'] },
)

rootTest(
  'a dead server among several does not stop the unlock',
  async (t) => {
    const srv = await startTestServer(t)
    const h = await enrolledLuks(t, srv)
    const path = join(h.cfg, 'agent.json')
    const conf = JSON.parse(await readFile(path, 'utf8'))
    // 192.0.2.1 (TEST-NET) is never contacted by this test: the agent's own config is only read;
    // use a closed loopback port for the dead server instead.
    conf.servers = [{ url: 'http://127.0.0.1:9', ca: null, spkiSha256: null }, ...conf.servers]
    await writeFile(path, JSON.stringify(conf), { mode: 0o600 })
    const u = await runCli(['unlock', '--config', h.cfg, '--test', '--json'], h.env)
    t.is(u.code, 0, u.stderr)
    t.deepEqual(u.json.unlocked, ['data'])
  },
  { bins: ['cryptsetup'] },
)

rootTest(
  'TLS: a pinned CA works and a wrong CA gives tls_pin_mismatch in one line',
  async (t) => {
    const dir = await tempDir(t)
    const mk = (name: string): void => {
      const r = spawnSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:P-256',
          '-nodes',
          '-days',
          '2',
          '-subj',
          '/CN=127.0.0.1',
          '-addext',
          'subjectAltName=IP:127.0.0.1',
          '-keyout',
          join(dir, `${name}.key`),
          '-out',
          join(dir, `${name}.crt`),
        ],
        { encoding: 'utf8' },
      )
      if (r.status !== 0) throw new Error(r.stderr)
    }
    mk('good')
    mk('other')
    const srv = await startTestServer(t, {
      tls: { cert: join(dir, 'good.crt'), key: join(dir, 'good.key') },
    })
    t.regex(srv.url, /^https:/)
    const opKey = new TextEncoder().encode('operator key tls')
    const img = await makeLuksImage(dir, opKey)
    await writeFile(join(dir, 'k'), opKey, { mode: 0o600 })
    const tok = await srv.admin('POST', '/tokens', { host: 'tls-1', ttlSeconds: 600 })
    const env = {
      UNLOCKD_LUKS_PBKDF: 'fast',
      UNLOCKD_RUN_DIR: join(dir, 'run'),
      UNLOCKD_ENROLL_TOKEN: tok.body.token,
    }
    const bad = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--ca',
        join(dir, 'other.crt'),
        '--name',
        'tls-1',
        '--config',
        join(dir, 'etc-bad'),
        '--luks',
        `${img}:data`,
        '--existing-key-file',
        join(dir, 'k'),
      ],
      env,
    )
    t.is(bad.code, 4)
    t.regex(bad.stderr, /tls_pin_mismatch/)
    const good = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--ca',
        join(dir, 'good.crt'),
        '--name',
        'tls-1',
        '--config',
        join(dir, 'etc'),
        '--luks',
        `${img}:data`,
        '--existing-key-file',
        join(dir, 'k'),
      ],
      env,
    )
    t.is(good.code, 0, good.stderr)
    const u = await runCli(['unlock', '--config', join(dir, 'etc'), '--test', '--json'], env)
    t.is(u.code, 0, u.stderr)
    // Operator CLI over TLS with UNLOCKD_CA.
    const hosts = await runCli(['hosts', '--json'], {
      UNLOCKD_URL: srv.url,
      UNLOCKD_TOKEN: srv.token,
      UNLOCKD_CA: join(dir, 'good.crt'),
    })
    t.is(hosts.code, 0, hosts.stderr)
    t.is(hosts.json[0].name, 'tls-1')
  },
  { bins: ['cryptsetup', 'openssl'] },
)
