/**
 * The optional plain-HTTP Tang listener (server.json `tangListener`) over real HTTP: off by
 * default, only the Tang routes on it, a root host reached by stock clevis with a tangd-style
 * URL (no /tang/NAME), the same policy path as the main listener (suspension), and invalid
 * configuration refused with a clear error.
 *
 * The clevis tests need clevis, jose and curl (Debian packages); without them they are skipped
 * loudly, unless CI is set, in which case that is a failure. The rest needs nothing. All traffic
 * goes to 127.0.0.1.
 */
import test from 'ava'
import { existsSync, writeFileSync } from 'node:fs'
import { findBin } from '../helpers/root.ts'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseServerConfig } from '../../shared/config/server.ts'
import { verifyAdvertisement } from '../../shared/tang/adv.ts'
import type { TangHostView } from '../../shared/protocol/tang.ts'
import { hashToken } from '../../server/escrow/secrets.ts'
import { startServer } from '../../server/main.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import { rejectsWithCode, throwsWithCode } from '../helpers/errors.ts'
import { run, type RunResult } from '../helpers/spawn.ts'
import { tempDir } from '../helpers/tmp.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const CLI = path.join(ROOT, 'dist/unlockd.mjs')

const missing = ['clevis', 'jose', 'curl'].filter((b) => findBin(b) === undefined)
const clevisTest = missing.length === 0 ? test.serial : test.skip
if (missing.length > 0) {
  const msg = `tang-listener: missing ${missing.join(', ')} (apt-get install -y clevis jose curl)`
  if (process.env['CI']) {
    test('clevis tools are installed (required in CI)', (t) => {
      t.fail(msg)
    })
  } else {
    console.warn(
      `\n${'!'.repeat(78)}\n!! SKIPPING Tang listener clevis tests: ${msg}\n${'!'.repeat(78)}\n`,
    )
  }
}

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

async function addTangHost(srv: TestServer, name: string): Promise<TangHostView> {
  const res = await srv.admin('POST', '/hosts', { name, tang: true }, { totp: true })
  if (res.status !== 201) throw new Error(`host add ${name}: ${JSON.stringify(res.body)}`)
  return res.body as TangHostView
}

function tangUrlOf(srv: TestServer): string {
  const u = srv.server.tangUrl
  if (u === undefined) throw new Error('the test server has no Tang listener')
  return u
}

async function clevisEncrypt(url: string, secret: string): Promise<string> {
  const r = await run('clevis', ['encrypt', 'tang', JSON.stringify({ url }), '-y'], {
    input: secret,
  })
  if (r.code !== 0) throw new Error(`clevis encrypt tang exited ${String(r.code)}: ${r.stderr}`)
  return r.stdout
}

function clevisDecrypt(jwe: string): Promise<RunResult> {
  return run('clevis', ['decrypt'], { input: jwe })
}

interface JweHeader {
  kid: string
  epk: { x: string; y: string }
  clevis: { tang: { url: string } }
}

function headerOf(jwe: string): JweHeader {
  return JSON.parse(Buffer.from(jwe.split('.')[0] ?? '', 'base64url').toString()) as JweHeader
}

async function rec(base: string, jwe: string): Promise<{ status: number; body: unknown }> {
  const h = headerOf(jwe)
  const res = await fetch(`${base}/rec/${h.kid}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/jwk+json' },
    body: JSON.stringify({ alg: 'ECMR', crv: 'P-521', kty: 'EC', x: h.epk.x, y: h.epk.y }),
  })
  const text = await res.text()
  try {
    return { status: res.status, body: JSON.parse(text) as unknown }
  } catch {
    return { status: res.status, body: text }
  }
}

async function tangAudit(
  srv: TestServer,
  host: string,
): Promise<{ action: string; detail: Record<string, unknown> }[]> {
  const res = await srv.admin('GET', '/audit?limit=10000')
  return (
    res.body.entries as { action: string; host: string | null; detail: Record<string, unknown> }[]
  ).filter((e) => e.host === host)
}

/** TCP ports this process listens on, from `ss` (empty when ss is missing). */
async function ownListeningPorts(): Promise<number[] | undefined> {
  const r = await run('ss', ['-Hltnp'])
  if (r.code !== 0) return undefined
  return r.stdout
    .split('\n')
    .filter((l) => l.includes(`pid=${process.pid},`))
    .map((l) => Number(/:(\d+)\s/.exec(l.split(/\s+/).slice(3, 4).join(' ') + ' ')?.[1]))
}

// ------------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------------

test('server.json tangListener: absent means off; listen and rootHost are parsed', (t) => {
  t.is(parseServerConfig('{}').tangListener, undefined)
  t.deepEqual(parseServerConfig('{"tangListener":{"listen":"0.0.0.0:80"}}').tangListener, {
    listen: '0.0.0.0:80',
  })
  t.deepEqual(
    parseServerConfig('{"tangListener":{"listen":"[::]:7500","rootHost":"nas-1"}}').tangListener,
    { listen: '[::]:7500', rootHost: 'nas-1' },
  )
})

test('server.json tangListener: every bad field is config_invalid naming the field and the fix', (t) => {
  const cases: [string, RegExp][] = [
    ['{"tangListener":true}', /tangListener: must be \{ "listen": "HOST:PORT"/],
    ['{"tangListener":{}}', /tangListener.*must be \{ "listen": "HOST:PORT"/],
    [
      '{"tangListener":{"listen":"80"}}',
      /tangListener\.listen: must be HOST:PORT, e\.g\. "0\.0\.0\.0:80"/,
    ],
    ['{"tangListener":{"listen":"0.0.0.0:99999"}}', /tangListener\.listen: port must be 0-65535/],
    [
      '{"tangListener":{"listen":"0.0.0.0:80","rootHost":"Bad Name"}}',
      /tangListener\.rootHost: must be the name of a Tang host/,
    ],
    [
      '{"tangListener":{"listen":"0.0.0.0:80","root":"nas-1"}}',
      /tangListener\.root: must be \{ "listen"/,
    ],
    [
      '{"listen":"0.0.0.0:8443","tangListener":{"listen":"0.0.0.0:8443"}}',
      /is already the main listener; give the Tang listener its own port/,
    ],
  ]
  for (const [text, message] of cases) {
    const err = throwsWithCode(
      t,
      () => parseServerConfig(text, '/etc/unlockd/server.json'),
      'config_invalid',
    )
    t.regex(err?.message ?? '', message, text)
    t.true(err?.message.startsWith('/etc/unlockd/server.json: '), text)
  }
})

test('unlockd server start refuses an invalid tangListener before asking for the passphrase', async (t) => {
  if (!existsSync(CLI)) return t.fail(`${CLI} is missing: run \`npm run build\` first`)
  const dir = await tempDir(t)
  writeFileSync(path.join(dir, 'server.json'), '{"tangListener":{"listen":"everywhere"}}\n', {
    mode: 0o600,
  })
  const r = await run(process.execPath, [CLI, 'server', 'start', '--data', dir], {
    env: { UNLOCKD_PASSPHRASE: undefined },
  })
  t.not(r.code, 0)
  t.regex(r.stderr, /server\.json: tangListener\.listen: must be HOST:PORT, e\.g\. "0\.0\.0\.0:80"/)
  t.notRegex(r.stderr, /passphrase/i)
})

// ------------------------------------------------------------------------------------------------
// Listener behaviour
// ------------------------------------------------------------------------------------------------

test.serial('off by default: one listener, and it is the main one', async (t) => {
  const before = await ownListeningPorts()
  const srv = await startTestServer(t)
  t.is(srv.server.tangUrl, undefined)
  const after = await ownListeningPorts()
  if (before === undefined || after === undefined) return t.fail('ss is needed (iproute2)')
  const added = after.filter((p) => !before.includes(p))
  t.deepEqual(added, [srv.server.port], 'the server opened exactly its main port')
})

test.serial(
  'the Tang listener serves only /tang/* (and the root host); everything else is 404',
  async (t) => {
    const srv = await startTestServer(t, {
      tangListener: { listen: '127.0.0.1:0', rootHost: 'nas-1' },
    })
    const tang = tangUrlOf(srv)
    t.not(srv.server.tangPort, srv.server.port)
    t.true(tang.startsWith('http://127.0.0.1:'))
    await addTangHost(srv, 'nas-1')

    // The main listener answers its routes ...
    t.is((await fetch(`${srv.url}/healthz`)).status, 200)
    const auth = { authorization: `Bearer ${srv.token}` }
    t.is((await fetch(`${srv.url}/v1/admin/hosts`, { headers: auth })).status, 200)
    // ... the Tang listener none of them, with or without credentials.
    for (const p of ['/healthz', '/metrics', '/v1/admin/hosts', '/approve', '/', '/tang', '/rec']) {
      const res = await fetch(`${tang}${p}`, { headers: auth })
      t.is(res.status, 404, p)
      t.like(await res.json(), { error: 'not_found' }, p)
    }
    for (const p of ['/v1/enroll', '/v1/unlock', '/v1/admin/hosts', '/rec/']) {
      const res = await fetch(`${tang}${p}`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: '{"name":"x","tang":true}',
      })
      t.is(res.status, 404, `POST ${p}`)
    }
    t.is((await srv.admin('GET', '/hosts')).body.hosts.length, 1, 'nothing was added through it')

    // The Tang routes: /tang/NAME as on the main listener, and the root host at the root.
    for (const base of [`${tang}/tang/nas-1`, tang, `${tang}/`]) {
      // `${tang}/` + `/adv` is the `//adv` clevis asks for when its URL ends in a slash.
      const res = await fetch(`${base}/adv`)
      t.is(res.status, 200, base)
      t.is(res.headers.get('content-type'), 'application/jose+json')
      const adv = await verifyAdvertisement(await res.text())
      t.is(adv.exchangeKeys.length, 1)
    }
    t.is((await fetch(`${tang}/tang/nobody/adv`)).status, 404)
  },
)

test.serial(
  'the Tang listener may listen off loopback; the main listener still may not',
  async (t) => {
    const srv = await startTestServer(t, { tangListener: { listen: '0.0.0.0:0' } })
    t.regex(srv.server.tangUrl ?? '', /^http:\/\/0\.0\.0\.0:\d+$/)
    await addTangHost(srv, 'wide-1')
    const res = await fetch(`http://127.0.0.1:${String(srv.server.tangPort)}/tang/wide-1/adv`)
    t.is(res.status, 200)
    // No root host configured: the root is not Tang.
    t.is((await fetch(`http://127.0.0.1:${String(srv.server.tangPort)}/adv`)).status, 404)

    const err = await t.throwsAsync(
      startServer(srv.deps, { listen: '0.0.0.0:0', tang: { listen: '127.0.0.1:0' } }),
    )
    t.is((err as { code?: string }).code, 'usage')
    t.regex(err?.message ?? '', /refusing plain HTTP on 0\.0\.0\.0/)
  },
)

test.serial(
  'a Tang listener that cannot bind stops the start with the setting to change',
  async (t) => {
    const srv = await startTestServer(t)
    const taken = `127.0.0.1:${String(srv.server.port)}`
    const err = await rejectsWithCode(
      t,
      startServer(srv.deps, { listen: '127.0.0.1:0', tang: { listen: taken } }),
      'config_invalid',
    )
    t.regex(
      err?.message ?? '',
      new RegExp(
        `cannot listen on ${taken} \\(EADDRINUSE\\): free that port or change tangListener\\.listen`,
      ),
    )
    // The server that was running keeps running.
    t.is((await fetch(`${srv.url}/healthz`)).status, 200)
  },
)

clevisTest(
  'root host: stock clevis with a tangd-style URL (no /tang/NAME) encrypts and decrypts; audited as a Tang release',
  async (t) => {
    const scrape = 'scrape-token-of-the-tang-listener-test'
    const srv = await startTestServer(t, {
      tangListener: { listen: '127.0.0.1:0', rootHost: 'old-tangd' },
      settings: { metricsTokenHash: await hashToken(scrape) },
    })
    const view = await addTangHost(srv, 'old-tangd')
    const root = tangUrlOf(srv)
    for (const url of [root, `${root}/`]) {
      const jwe = await clevisEncrypt(url, `secret via ${url}`)
      t.is(headerOf(jwe).clevis.tang.url, url, 'the binding keeps the tangd-style URL')
      t.is(headerOf(jwe).kid, view.keys[0]?.exchange ?? '')
      const dec = await clevisDecrypt(jwe)
      t.is(dec.code, 0, dec.stderr)
      t.is(dec.stdout, `secret via ${url}`)
    }
    // A binding made through the main listener's /tang/NAME decrypts through the root too:
    // the same host, the same keys.
    const viaMain = await clevisEncrypt(`${srv.url}/tang/old-tangd`, 'either door')
    t.is((await rec(root, viaMain)).status, 200)
    const releases = (await tangAudit(srv, 'old-tangd')).filter(
      (e) => e.action === 'unlock.release',
    )
    t.is(releases.length, 3)
    t.true(releases.every((e) => e.detail['via'] === 'tang'))
    // The main listener's /metrics counts the root host's recoveries with the others.
    const metrics = await fetch(`${srv.url}/metrics`, {
      headers: { authorization: `Bearer ${scrape}` },
    })
    t.is(metrics.status, 200)
    t.regex(await metrics.text(), /^unlockd_releases_total\{route="tang"\} 3$/m)
  },
)

clevisTest(
  'policy applies on the Tang listener: a suspended root host recovers nothing',
  async (t) => {
    const srv = await startTestServer(t, {
      tangListener: { listen: '127.0.0.1:0', rootHost: 'susp-1' },
    })
    await addTangHost(srv, 'susp-1')
    const root = tangUrlOf(srv)
    const jwe = await clevisEncrypt(root, 'held back')
    t.is((await clevisDecrypt(jwe)).stdout, 'held back')

    const s = await srv.admin('POST', '/hosts/susp-1/suspend', { reason: 'lost in transit' })
    t.is(s.status, 200, JSON.stringify(s.body))
    const denied = await clevisDecrypt(jwe)
    t.not(denied.code, 0)
    t.not(denied.stdout, 'held back')
    for (const base of [root, `${root}/tang/susp-1`]) {
      const r = await rec(base, jwe)
      t.is(r.status, 403, base)
      t.like(r.body, { error: 'host_suspended' }, base)
    }
    // The advertisement stays public, as tangd's is.
    t.is((await fetch(`${root}/adv`)).status, 200)
    t.true(
      (await tangAudit(srv, 'susp-1')).some(
        (e) =>
          e.action === 'unlock.deny' &&
          e.detail['code'] === 'host_suspended' &&
          e.detail['via'] === 'tang',
      ),
    )

    const r = await srv.admin('POST', '/hosts/susp-1/resume', undefined, { totp: true })
    t.is(r.status, 200, JSON.stringify(r.body))
    t.is((await clevisDecrypt(jwe)).stdout, 'held back')
  },
)

test.serial('the Tang listener and the main one share the per-address limiter', async (t) => {
  const srv = await startTestServer(t, {
    tangListener: { listen: '127.0.0.1:0', rootHost: 'lim-1' },
    settings: { hostRateLimit: { perSecond: 0.001, burst: 4 } },
  })
  await addTangHost(srv, 'lim-1')
  const tang = tangUrlOf(srv)
  t.is((await fetch(`${tang}/adv`)).status, 200)
  // Spend the rest of this address's burst on the main listener ...
  let spent = 0
  while ((await fetch(`${srv.url}/tang/lim-1/adv`)).status === 200 && spent < 10) spent += 1
  t.true(spent < 10, 'the main listener ran out of tokens')
  // ... and the Tang listener has none left either, under either URL form.
  t.is((await fetch(`${tang}/adv`)).status, 429)
  t.is((await fetch(`${tang}/tang/lim-1/adv`)).status, 429)
})
