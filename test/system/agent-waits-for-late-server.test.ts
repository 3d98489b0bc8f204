/**
 * Story: the agent service starts before its escrow server is up. It reports
 * "waiting for escrow at URL (attempt N)" through sd-notify (checked on a NOTIFY_SOCKET bound
 * the way systemd binds it), keeps retrying with backoff, unlocks as soon as the server comes
 * up on the configured port, then sends READY=1.
 */
import { spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { freePort } from '../helpers/net.ts'
import { join } from 'node:path'
import { until } from '../helpers/wait.ts'
import { rootTest } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { makeLuksImage } from '../helpers/luks.ts'
import { startTestServer } from '../helpers/server.ts'
import { runCli, UNLOCKD } from '../helpers/cli.ts'
import { listen } from '../helpers/notify-socket.ts'

rootTest(
  'the agent waits for a server that comes up late, tells systemd, then unlocks',
  async (t) => {
    const dir = await tempDir(t)
    const opKey = new TextEncoder().encode('operator passphrase 2')
    const img = await makeLuksImage(dir, opKey)
    await writeFile(join(dir, 'k'), opKey, { mode: 0o600 })
    // Enroll against a first server instance, then stop it and note its data dir.
    const port = await freePort()
    const srv = await startTestServer(t)
    const tok = await srv.admin('POST', '/tokens', { host: 'late-1', ttlSeconds: 600 })
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
        'late-1',
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
    await srv.close()
    // The agent is configured for a port where nothing listens yet.
    const agentJson = join(cfg, 'agent.json')
    const conf = JSON.parse(await (await import('node:fs/promises')).readFile(agentJson, 'utf8'))
    conf.servers = [{ url: `http://127.0.0.1:${port}`, ca: null, spkiSha256: null }]
    await writeFile(agentJson, JSON.stringify(conf), { mode: 0o600 })

    const notifyPath = join(dir, 'notify')
    const rx = listen(t, notifyPath)
    const child = spawn(process.execPath, [UNLOCKD, 'agent', '--config', cfg, '--test'], {
      env: {
        PATH: process.env['PATH'] ?? '',
        NOTIFY_SOCKET: notifyPath,
        UNLOCKD_RUN_DIR: join(dir, 'run'),
        UNLOCKD_BACKOFF_MS: '200',
        UNLOCKD_ASK_PASSWORD_DIR: join(dir, 'ask'),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let log = ''
    child.stderr.on('data', (d: Buffer) => (log += d.toString()))
    t.teardown(() => {
      child.kill('SIGKILL')
    })

    const got: string[] = []
    const waitFor = (pred: () => boolean, what: string): Promise<void> =>
      until(
        () => {
          got.push(...rx.drain())
          return pred()
        },
        () => `${what}; datagrams: ${JSON.stringify(got)}; log: ${log}`,
        { intervalMs: 100 },
      )
    await waitFor(
      () =>
        got.some((d) =>
          /^STATUS=waiting for escrow at http:\/\/127\.0\.0\.1:\d+ \(attempt [2-9]\d*\)/.test(d),
        ),
      'a second "waiting for escrow" status',
    )
    t.false(got.includes('READY=1'), 'not ready while the volumes are locked')

    const late = await startTestServer(t, {
      dataDir: srv.dataDir,
      token: srv.token,
      listen: `127.0.0.1:${port}`,
    })
    t.truthy(late.url)
    await waitFor(() => got.includes('READY=1'), 'READY=1')
    t.true(
      got.some((d) => d.startsWith('STATUS=unlocked: data')),
      JSON.stringify(got),
    )
    t.regex(log, /waiting for escrow at http:\/\/127\.0\.0\.1:\d+ \(attempt 1\)/)

    child.kill('SIGTERM')
    await waitFor(() => got.includes('STOPPING=1'), 'STOPPING=1')
  },
  { bins: ['cryptsetup'] },
)
