/**
 * The Debian packages (tools/package-deb.sh): they build, lintian has nothing to say beyond the
 * explained overrides, and `apt-get install ./unlockd-*.deb` into a fresh Debian 12 chroot gives
 * a working system on Debian's own nodejs 18: `unlockd --version` without warnings, enrollment
 * and `unlock --test` against a real server, an initramfs plan that carries what Debian's node
 * loads from /usr/share/nodejs, units that pass `systemd-analyze verify`, and a clean removal.
 *
 * The chroot (debootstrap with every dependency preinstalled, test/packaging/debian-chroot.sh)
 * and the packages are built once and cached (test/helpers/debs.ts, shared with the
 * provisioning and boot tests), so only the first run pays for debootstrap (about 4 min); each
 * run installs into an overlay over it inside a private mount namespace
 * (test/packaging/in-chroot.sh). The packages are built without compression here (the release
 * build uses xz), so lintian's two compression tags are suppressed.
 */
import { readFileSync } from 'node:fs'
import { copyFile, mkdir, writeFile } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { REPO, runLogged } from '../boot/env.ts'
import { initDataDirCli, startCliServer } from '../helpers/cli-server.ts'
import { runCli, UNLOCKD_AGENT } from '../helpers/cli.ts'
import { builtDebs, packagingChroot } from '../helpers/debs.ts'
import { makeLuksImage } from '../helpers/luks.ts'
import { rootTest } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'

const IN_CHROOT = join(REPO, 'test/packaging/in-chroot.sh')
const NEEDS = { bins: ['debootstrap', 'dpkg-deb', 'lintian', 'unshare', 'chroot', 'cryptsetup'] }
const LONG = { timeoutMs: 20 * 60_000 }
/** How Node prints a process warning, e.g. `(node:42) ExperimentalWarning: ...`. */
const NODE_WARNING = /\(node:\d+\)|Warning:/

function step(out: string, name: string): { rc: number; out: string; err: string } {
  const read = (ext: string): string => readFileSync(join(out, `${name}.${ext}`), 'utf8')
  return { rc: Number(read('rc').trim()), out: read('out'), err: read('err') }
}

rootTest(
  'the Debian packages are lintian clean, install on Debian 12 and run on its nodejs 18',
  async (t) => {
    const work = await tempDir(t)
    const debs = join(work, 'debs')
    await mkdir(debs)
    const [lower, built] = await Promise.all([packagingChroot(), builtDebs()])
    const files: string[] = []
    for (const f of [built.agent, built.server]) {
      files.push(join(debs, basename(f)))
      await copyFile(f, join(debs, basename(f)))
    }

    const lintLog = join(work, 'lintian.log')
    // lintian exits non-zero on errors; the tags are read from its log either way.
    await runLogged(
      'lintian',
      [
        '--suppress-tags',
        'uses-no-compression-for-control-tarball,uses-no-compression-for-data-tarball',
        ...files,
      ],
      lintLog,
      LONG,
    ).catch(() => undefined)
    const tags = readFileSync(lintLog, 'utf8')
      .split('\n')
      .filter((l) => /^[EWX]: /.test(l))
      .join('\n')
    t.is(tags, '', 'lintian reports nothing that is not overridden with a reason')

    // A server on the host's loopback (the chroot shares the network) and a LUKS2 image.
    const share = join(work, 'share')
    await mkdir(share)
    const data = await initDataDirCli(join(work, 'data'))
    const srv = await startCliServer(t, data)
    const tok = await runCli(['token', 'create', '--host', 'deb-host', '--json'], {
      UNLOCKD_URL: srv.url,
      UNLOCKD_TOKEN: data.token,
    })
    t.is(tok.code, 0, tok.stderr)
    await writeFile(join(share, 'token'), `${String(tok.json.token)}\n`, { mode: 0o600 })
    const rec = await runCli(
      ['recovery-key', 'create', '--out', join(work, 'recovery.jwk')],
      {},
      {
        bundle: UNLOCKD_AGENT,
      },
    )
    t.is(rec.code, 0, rec.stderr)
    await writeFile(join(share, 'recovery.pub'), rec.stdout)
    await makeLuksImage(share, new TextEncoder().encode('old passphrase'))
    await writeFile(join(share, 'old.key'), 'old passphrase', { mode: 0o600 })
    await writeFile(join(share, 'server-url'), srv.url)

    await runLogged(
      'unshare',
      ['--mount', '--propagation', 'private', IN_CHROOT, lower, work],
      join(work, 'in-chroot.log'),
      LONG,
    )
    const out = join(work, 'out')
    const s = (name: string): { rc: number; out: string; err: string } => step(out, name)

    t.is(s('install').rc, 0, s('install').out)
    t.regex(s('node-version').out, /^v18\./, 'the chroot runs Debian 12 nodejs 18')
    t.is(s('version').rc, 0, s('version').out)
    t.regex(s('version').out, /^unlockd \d+\.\d+\.\d+ \(protocol v1\)\n$/)
    t.is(s('version').err, '', 'no warnings on Node 18')
    t.is(s('server-version').rc, 0, s('server-version').out)
    t.regex(s('server-version').out, /^unlockd \d+\.\d+\.\d+/)

    const listed = s('files').out
    for (const path of [
      '/usr/bin/unlockd',
      '/usr/lib/unlockd/unlockd-agent.mjs',
      '/usr/share/initramfs-tools/hooks/unlockd',
      '/usr/lib/dracut/modules.d/90unlockd/module-setup.sh',
      '/usr/lib/unlockd/node_modules/koffi/build/koffi/linux_x64/koffi.node',
      '/usr/lib/unlockd/server/node',
      '/usr/lib/unlockd/server/node_modules/better-sqlite3/build/Release/better_sqlite3.node',
    ])
      t.true(listed.includes(`${path}\n`), `${path} is installed`)
    t.false(
      /koffi\/build\/koffi\/(?!linux_x64)/.test(listed),
      'koffi is pruned to one architecture',
    )
    t.regex(s('enabled').out, /unlockd-agent\.service/, 'the agent unit is enabled')
    t.regex(s('user').out, /^unlockd:/, 'the server account exists')
    t.is(s('man').rc, 0, s('man').out)
    t.is(s('completion').rc, 0, s('completion').out)
    t.is(s('analyze').rc, 0, s('analyze').out)
    t.is(s('analyze').err.trim(), '', s('analyze').err)

    t.is(s('enroll').rc, 0, s('enroll').out)
    t.notRegex(s('enroll').err, NODE_WARNING, 'enrollment prints no warning on Node 18')
    t.is(s('unlock').rc, 0, s('unlock').out)
    t.deepEqual(JSON.parse(s('unlock').out.replace(s('unlock').err, '')).unlocked, ['data'])
    t.notRegex(s('unlock').err, NODE_WARNING, 'unlock prints no warning on Node 18')
    const plan = s('initramfs-check').out
    t.regex(plan, /Node\.js v18\.\d+\.\d+ runs the agent/)
    t.regex(plan, /\/usr\/share\/nodejs\/undici\/undici-fetch\.js/, 'libnode builtins are planned')
    t.regex(plan, /\/usr\/share\/nodejs\/cjs-module-lexer\/lexer\.js/)

    t.is(s('remove').rc, 0, s('remove').out)
    t.notRegex(s('after-remove').out, /^unlockd$/m, 'the initramfs hook goes with the package')
    t.regex(s('after-remove').out, /update-initramfs: 0/, 'update-initramfs still works')
    t.is(s('purge').rc, 0, s('purge').out)
  },
  NEEDS,
)
