/**
 * tang's own `adv` and `rec` test scripts, from Debian's tang source package fetched at test
 * time (a private deb-src list and `apt-get source tang` in a temporary directory; nothing of it
 * is kept), run against unlockd's plain-HTTP Tang listener.
 *
 * Only their server-start step is replaced: tang's `start_server PORT` runs
 * `socat TCP-LISTEN:PORT,fork SYSTEM:"tangd $TMP/db"`; ours asks this test to serve `$TMP/db`
 * as the Tang host at the root of the Tang listener, reachable on PORT. A small TCP relay on
 * PORT mirrors the key directory into the host before each connection (test/helpers/
 * tangd-keydir.ts: the scripts create, rotate and delete key files between requests, which
 * tangd reads per request) and passes the bytes through to the listener unchanged.
 *
 * Needs apt-get with a reachable Debian mirror, dpkg-source, tang (tangd-keygen,
 * tangd-rotate-keys, tang-show-keys), jose, curl, socat, ss and shuf. When any of that is
 * missing or the source cannot be fetched, the test is skipped loudly, unless CI is set, in
 * which case that is a failure; the one exception is a mirror that answers but lacks the
 * package's files (404), which no setup here can mend: that is a loud skip in CI as well.
 * UNLOCKD_TANG_SOURCE=DIR uses an unpacked tang source tree
 * instead of fetching one (a machine without a mirror).
 */
import test, { type ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import { accessSync, constants as fsConstants, existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import path from 'node:path'
import { mirrorKeyDir } from '../helpers/tangd-keydir.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import { run } from '../helpers/spawn.ts'
import { tempDir } from '../helpers/tmp.ts'

const inCi = Boolean(process.env['CI'])
const ROOT_HOST = 'tangd'
/** tang's scripts run dozens of curl and jose commands each; a busy machine needs minutes. */
const SCRIPT_TIMEOUT_MS = 15 * 60_000

function onPath(bin: string): boolean {
  return [...(process.env['PATH'] ?? '').split(path.delimiter), '/usr/sbin', '/usr/libexec'].some(
    (dir) => {
      if (dir === '') return false
      try {
        accessSync(path.join(dir, bin), fsConstants.X_OK)
        return true
      } catch {
        return false
      }
    },
  )
}

const TOOLS = [
  'apt-get',
  'dpkg-source',
  'tangd-keygen',
  'tangd-rotate-keys',
  'tang-show-keys',
  'jose',
  'curl',
  'socat',
  'ss',
  'shuf',
]
const missing = TOOLS.filter((b) => !onPath(b))

// ------------------------------------------------------------------------------------------------
// Fetching tang's tests
// ------------------------------------------------------------------------------------------------

function codename(): string | undefined {
  try {
    return /^VERSION_CODENAME=(\S+)$/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1]
  } catch {
    return undefined
  }
}

/**
 * `apt-get source tang` with a private deb-src list, state and cache under `work`, so the
 * system's apt configuration is neither needed nor touched. Returns the unpacked tree.
 */
async function fetchTangSource(work: string): Promise<Source> {
  const suite = codename()
  if (suite === undefined) return { error: 'no VERSION_CODENAME in /etc/os-release' }
  const etc = path.join(work, 'apt-etc')
  const state = path.join(work, 'apt-state')
  const cache = path.join(work, 'apt-cache')
  for (const d of [
    path.join(etc, 'sources.list.d'),
    path.join(state, 'lists', 'partial'),
    path.join(cache, 'archives', 'partial'),
  ])
    await mkdir(d, { recursive: true })
  const mirror = process.env['UNLOCKD_DEBIAN_MIRROR'] ?? 'http://deb.debian.org/debian'
  await writeFile(
    path.join(etc, 'sources.list'),
    `deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror} ${suite} main\n`,
  )
  const opts = [
    `-o`,
    `Dir::Etc::SourceList=${path.join(etc, 'sources.list')}`,
    `-o`,
    `Dir::Etc::SourceParts=${path.join(etc, 'sources.list.d')}`,
    `-o`,
    `Dir::State=${state}`,
    `-o`,
    `Dir::State::Lists=${path.join(state, 'lists')}`,
    `-o`,
    `Dir::Cache=${cache}`,
    `-o`,
    `APT::Sandbox::User=root`,
  ]
  const update = await run('apt-get', [...opts, 'update'], { timeoutMs: 10 * 60_000 })
  if (update.code !== 0) return { error: `apt-get update: ${update.stderr.trim()}` }
  const src = path.join(work, 'src')
  await mkdir(src)
  const got = await run('apt-get', [...opts, 'source', 'tang'], {
    cwd: src,
    timeoutMs: 10 * 60_000,
  })
  if (got.code !== 0) {
    const said = (got.stderr || got.stdout).trim()
    return {
      error: `apt-get source tang: ${said.split('\n').slice(-3).join(' | ')}`,
      // The mirror answers but does not carry the package's files (seen here: the .dsc comes,
      // the orig tarball is 404). Nothing on this machine can fix that, so it is not a failure
      // of the machine's setup: the test is skipped loudly, in CI too, and says why.
      mirrorLacksSource: /\b404\b/.test(said),
    }
  }
  const tree = (await readdir(src, { withFileTypes: true })).find(
    (e) => e.isDirectory() && e.name.startsWith('tang-'),
  )
  if (tree === undefined) return { error: `apt-get source tang unpacked nothing in ${src}` }
  return readTests(path.join(src, tree.name), `Debian's tang source package (${tree.name})`)
}

const SCRIPTS = ['adv', 'rec', 'helpers'] as const
type Source =
  | { from: string; files: Record<(typeof SCRIPTS)[number], string> }
  | { error: string; mirrorLacksSource?: boolean }

/** The scripts this test runs, read at once (the fetched tree is temporary). */
async function readTests(dir: string, from: string): Promise<Source> {
  const files = {} as Record<(typeof SCRIPTS)[number], string>
  for (const f of SCRIPTS) {
    const file = path.join(dir, 'tests', f)
    if (!existsSync(file)) return { error: `${from} has no tests/${f}` }
    files[f] = await readFile(file, 'utf8')
  }
  return { from, files }
}

// ------------------------------------------------------------------------------------------------
// The replaced server start
// ------------------------------------------------------------------------------------------------

/**
 * Appended to tang's tests/helpers: the last definition of start_server wins. It asks the
 * control endpoint to serve the key directory on PORT and returns once PORT accepts; `$!` is
 * still the background request, which tang's on_exit kills (that stops serving).
 */
function startServerOverride(control: number): string {
  return `
# --- unlockd: the server-start step, replaced -------------------------------------------------
start_server() {
    _unlockd_ready="\${TMP}/.unlockd-serving"
    curl -sfN "http://127.0.0.1:${String(control)}/serve?port=\${1}&db=\${TMP}/db" > "\${_unlockd_ready}" &
    _unlockd_i=0
    while ! grep -q '^ready' "\${_unlockd_ready}" 2>/dev/null; do
        _unlockd_i=$((_unlockd_i + 1))
        [ "\${_unlockd_i}" -lt 1200 ] || die "unlockd: the Tang listener did not come up on port \${1}"
        sleep 0.1
    done
}
`
}

/** PORT -> the Tang listener, mirroring the key directory before each connection. */
function relay(
  port: number,
  target: number,
  sync: () => Promise<void>,
  onError: (err: unknown) => void,
): Promise<net.Server> {
  const server = net.createServer({ pauseOnConnect: true }, (client) => {
    void sync().then(
      () => {
        const upstream = net.connect(target, '127.0.0.1')
        upstream.on('error', () => client.destroy())
        client.on('error', () => upstream.destroy())
        client.pipe(upstream).pipe(client)
        client.resume()
      },
      (err: unknown) => {
        onError(err)
        client.destroy()
      },
    )
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve(server))
  })
}

async function controlServer(
  t: ExecutionContext,
  srv: TestServer,
  errors: unknown[],
): Promise<number> {
  const tangPort = srv.server.tangPort
  if (tangPort === undefined) throw new Error('no Tang listener')
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://control')
    const port = Number(url.searchParams.get('port'))
    const db = url.searchParams.get('db') ?? ''
    if (url.pathname !== '/serve' || !Number.isInteger(port) || !path.isAbsolute(db)) {
      res.writeHead(400).end()
      return
    }
    const mirror = mirrorKeyDir(srv.deps, ROOT_HOST, db)
    relay(
      port,
      tangPort,
      () => mirror.sync(),
      (err) => errors.push(err),
    ).then(
      (r) => {
        res.writeHead(200, { 'content-type': 'text/plain' })
        res.write('ready\n')
        req.socket.on('close', () => r.close())
        t.teardown(() => new Promise<void>((done) => r.close(() => done())))
      },
      (err: unknown) => {
        errors.push(err)
        res.writeHead(500).end(String(err))
      },
    )
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return (server.address() as AddressInfo).port
}

// ------------------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------------------

/** Fetched once, before the tests are declared, so a missing source shows as a skip. */
async function tangSource(): Promise<Source> {
  if (missing.length > 0)
    return {
      error: `missing ${missing.join(', ')} (apt-get install -y tang jose curl socat iproute2 dpkg-dev)`,
    }
  const given = process.env['UNLOCKD_TANG_SOURCE']
  if (given !== undefined) return readTests(given, `UNLOCKD_TANG_SOURCE=${given}`)
  const work = await mkdtemp(path.join(tmpdir(), 'unlockd-tang-src-'))
  try {
    return await fetchTangSource(work)
  } finally {
    await rm(work, { recursive: true, force: true })
  }
}

const source = await tangSource()
if ('error' in source) {
  const msg = `tang-upstream-tests cannot run: ${source.error}`
  if (inCi && source.mirrorLacksSource !== true) {
    test(`tang's own adv and rec tests can run (required in CI)`, (t) => {
      t.fail(msg)
    })
  } else {
    console.warn(`\n${'!'.repeat(78)}\n!! SKIPPING tang's own tests: ${msg}\n${'!'.repeat(78)}\n`)
    test.skip(`tang's own adv and rec tests [SKIPPED: ${msg}]`, () => {})
  }
}

for (const script of ['adv', 'rec'] as const) {
  if ('error' in source) break
  const src = source
  test.serial(`tang's own tests/${script} passes against the plain Tang listener`, async (t) => {
    t.timeout(SCRIPT_TIMEOUT_MS + 5 * 60_000)

    const srv = await startTestServer(t, {
      tangListener: { listen: '127.0.0.1:0', rootHost: ROOT_HOST },
      // tang's scripts make well over a hundred requests in a few seconds from one address.
      settings: { hostRateLimit: null },
    })
    const added = await srv.admin('POST', '/hosts', { name: ROOT_HOST, tang: true }, { totp: true })
    t.is(added.status, 201, JSON.stringify(added.body))
    const errors: unknown[] = []
    const control = await controlServer(t, srv, errors)

    // tang's scripts, unchanged, next to a helpers file whose start_server is ours.
    const work = await tempDir(t)
    t.log(`tests/${script} from ${src.from}`)
    // Run as tang runs it: executed, so its `#!/bin/sh -ex` line applies (-e: any failed step fails).
    await writeFile(path.join(work, script), src.files[script], { mode: 0o755 })
    await writeFile(path.join(work, 'helpers'), src.files.helpers + startServerOverride(control))

    const r = await new Promise<{ code: number | null; out: string }>((resolve) => {
      let out = ''
      const child = spawn(path.join(work, script), [], {
        cwd: work,
        env: {
          ...process.env,
          // `. helpers` is looked up on PATH, as tang's meson test setup has it.
          PATH: `${work}:/usr/libexec:${process.env['PATH'] ?? ''}`,
          SOCAT: 'socat',
          VALGRIND: '',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      })
      child.stdout.on('data', (d: Buffer) => (out += d.toString()))
      child.stderr.on('data', (d: Buffer) => (out += d.toString()))
      const timer = setTimeout(() => child.kill('SIGKILL'), SCRIPT_TIMEOUT_MS)
      child.on('close', (code) => {
        clearTimeout(timer)
        resolve({ code, out })
      })
    })
    t.deepEqual(errors.map(String), [], 'mirroring the key directory failed')
    t.is(
      r.code,
      0,
      `tests/${script} failed; its trace ends with:\n${r.out.split('\n').slice(-40).join('\n')}`,
    )
    // It really talked to unlockd: the host answered.
    const audit = await srv.admin('GET', '/audit?limit=10000')
    const mine = (audit.body.entries as { action: string; host: string | null }[]).filter(
      (e) => e.host === ROOT_HOST,
    )
    if (script === 'rec') t.true(mine.some((e) => e.action === 'unlock.release'))
    else t.true(mine.length > 0)
  })
}
