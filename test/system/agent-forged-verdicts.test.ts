/**
 * Story: someone between the host and its escrow server (a TLS-terminating proxy, a hijacked
 * address) answers the agent with shred verdicts the real server never made: an unsigned
 * `host_shredded` to its unlock, and watch orders that are unsigned, signed with another
 * Ed25519 key, signed with the real key for another host, and signed with the real key for an
 * earlier request. The agent runs its kill switch on none of them: the LUKS2 image keeps its
 * keyslots, the fscrypt key stays, the host key files stay, and the log says why it refused.
 * (The real server's signed order still erases: test/system/agent-kill-switch.test.ts.)
 */
import { spawn } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { rootTest } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { makeLuksImage, luksMetadata } from '../helpers/luks.ts'
import { EXT4_NEEDS, mountExt4 } from '../helpers/ext4.ts'
import { startTestServer } from '../helpers/server.ts'
import { runCli, UNLOCKD } from '../helpers/cli.ts'
import { keyStatus } from '../../agent/volumes/fscrypt.ts'
import { testKey } from '../../agent/volumes/luks.ts'
import { signVerdict } from '../../shared/protocol/verdict.ts'
import type { PrivateOkpJwk } from '../../shared/crypto/keys.ts'

type Reply = { status: number; body: unknown }
/** Given the agent's signed watch payload (read, not verified) and the previous one, forge. */
type Forgery = (p: WatchClaims, prev: WatchClaims | undefined) => Promise<Reply>
interface WatchClaims {
  host: string
  nonce: string
  challenge: string
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let s = ''
    req.on('data', (d: Buffer) => (s += d.toString()))
    req.on('end', () => resolve(s))
    req.on('error', reject)
  })
}

function payloadOf(body: string): WatchClaims {
  const jws = (JSON.parse(body) as { jws: string }).jws
  const mid = jws.split('.')[1] as string
  const p = JSON.parse(Buffer.from(mid, 'base64url').toString('utf8')) as WatchClaims
  return { host: p.host, nonce: p.nonce, challenge: p.challenge }
}

function otherEd25519(): PrivateOkpJwk {
  const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' })
  return { kty: 'OKP', crv: 'Ed25519', x: jwk.x as string, d: jwk.d as string }
}

rootTest(
  'forged shred verdicts (unsigned, wrong key, other host, stale) never run the kill switch',
  async (t) => {
    const srv = await startTestServer(t)
    const fs = await mountExt4(t)
    const dir = await tempDir(t)
    const opKey = new TextEncoder().encode('operator key fv')
    const img = await makeLuksImage(dir, opKey)
    await writeFile(join(dir, 'k'), opKey, { mode: 0o600 })
    const secrets = join(fs.mnt, 'secrets')
    await mkdir(secrets)
    const tok = await srv.admin('POST', '/tokens', { host: 'target-1', ttlSeconds: 600 })
    const cfg = join(dir, 'etc')
    const e = await runCli(
      [
        'enroll',
        '--server',
        srv.url,
        '--name',
        'target-1',
        '--config',
        cfg,
        '--luks',
        `${img}:data`,
        '--existing-key-file',
        join(dir, 'k'),
        '--fscrypt',
        `${secrets}:secrets`,
      ],
      {
        UNLOCKD_LUKS_PBKDF: 'fast',
        UNLOCKD_RUN_DIR: join(dir, 'run'),
        UNLOCKD_ENROLL_TOKEN: tok.body.token,
      },
    )
    t.is(e.code, 0, e.stderr)
    await writeFile(join(secrets, 'customer.db'), 'very private')
    const conf = JSON.parse(await readFile(join(cfg, 'agent.json'), 'utf8'))
    t.is(conf.serverKeys.length, 1, 'enrollment pins the server key')
    const realKey = srv.deps.keystore.signingKey()
    const wrongKey = otherEd25519()
    const otherHost = 'A'.repeat(43)

    // The man in the middle: forwards to the real server, except for what it forges.
    const unlockForgeries: Reply[] = [
      { status: 403, body: { error: 'host_shredded', message: 'this host was shredded' } },
    ]
    const watchForgeries: Forgery[] = [
      async () => ({ status: 200, body: { order: 'shred', volumes: [] } }),
      async (p) => ({
        status: 200,
        body: {
          order: 'shred',
          volumes: [],
          verdict: await signVerdict(wrongKey, { ...p, verdict: 'shred', volumes: [], iat: 1 }),
        },
      }),
      async (p) => ({
        status: 200,
        body: {
          order: 'shred',
          volumes: [],
          verdict: await signVerdict(realKey, {
            ...p,
            host: otherHost,
            verdict: 'shred',
            volumes: [],
            iat: srv.deps.now(),
          }),
        },
      }),
      async (p, prev) => ({
        status: 200,
        body: {
          order: 'shred',
          volumes: [],
          verdict: await signVerdict(realKey, {
            host: p.host,
            nonce: (prev ?? p).nonce,
            challenge: (prev ?? p).challenge,
            verdict: 'shred',
            volumes: [],
            iat: srv.deps.now(),
          }),
        },
      }),
    ]
    let forgedWatches = 0
    let prevWatch: WatchClaims | undefined
    const mitm = createServer((req, res) => {
      void (async () => {
        const body = await readBody(req)
        let reply: Reply | undefined
        if (req.url === '/v1/unlock') reply = unlockForgeries.shift()
        if (req.url === '/v1/watch') {
          const p = payloadOf(body)
          const forge = watchForgeries.shift()
          if (forge) {
            reply = await forge(p, prevWatch)
            forgedWatches++
          }
          prevWatch = p
        }
        if (!reply) {
          const r = await fetch(srv.url + (req.url ?? '/'), {
            method: req.method ?? 'GET',
            headers: { 'content-type': 'application/json' },
            ...(req.method === 'POST' ? { body } : {}),
          })
          reply = { status: r.status, body: await r.json() }
        }
        res.writeHead(reply.status, { 'content-type': 'application/json' })
        res.end(JSON.stringify(reply.body))
      })().catch(() => {
        res.writeHead(502)
        res.end()
      })
    })
    await new Promise<void>((resolve) => mitm.listen(0, '127.0.0.1', resolve))
    t.teardown(() => mitm.close())
    const mitmUrl = `http://127.0.0.1:${(mitm.address() as AddressInfo).port}`
    conf.servers = [{ url: mitmUrl, ca: null, spkiSha256: null }]
    await writeFile(join(cfg, 'agent.json'), JSON.stringify(conf, null, 2), { mode: 0o600 })

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
    t.teardown(() => {
      child.kill('SIGKILL')
    })
    const refusals = (): number =>
      log.split('\n').filter((l) => l.includes(`refused an unsigned shred verdict from ${mitmUrl}`))
        .length
    for (let i = 0; i < 600 && (forgedWatches < 4 || refusals() < 5); i++) await sleep(100)
    // One more watch round after the last forgery: the agent is still alive and watching.
    await sleep(1000)
    t.is(child.exitCode, null, `the agent must keep running: ${log}`)
    t.is(forgedWatches, 4, log)
    t.true(refusals() >= 5, log) // the unlock verdict and four watch orders
    t.regex(log, /unlocked: /)
    t.regex(log, /not signed by a pinned server key/)
    t.regex(log, /made for another host/)
    t.regex(log, /made for another request/)
    t.regex(log, /watch: refused an unsigned shred verdict from .*; not running the kill switch/)
    t.notRegex(log, /shred order received|signed verdict\): running/)

    // Nothing was erased.
    const fsVol = conf.volumes.find((v: { kind: string }) => v.kind === 'fscrypt')
    t.is(await keyStatus(fs.mnt, fsVol.keyId), 'present')
    t.is(await readFile(join(secrets, 'customer.db'), 'utf8'), 'very private')
    t.true(Object.keys((await luksMetadata(img)).keyslots).length > 0)
    t.true(await testKey(img, opKey))
    t.true(existsSync(join(cfg, 'signing.jwk')))
    t.true(existsSync(join(cfg, 'sealing.jwk')))
  },
  { bins: ['cryptsetup', ...EXT4_NEEDS.bins] },
)
