/**
 * Tang hosts of the unlockd server, driven by Debian's stock clevis:
 * `unlockd host add NAME --tang`, `clevis encrypt tang` / `clevis decrypt` against
 * /tang/NAME, `clevis luks bind` on a LUKS2 image file, policy on /rec (CIDRs, suspension,
 * max unlocks, approval), `unlockd shred --host` and `unlockd host rotate-tang [--purge]`.
 *
 * Needs clevis, clevis-luks, jose, curl and cryptsetup-bin (Debian packages) and a built CLI
 * (`npm run build`; `npm test` does it). Without the tools the tests are skipped loudly, unless
 * CI is set, in which case that is a failure. All traffic goes to 127.0.0.1.
 */
import test, { type ExecutionContext } from 'ava'
import { existsSync } from 'node:fs'
import { findBin } from '../helpers/root.ts'
import { readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { verifyAdvertisement } from '../../shared/tang/adv.ts'
import type { TangHostView } from '../../shared/protocol/tang.ts'
import { tangService } from '../../server/tang/service.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import { run, type RunResult } from '../helpers/spawn.ts'
import { tempDir } from '../helpers/tmp.ts'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const CLI = path.join(ROOT, 'dist/unlockd.mjs')

const missing = [
  'clevis',
  'clevis-luks-bind',
  'clevis-luks-pass',
  'jose',
  'curl',
  'cryptsetup',
].filter((b) => findBin(b) === undefined)
const inCi = Boolean(process.env['CI'])
const toolTest = missing.length === 0 ? test.serial : test.skip

if (missing.length > 0) {
  const msg = `tang-endpoints: missing ${missing.join(', ')} (apt-get install -y clevis clevis-luks jose curl cryptsetup-bin)`
  if (inCi) {
    test('clevis tools are installed (required in CI)', (t) => {
      t.fail(msg)
    })
  } else {
    console.warn(
      `\n${'!'.repeat(78)}\n!! SKIPPING Tang endpoint tests: ${msg}\n${'!'.repeat(78)}\n`,
    )
    test.skip(`Tang endpoint tests [SKIPPED: ${msg}]`, () => {})
  }
}

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

interface Env {
  srv: TestServer
  /** Seconds added to the real clock; TOTP codes need a fresh 30 s step each. */
  clock: { offset: number }
  /** `unlockd ARGS --json` as the operator; resolves the parsed JSON or throws with stderr. */
  cli(args: string[]): Promise<any>
  cliRaw(args: string[]): Promise<RunResult>
  /** A fresh code of the init operator at the server's clock. */
  code(): Promise<string>
}

async function setup(t: ExecutionContext): Promise<Env> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`)
  const clock = { offset: 0 }
  const srv = await startTestServer(t, { now: () => Math.floor(Date.now() / 1000) + clock.offset })
  // Every command gets a fresh admin code on stdin; the ones that need none never read it.
  const cliRaw = async (args: string[]): Promise<RunResult> =>
    run(process.execPath, [CLI, ...args], {
      env: { UNLOCKD_URL: srv.url, UNLOCKD_TOKEN: srv.token, UNLOCKD_CONFIG: '/nonexistent' },
      input: `${await srv.adminCode()}\n`,
    })
  return {
    srv,
    clock,
    cliRaw,
    async cli(args) {
      const r = await cliRaw([...args, '--json'])
      if (r.code !== 0)
        throw new Error(`unlockd ${args.join(' ')} exited ${String(r.code)}: ${r.stderr}`)
      return JSON.parse(r.stdout) as unknown
    },
    code: () => srv.adminCode(),
  }
}

async function addTangHost(
  env: Env,
  name: string,
  cidrs: string[] = [],
): Promise<{ view: TangHostView; url: string }> {
  const out = (await env.cli([
    'host',
    'add',
    name,
    '--tang',
    ...cidrs.flatMap((c) => ['--cidr', c]),
  ])) as TangHostView & { url: string }
  return { view: out, url: out.url }
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

async function auditOf(
  env: Env,
  host: string,
): Promise<{ action: string; detail: Record<string, unknown> }[]> {
  const res = await env.srv.admin('GET', '/audit?limit=10000')
  return (
    res.body.entries as { action: string; host: string | null; detail: Record<string, unknown> }[]
  ).filter((e) => e.host === host)
}

/** Raw /rec with an arbitrary body; returns status and parsed JSON error body (if any). */
async function rawRec(
  url: string,
  kid: string,
  body: string,
): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${url}/rec/${kid}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/jwk+json' },
    body,
  })
  const text = await res.text()
  let parsed: unknown = text
  try {
    parsed = JSON.parse(text)
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed }
}

interface JweHeader {
  kid: string
  epk: { x: string; y: string }
  clevis: { tang: { adv: { keys: { x: string }[] } } }
}

function headerOf(jwe: string): JweHeader {
  return JSON.parse(Buffer.from(jwe.split('.')[0] ?? '', 'base64url').toString()) as JweHeader
}

/** The kid (exchange key S256 thumbprint) a clevis tang JWE is bound to. */
function kidOf(jwe: string): string {
  return headerOf(jwe).kid
}

/** A well-formed /rec body (a valid P-521 point: the JWE's epk). */
function pointBody(jwe: string): string {
  const { x, y } = headerOf(jwe).epk
  return JSON.stringify({ alg: 'ECMR', crv: 'P-521', kty: 'EC', x, y })
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

toolTest(
  'stock clevis encrypt + decrypt round trip against /tang/HOST; each /rec is an audited release',
  async (t) => {
    const env = await setup(t)
    const { view, url } = await addTangHost(env, 'nas-1')
    t.true(view.host.id.length === 43)
    t.is(view.path, '/tang/nas-1')
    t.is(view.keys.length, 1)
    t.is(view.keys[0]?.state, 'advertised')

    // The advertisement is tang's: served with tangd's content type, signed by the advertised key.
    const advRes = await fetch(`${url}/adv`)
    t.is(advRes.status, 200)
    t.is(advRes.headers.get('content-type'), 'application/jose+json')
    const adv = await verifyAdvertisement(await advRes.text())
    t.is(adv.exchangeKeys.length, 1)

    const secret = 'unlockd speaks tang'
    const jwe = await clevisEncrypt(url, secret)
    t.is(kidOf(jwe), view.keys[0]?.exchange ?? '')
    const dec = await clevisDecrypt(jwe)
    t.is(dec.code, 0, dec.stderr)
    t.is(dec.stdout, secret)

    const releases = (await auditOf(env, 'nas-1')).filter((e) => e.action === 'unlock.release')
    t.is(releases.length, 1)
    t.is(releases[0]?.detail['via'], 'tang')
    t.is(releases[0]?.detail['kid'], view.keys[0]?.exchange)
    const shown = (await env.cli(['host', 'show', 'nas-1'])) as {
      lastUnlockAt: number | null
      volumes: { name: string; kind: string }[]
    }
    t.not(shown.lastUnlockAt, null)
    t.deepEqual(
      shown.volumes.map((v) => v.kind),
      ['tang'],
    )

    // Tang status codes for bad input; unknown hosts and keys are 404 like tangd.
    t.is((await fetch(`${env.srv.url}/tang/nobody/adv`)).status, 404)
    t.is((await rawRec(url, kidOf(jwe), 'not json')).status, 400)
    t.is(
      (await rawRec(url, kidOf(jwe), JSON.stringify({ kty: 'EC', crv: 'P-521', x: 'AA', y: 'AA' })))
        .status,
      400,
    )
    t.is((await rawRec(url, view.keys[0]?.signing ?? '', pointBody(jwe))).status, 404)
    t.is((await rawRec(`${env.srv.url}/tang/nobody`, kidOf(jwe), pointBody(jwe))).status, 404)
    t.not(
      (await env.cliRaw(['host', 'add', 'nas-1', '--tang'])).code,
      0,
      'a live name cannot be added twice',
    )
    t.is(
      (await env.cliRaw(['host', 'add', 'nas-2'])).code,
      2,
      'only --tang hosts are added by an operator',
    )
  },
)

toolTest('policy applies to /rec: CIDRs, suspension, max unlocks; /adv stays public', async (t) => {
  const env = await setup(t)
  const { url } = await addTangHost(env, 'far-1', ['192.0.2.0/24'])
  // Binding works (the advertisement is public, like tangd's) ...
  const jwe = await clevisEncrypt(url, 'outside')
  // ... but recovery from 127.0.0.1 is outside the host's networks.
  const denied = await clevisDecrypt(jwe)
  t.not(denied.code, 0)
  t.not(denied.stdout, 'outside')
  const raw = await rawRec(url, kidOf(jwe), pointBody(jwe))
  t.is(raw.status, 403)
  t.like(raw.body, { error: 'cidr_denied', rule: 'cidrs' })
  const audit = await auditOf(env, 'far-1')
  t.true(
    audit.some(
      (e) =>
        e.action === 'unlock.deny' &&
        e.detail['code'] === 'cidr_denied' &&
        e.detail['via'] === 'tang',
    ),
  )
  t.false(audit.some((e) => e.action === 'unlock.release'))

  // Opening the networks lets it through; suspension stops it; resume restores it.
  await env.cli(['host', 'set', 'far-1', '--cidr', '127.0.0.0/8'])
  t.is((await clevisDecrypt(jwe)).stdout, 'outside')
  await env.cli(['host', 'suspend', 'far-1', '--reason', 'stolen?'])
  const suspended = await clevisDecrypt(jwe)
  t.not(suspended.code, 0)
  const raw2 = await rawRec(url, kidOf(jwe), pointBody(jwe))
  t.like(raw2.body, { error: 'host_suspended' })
  await env.cli(['host', 'resume', 'far-1'])
  t.is((await clevisDecrypt(jwe)).stdout, 'outside')

  // Max unlocks counts /rec releases like agent unlocks (2 so far in the window).
  await env.cli(['host', 'set', 'far-1', '--max-unlocks', '3/1h'])
  t.is((await clevisDecrypt(jwe)).stdout, 'outside')
  const limited = await clevisDecrypt(jwe)
  t.not(limited.code, 0)
  t.true(
    (await auditOf(env, 'far-1')).some(
      (e) => e.action === 'unlock.deny' && e.detail['code'] === 'rate_limited',
    ),
  )
})

toolTest(
  'approval rule: /rec opens one approval request; after an operator approves, the retry succeeds once',
  async (t) => {
    const env = await setup(t)
    const { url } = await addTangHost(env, 'vault-1')
    const jwe = await clevisEncrypt(url, 'needs a human')
    await env.cli(['host', 'set', 'vault-1', '--approval', 'always'])
    t.not((await clevisDecrypt(jwe)).code, 0)
    t.not((await clevisDecrypt(jwe)).code, 0) // a retry does not open a second request
    const pending = await env.srv.admin('GET', '/approvals')
    const mine = (pending.body.approvals as { id: string; host: string; bootId: string }[]).filter(
      (a) => a.host === 'vault-1',
    )
    t.is(mine.length, 1)
    t.is(mine[0]?.bootId, 'tang-clevis')
    const ok = await env.srv.admin('POST', `/approvals/${mine[0]?.id ?? ''}/approve`, {
      code: await env.code(),
    })
    t.is(ok.status, 200, JSON.stringify(ok.body))
    const dec = await clevisDecrypt(jwe)
    t.is(dec.code, 0, dec.stderr)
    t.is(dec.stdout, 'needs a human')
    t.not((await clevisDecrypt(jwe)).code, 0, 'the approval was spent')
  },
)

toolTest(
  'unlockd shred --host destroys the Tang keys: clevis decrypt fails for good, /adv is 404',
  async (t) => {
    const env = await setup(t)
    const { view, url } = await addTangHost(env, 'gone-1')
    const { url: otherUrl } = await addTangHost(env, 'stays-1')
    const jwe = await clevisEncrypt(url, 'shred me')
    const other = await clevisEncrypt(otherUrl, 'keep me')
    t.is((await clevisDecrypt(jwe)).stdout, 'shred me')
    const cached = tangService(env.srv.deps).cachedHosts
    t.is(cached, 2, 'prepared keys are cached per host')

    const r = (await env.cli(['shred', '--host', 'gone-1', '--yes'])) as {
      deletedBlobs: number
      targets: { volumes: string[] }[]
    }
    t.is(r.deletedBlobs, 1)
    t.deepEqual(
      r.targets[0]?.volumes,
      view.keys.map((k) => k.row),
    )
    // The wrapped key rows are gone from the store and the prepared keys from memory.
    t.deepEqual(await env.srv.deps.store.tx((tx) => tx.listVolumes(view.host.id)), [])
    t.is(tangService(env.srv.deps).cachedHosts, cached - 1)
    const dec = await clevisDecrypt(jwe)
    t.not(dec.code, 0)
    t.not(dec.stdout, 'shred me')
    t.is((await fetch(`${url}/adv`)).status, 404)
    t.true(
      (await auditOf(env, 'gone-1')).some(
        (e) => e.action === 'unlock.deny' && e.detail['code'] === 'host_shredded',
      ),
    )
    // Another Tang host survives the shred and the KEK rotation that follows it.
    t.is((await clevisDecrypt(other)).stdout, 'keep me')
  },
)

toolTest('KEK rotation re-wraps Tang keys; bindings keep working', async (t) => {
  const env = await setup(t)
  const { view, url } = await addTangHost(env, 'rot-1')
  const jwe = await clevisEncrypt(url, 'survives kek rotation')
  const before = await env.srv.deps.store.tx((tx) => tx.listVolumes(view.host.id))
  const bare = await env.srv.admin('POST', '/kek/rotate')
  t.is(bare.status, 403, 'the token alone cannot rotate the KEK')
  t.is(bare.body.error, 'totp_required')
  const res = await env.srv.admin('POST', '/kek/rotate', undefined, { totp: true })
  t.is(res.status, 200, JSON.stringify(res.body))
  const after = await env.srv.deps.store.tx((tx) => tx.listVolumes(view.host.id))
  t.true((after[0]?.kekVersion ?? 0) > (before[0]?.kekVersion ?? 0))
  t.is((await clevisDecrypt(jwe)).stdout, 'survives kek rotation')
})

toolTest(
  'rotate-tang: old bindings still decrypt, /adv lists only the new keys; --purge retires them for good',
  async (t) => {
    const env = await setup(t)
    const { view, url } = await addTangHost(env, 'r-1')
    const old = view.keys[0]
    if (old === undefined) throw new Error('no key')
    const jweOld = await clevisEncrypt(url, 'bound before rotation')

    const rotated = (await env.cli(['host', 'rotate-tang', 'r-1'])) as TangHostView
    t.is(rotated.keys.length, 2)
    const fresh = rotated.keys.find((k) => k.state === 'advertised')
    t.truthy(fresh)
    t.deepEqual(rotated.keys.find((k) => k.state === 'retired')?.exchange, old.exchange)

    const adv = await verifyAdvertisement(await (await fetch(`${url}/adv`)).text())
    t.is(adv.exchangeKeys.length, 1)
    t.is(adv.signingKeys.length, 1)
    const advText = JSON.stringify(adv.jwks)
    for (const k of headerOf(jweOld).clevis.tang.adv.keys)
      t.false(advText.includes(k.x), 'the retired keys are not advertised')
    // The retired signing key still signs /adv/{thp} (tang's rule), the exchange key still recovers.
    t.is((await fetch(`${url}/adv/${old.signing}`)).status, 200)
    t.is((await clevisDecrypt(jweOld)).stdout, 'bound before rotation')
    const jweNew = await clevisEncrypt(url, 'bound after rotation')
    t.is(kidOf(jweNew), fresh?.exchange ?? '')
    const releases = (await auditOf(env, 'r-1')).filter((e) => e.action === 'unlock.release')
    t.true(releases.some((e) => e.detail['retiredKey'] === true))

    const purged = (await env.cli([
      'host',
      'rotate-tang',
      'r-1',
      '--purge',
      '--yes',
    ])) as TangHostView
    t.deepEqual(purged.purged, [old.row])
    t.deepEqual(
      purged.keys.map((k) => k.state),
      ['advertised'],
    )
    t.not((await clevisDecrypt(jweOld)).code, 0, 'purged keys can no longer recover')
    t.is((await clevisDecrypt(jweNew)).stdout, 'bound after rotation')
    t.is((await fetch(`${url}/adv/${old.signing}`)).status, 404)
    // Purging needs a confirmation when not interactive.
    t.not((await env.cliRaw(['host', 'rotate-tang', 'r-1', '--purge'])).code, 0)
  },
)

toolTest(
  'clevis luks bind on a LUKS2 image file; the clevis slot passphrase opens the volume until shred',
  async (t) => {
    const env = await setup(t)
    const dir = await tempDir(t, 'unlockd-tang-luks-')
    const img = path.join(dir, 'luks.img')
    const pass = path.join(dir, 'pass')
    await writeFile(img, Buffer.alloc(0))
    const trunc = await run('truncate', ['-s', '32M', img])
    t.is(trunc.code, 0, trunc.stderr)
    await writeFile(pass, 'initial-passphrase', { mode: 0o600 })
    const fmt = await run('cryptsetup', [
      'luksFormat',
      '--type',
      'luks2',
      '--batch-mode',
      '--pbkdf',
      'pbkdf2',
      '--pbkdf-force-iterations',
      '1000',
      '--key-file',
      pass,
      img,
    ])
    t.is(fmt.code, 0, fmt.stderr)

    const { url } = await addTangHost(env, 'disk-1')
    const bind = await run('clevis', [
      'luks',
      'bind',
      '-y',
      '-d',
      img,
      '-k',
      pass,
      'tang',
      JSON.stringify({ url }),
    ])
    t.is(bind.code, 0, bind.stderr)
    const list = await run('clevis', ['luks', 'list', '-d', img])
    t.is(list.code, 0, list.stderr)
    t.true(list.stdout.includes(url), list.stdout)
    const slot = /^(\d+):/.exec(list.stdout.trim())?.[1]
    if (slot === undefined) throw new Error(`no clevis slot in: ${list.stdout}`)

    // `clevis luks pass` runs clevis decrypt against /rec; cryptsetup checks the slot passphrase
    // (no device-mapper needed, unlike `clevis luks unlock`).
    const recovered = await run('clevis', ['luks', 'pass', '-d', img, '-s', slot])
    t.is(recovered.code, 0, recovered.stderr)
    const keyFile = path.join(dir, 'recovered.key')
    await writeFile(keyFile, recovered.stdout, { mode: 0o600 })
    const open = await run('cryptsetup', [
      'open',
      '--test-passphrase',
      '--key-slot',
      slot,
      '--key-file',
      keyFile,
      img,
    ])
    t.is(open.code, 0, open.stderr)

    await env.cli(['shred', '--host', 'disk-1', '--yes'])
    const after = await run('clevis', ['luks', 'pass', '-d', img, '-s', slot])
    t.not(after.code, 0)
    t.is(after.stdout, '')
    t.is((await readFile(pass, 'utf8')).length > 0, true)
  },
)
