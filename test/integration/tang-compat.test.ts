/**
 * Tang / clevis wire compatibility of shared/tang:
 *  1. our client against Debian's real tangd (socat, one tangd per connection);
 *  2. stock `clevis encrypt tang` / `clevis decrypt` against a tiny Hono Tang built from our
 *     adv.ts + mcr.ts.
 * Needs tang, clevis, jose, socat and curl (Debian packages). Without them the tests are skipped
 * loudly, unless CI is set, in which case that is a failure.
 * All traffic goes to 127.0.0.1.
 */
import { findBin } from '../helpers/root.ts'
import { freePort } from '../helpers/net.ts'
import { mustRun, run } from '../helpers/spawn.ts'
import { throwsWithCode } from '../helpers/errors.ts'
import test from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { accessSync, constants as fsConstants } from 'node:fs'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { serve } from '@hono/node-server'
import { Hono } from 'hono'
import { isUnlockdError, UnlockdError } from '../../shared/errors.ts'
import {
  ADV_CONTENT_TYPE,
  buildAdvertisement,
  generateExchangeKey,
  generateSigningKey,
  jwkThumbprint,
  publicJwk,
  REC_CONTENT_TYPE,
  sha224,
  thumbprintIndex,
  THUMBPRINT_ALGS,
  verifyAdvertisement,
  type TangAdvertisement,
} from '../../shared/tang/adv.ts'
import {
  fetchTangAdvertisement,
  inspectTangJwe,
  tangDecrypt,
  tangEncrypt,
  type FetchLike,
  type FetchResponseLike,
} from '../../shared/tang/client.ts'
import {
  createEcmrServer,
  parseEcPrivateJwk,
  provision,
  recover,
  startRecovery,
  type EcmrServer,
  type EcPrivateJwk,
} from '../../shared/tang/mcr.ts'

// ------------------------------------------------------------------------------------------------
// Tool discovery and skip policy
// ------------------------------------------------------------------------------------------------

const TANGD = '/usr/libexec/tangd'
const TANGD_KEYGEN = '/usr/libexec/tangd-keygen'

function executable(file: string): boolean {
  try {
    accessSync(file, fsConstants.X_OK)
    return true
  } catch {
    return false
  }
}

const missing = [
  ...[TANGD, TANGD_KEYGEN].filter((f) => !executable(f)),
  ...['clevis', 'jose', 'socat', 'curl'].filter((b) => findBin(b) === undefined),
]
const inCi = Boolean(process.env['CI'])
const toolTest = missing.length === 0 ? test.serial : test.skip

if (missing.length > 0) {
  const msg = `tang-compat: missing ${missing.join(', ')} (apt-get install -y tang clevis jose socat curl)`
  if (inCi) {
    test('tang/clevis tools are installed (required in CI)', (t) => {
      t.fail(msg)
    })
  } else {
    console.warn(`SKIPPING tang/clevis compatibility tests: ${msg}`)
    test.skip(`tang/clevis compatibility tests [SKIPPED: ${msg}]`, () => {})
  }
}

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

/**
 * A FetchLike over node:http with a fresh connection per request (`agent: false`), like clevis's
 * curl. Loopback only.
 */
const httpFetch: FetchLike = (url, init) =>
  new Promise<FetchResponseLike>((resolve, reject) => {
    const u = new URL(url)
    if (u.hostname !== '127.0.0.1') {
      reject(new Error(`refusing non-loopback URL ${url}`))
      return
    }
    const body = init.body === undefined ? undefined : Buffer.from(init.body)
    const req = http.request(
      {
        host: '127.0.0.1',
        port: Number(u.port),
        path: `${u.pathname}${u.search}`,
        method: init.method,
        agent: false,
        headers: {
          ...init.headers,
          ...(body === undefined ? {} : { 'Content-Length': String(body.length) }),
        },
        timeout: 60_000,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8')
          const status = res.statusCode ?? 0
          resolve({ ok: status >= 200 && status < 300, status, text: () => Promise.resolve(text) })
        })
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error('timeout')))
    req.on('error', reject)
    req.end(body)
  })

/** Raw POST returning status, content type and the exact body text. */
async function rawPost(
  url: string,
  body: string,
): Promise<{ status: number; contentType: string | undefined; text: string }> {
  return new Promise((resolve, reject) => {
    const u = new URL(url)
    const req = http.request(
      {
        host: '127.0.0.1',
        port: Number(u.port),
        path: u.pathname,
        method: 'POST',
        agent: false,
        headers: {
          'Content-Type': REC_CONTENT_TYPE,
          'Content-Length': String(Buffer.byteLength(body)),
        },
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            contentType: res.headers['content-type'],
            text: Buffer.concat(chunks).toString('utf8'),
          }),
        )
        res.on('error', reject)
      },
    )
    req.on('error', reject)
    req.end(body)
  })
}

async function waitForAdv(url: string): Promise<void> {
  let last: unknown
  for (let i = 0; i < 100; i++) {
    try {
      const res = await httpFetch(`${url}/adv`, { method: 'GET', headers: {} })
      if (res.ok) return
      last = new Error(`HTTP ${res.status}`)
    } catch (e) {
      last = e
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`tang at ${url} did not come up: ${String(last)}`)
}

const dec = (b: Uint8Array): string => Buffer.from(b).toString('utf8')

// ------------------------------------------------------------------------------------------------
// Fixtures: real tangd (socat) and our Hono tang
// ------------------------------------------------------------------------------------------------

interface RealTang {
  url: string
  dir: string
  proc: ChildProcess
  /** The tangd key files, parsed. */
  files: { name: string; jwk: EcPrivateJwk }[]
}

interface OurTang {
  url: string
  close: () => Promise<void>
  signing: EcPrivateJwk[]
  exchange: EcPrivateJwk
  adv: TangAdvertisement
  hits: { adv: number; rec: number }
}

let real: RealTang | undefined
let ours: OurTang | undefined

async function startRealTang(): Promise<RealTang> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'unlockd-tangd-'))
  await mustRun(TANGD_KEYGEN, [dir])
  const port = await freePort()
  const proc = spawn(
    'socat',
    [`TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`, `EXEC:${TANGD} ${dir}`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  proc.stderr?.resume()
  const url = `http://127.0.0.1:${port}`
  await waitForAdv(url)
  const files: { name: string; jwk: EcPrivateJwk }[] = []
  for (const name of (await readdir(dir)).filter((n) => n.endsWith('.jwk'))) {
    files.push({
      name,
      jwk: parseEcPrivateJwk(JSON.parse(await readFile(path.join(dir, name), 'utf8')) as unknown),
    })
  }
  return { url, dir, proc, files }
}

/** A Tang in Hono from our pure modules: GET /adv, /adv/, /adv/{thp}; POST /rec/{kid}. */
async function startOurTang(): Promise<OurTang> {
  const signing = [generateSigningKey(), generateSigningKey()]
  const exchange = generateExchangeKey()
  const adv = await buildAdvertisement({ signing, exchange: [exchange] })
  const signIndex = await thumbprintIndex(signing)
  const exchIndex = await thumbprintIndex([exchange])
  const servers = new Map<EcPrivateJwk, EcmrServer>([[exchange, await createEcmrServer(exchange)]])
  const hits = { adv: 0, rec: 0 }
  const app = new Hono()
  const advBody = JSON.stringify(adv)
  const sendAdv = (body: string): Response =>
    new Response(body, { status: 200, headers: { 'Content-Type': ADV_CONTENT_TYPE } })
  app.get('/adv', () => {
    hits.adv++
    return sendAdv(advBody)
  })
  app.get('/adv/', () => {
    hits.adv++
    return sendAdv(advBody)
  })
  app.get('/adv/:thp', async (c) => {
    hits.adv++
    const key = signIndex.get(c.req.param('thp'))
    if (key === undefined) return c.body(null, 404)
    return sendAdv(
      JSON.stringify(
        await buildAdvertisement({ signing, exchange: [exchange], extraSigning: [key] }),
      ),
    )
  })
  app.post('/rec/:kid', async (c) => {
    hits.rec++
    const key = exchIndex.get(c.req.param('kid'))
    const srv = key === undefined ? undefined : servers.get(key)
    if (srv === undefined) return c.body(null, 404)
    let req: unknown
    try {
      req = JSON.parse(await c.req.text()) as unknown
    } catch {
      return c.body(null, 400)
    }
    try {
      const rep = await srv.recover(req)
      return new Response(JSON.stringify(rep), {
        status: 200,
        headers: { 'Content-Type': REC_CONTENT_TYPE },
      })
    } catch (e) {
      if (isUnlockdError(e, 'bad_request')) return c.body(null, 400)
      throw e
    }
  })
  const server = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 })
  await new Promise<void>((resolve) =>
    server.listening ? resolve() : server.once('listening', () => resolve()),
  )
  const addr = server.address()
  if (typeof addr !== 'object' || addr === null) throw new Error('no address')
  return {
    url: `http://127.0.0.1:${addr.port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
    signing,
    exchange,
    adv,
    hits,
  }
}

test.before(async () => {
  if (missing.length > 0) return
  real = await startRealTang()
  ours = await startOurTang()
})

test.after.always(async () => {
  if (real !== undefined) {
    // Let socat reap the last per-connection tangd children before it goes (PID 1 here does not reap).
    await new Promise((r) => setTimeout(r, 200))
    real.proc.kill('SIGTERM')
    await rm(real.dir, { recursive: true, force: true })
  }
  if (ours !== undefined) await ours.close()
})

function need<T>(v: T | undefined): T {
  if (v === undefined) throw new Error('fixture not started')
  return v
}

// ------------------------------------------------------------------------------------------------
// Pure checks (no tools needed)
// ------------------------------------------------------------------------------------------------

test('sha224 matches node:crypto', (t) => {
  for (const len of [0, 1, 55, 56, 63, 64, 65, 200, 1000]) {
    const data = new Uint8Array(len).map((_, i) => (i * 31 + 7) & 0xff)
    t.is(
      Buffer.from(sha224(data)).toString('hex'),
      createHash('sha224').update(data).digest('hex'),
      `length ${len}`,
    )
  }
})

test('createEcmrServer (WebCrypto) agrees with recover (noble), and unblinding recovers the ECDH point', async (t) => {
  const exch = generateExchangeKey()
  const pub = publicJwk(exch)
  const srv = await createEcmrServer(exch)
  for (let i = 0; i < 3; i++) {
    const p = provision(pub)
    const r = startRecovery(p.epk, pub)
    const a = recover(exch, r.request)
    const b = await srv.recover(r.request)
    t.deepEqual(b, a)
    t.deepEqual(Buffer.from(r.unblind(a)), Buffer.from(p.sharedX))
  }
})

test('recover rejects malformed and off-curve points with bad_request', async (t) => {
  const exch = generateExchangeKey()
  const srv = await createEcmrServer(exch)
  const good = startRecovery(provision(publicJwk(exch)).epk, publicJwk(exch)).request
  const yBytes = Buffer.from(good.y, 'base64url')
  yBytes[65] = (yBytes[65] ?? 0) ^ 1
  const offCurve = { ...good, y: yBytes.toString('base64url') }
  for (const bad of [
    offCurve,
    { ...good, crv: 'P-256' },
    { ...good, alg: 'ES512' },
    { ...good, key_ops: ['sign'] },
    { ...good, kty: 'OKP' },
    'x',
    null,
  ]) {
    const e = throwsWithCode(t, () => recover(exch, bad), 'bad_request')
    t.regex(e?.message ?? '', /.+/, JSON.stringify(bad))
    await t.throwsAsync(srv.recover(bad), { instanceOf: UnlockdError })
  }
})

test('advertisement: built, verified, tamper detected, thumbprint pin enforced', async (t) => {
  const signing = [generateSigningKey(), generateSigningKey()]
  const exchange = generateExchangeKey()
  const adv = await buildAdvertisement({ signing, exchange: [exchange] })
  t.is(adv.signatures.length, 2)
  const v = await verifyAdvertisement(JSON.stringify(adv))
  t.is(v.signingKeys.length, 2)
  t.is(v.exchangeKeys.length, 1)
  t.deepEqual(v.signingKeys[0]?.key_ops, ['verify'])
  t.deepEqual(v.exchangeKeys[0]?.key_ops, ['deriveKey'])
  t.false(JSON.stringify(v.jwks).includes('"d"'))
  // one signature missing -> every verify key must have signed
  await t.throwsAsync(verifyAdvertisement({ ...adv, signatures: adv.signatures.slice(0, 1) }), {
    instanceOf: UnlockdError,
    message: /missing a signature/,
  })
  // payload swapped
  const other = await buildAdvertisement({
    signing: [generateSigningKey()],
    exchange: [generateExchangeKey()],
  })
  await t.throwsAsync(verifyAdvertisement({ payload: other.payload, signatures: adv.signatures }))
  // pin
  const thp = await jwkThumbprint(publicJwk(signing[1] as EcPrivateJwk))
  await t.notThrowsAsync(verifyAdvertisement(adv, { trustedThumbprint: thp }))
  const s1 = await jwkThumbprint(publicJwk(signing[0] as EcPrivateJwk), 'S1')
  await t.notThrowsAsync(verifyAdvertisement(adv, { trustedThumbprint: s1 }))
  await t.throwsAsync(
    verifyAdvertisement(adv, { trustedThumbprint: await jwkThumbprint(publicJwk(exchange)) }),
    { message: /trusted key/ },
  )
})

// ------------------------------------------------------------------------------------------------
// 1. Our client against Debian's tangd
// ------------------------------------------------------------------------------------------------

toolTest(
  'tangd: advertisement verifies; thumbprints match tangd key names and `jose jwk thp` for every hash',
  async (t) => {
    const r = need(real)
    const { adv } = await fetchTangAdvertisement(r.url, httpFetch)
    t.is(adv.signingKeys.length, 1)
    t.is(adv.exchangeKeys.length, 1)
    for (const f of r.files) {
      t.is(
        await jwkThumbprint(f.jwk, 'S256'),
        f.name.replace(/\.jwk$/, ''),
        'tangd-keygen names files by S256 thumbprint',
      )
      for (const alg of THUMBPRINT_ALGS) {
        const theirs = (
          await mustRun('jose', ['jwk', 'thp', '-i', path.join(r.dir, f.name), '-a', alg])
        ).stdout.trim()
        t.is(await jwkThumbprint(f.jwk, alg), theirs, `${alg} of ${f.name}`)
      }
    }
  },
)

toolTest(
  'tangd: our recover() reproduces tangd /rec replies byte for byte (S256 and S1 kid)',
  async (t) => {
    const r = need(real)
    const exch = r.files.find((f) => f.jwk.alg === 'ECMR')
    if (exch === undefined) throw new Error('no ECMR key in tangd dir')
    const pub = publicJwk(exch.jwk)
    const srv = await createEcmrServer(exch.jwk)
    for (const alg of ['S256', 'S1'] as const) {
      const req = startRecovery(provision(pub).epk, pub).request
      const kid = await jwkThumbprint(pub, alg)
      const res = await rawPost(`${r.url}/rec/${kid}`, JSON.stringify(req))
      t.is(res.status, 200)
      t.is(res.contentType, REC_CONTENT_TYPE)
      t.is(JSON.stringify(recover(exch.jwk, req)), res.text)
      t.is(JSON.stringify(await srv.recover(req)), res.text)
    }
  },
)

toolTest('tangd: tangEncrypt then tangDecrypt round trip', async (t) => {
  const r = need(real)
  const { jws } = await fetchTangAdvertisement(r.url, httpFetch)
  const secret = 'round trip through Debian tangd \u{1F511}'
  const jwe = await tangEncrypt(secret, jws, r.url)
  const info = await inspectTangJwe(jwe)
  t.is(info.url, r.url)
  t.is(info.enc, 'A256GCM')
  t.is(dec(await tangDecrypt(jwe, httpFetch)), secret)
  // binary plaintext too
  const bin = new Uint8Array(300).map((_, i) => i & 0xff)
  t.deepEqual(
    Buffer.from(await tangDecrypt(await tangEncrypt(bin, jws, r.url), httpFetch)),
    Buffer.from(bin),
  )
})

toolTest('tangd: stock `clevis decrypt` opens the JWE tangEncrypt made', async (t) => {
  const r = need(real)
  const { jws } = await fetchTangAdvertisement(r.url, httpFetch)
  const secret = 'made by unlockd, opened by clevis'
  const jwe = await tangEncrypt(secret, jws, r.url)
  const out = await run('clevis', ['decrypt'], { input: jwe })
  t.is(out.code, 0, out.stderr)
  t.is(out.stdout, secret)
})

toolTest(
  'tangd: tangDecrypt opens a stock `clevis encrypt tang` JWE; tampering is detected',
  async (t) => {
    const r = need(real)
    const secret = 'made by clevis, opened by unlockd'
    const jwe = (
      await mustRun('clevis', ['encrypt', 'tang', JSON.stringify({ url: r.url }), '-y'], {
        input: secret,
      })
    ).stdout
    t.is(dec(await tangDecrypt(jwe, httpFetch)), secret)
    const parts = jwe.split('.')
    const ct = Buffer.from(parts[3] ?? '', 'base64url')
    ct[0] = (ct[0] ?? 0) ^ 0x80
    parts[3] = ct.toString('base64url')
    await t.throwsAsync(tangDecrypt(parts.join('.'), httpFetch), {
      instanceOf: UnlockdError,
      message: /does not decrypt/,
    })
  },
)

// ------------------------------------------------------------------------------------------------
// 2. Stock clevis against our Hono tang
// ------------------------------------------------------------------------------------------------

toolTest(
  'our tang: stock `clevis encrypt tang -y` + `clevis decrypt` work against it',
  async (t) => {
    const o = need(ours)
    const before = { ...o.hits }
    const secret = 'stock clevis, unlockd tang'
    const enc = await run('clevis', ['encrypt', 'tang', JSON.stringify({ url: o.url }), '-y'], {
      input: secret,
    })
    t.is(enc.code, 0, enc.stderr)
    const jwe = enc.stdout
    const out = await run('clevis', ['decrypt'], { input: jwe })
    t.is(out.code, 0, out.stderr)
    t.is(out.stdout, secret)
    t.true(o.hits.adv > before.adv, 'clevis fetched our /adv')
    t.true(o.hits.rec > before.rec, 'clevis used our /rec')
    // and our own client reads clevis's JWE through our server too
    t.is(dec(await tangDecrypt(jwe, httpFetch)), secret)
  },
)

toolTest(
  'our tang: clevis with a pinned thp (fetches /adv/{thp}) and with an offline adv',
  async (t) => {
    const o = need(ours)
    const thp = await jwkThumbprint(publicJwk(o.signing[1] as EcPrivateJwk))
    const secret = 'pinned'
    const enc = await run('clevis', ['encrypt', 'tang', JSON.stringify({ url: o.url, thp })], {
      input: secret,
    })
    t.is(enc.code, 0, enc.stderr)
    const out = await run('clevis', ['decrypt'], { input: enc.raw })
    t.is(out.stdout, secret, out.stderr)
    // an unknown thp is refused by our /adv/{thp} and so by clevis
    const bad = await run(
      'clevis',
      [
        'encrypt',
        'tang',
        JSON.stringify({ url: o.url, thp: await jwkThumbprint(publicJwk(o.exchange)) }),
      ],
      { input: secret },
    )
    t.not(bad.code, 0)
    // offline binding: advertisement passed inline (General JWS with two signatures, checked by `jose jws ver -a`)
    const off = await run(
      'clevis',
      ['encrypt', 'tang', JSON.stringify({ url: o.url, adv: o.adv })],
      { input: 'offline' },
    )
    t.is(off.code, 0, off.stderr)
    t.is(dec(await tangDecrypt(off.stdout, httpFetch)), 'offline')
  },
)

toolTest(
  'our tang: JWE from tangEncrypt opens with stock `clevis decrypt` via our /rec',
  async (t) => {
    const o = need(ours)
    const { jws } = await fetchTangAdvertisement(o.url, httpFetch)
    const jwe = await tangEncrypt('both ends unlockd, clevis in the middle', jws, o.url)
    const out = await run('clevis', ['decrypt'], { input: jwe })
    t.is(out.code, 0, out.stderr)
    t.is(out.stdout, 'both ends unlockd, clevis in the middle')
  },
)

toolTest('our tang: bad requests get tang status codes', async (t) => {
  const o = need(ours)
  const pub = publicJwk(o.exchange)
  const kid = await jwkThumbprint(pub)
  const req = startRecovery(provision(pub).epk, pub).request
  t.is((await rawPost(`${o.url}/rec/${kid}`, JSON.stringify({ ...req, y: req.x }))).status, 400)
  t.is((await rawPost(`${o.url}/rec/${kid}`, 'not json')).status, 400)
  t.is(
    (
      await rawPost(
        `${o.url}/rec/${await jwkThumbprint(publicJwk(o.signing[0] as EcPrivateJwk))}`,
        JSON.stringify(req),
      )
    ).status,
    404,
  )
  const res = await rawPost(`${o.url}/rec/${kid}`, JSON.stringify(req))
  t.is(res.status, 200)
  t.is(res.contentType, REC_CONTENT_TYPE)
})
