/**
 * Every shell script that runs at boot or provisions a machine passes shellcheck: the initramfs
 * hooks and boot scripts (initramfs-hooks/), the Vagrant provisioning and scenarios (vagrant/),
 * systemd helpers (systemd/) and the boot tests' own scripts (test/boot/). A script is a file
 * with a sh/bash shebang or a .sh name; the shell dialect comes from the shebang.
 * Skips loudly when shellcheck is missing; fails when CI is set (CI installs it).
 */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'
import { findBin } from '../helpers/root.ts'

const REPO = join(import.meta.dirname, '../..')
const ROOTS = [
  'initramfs-hooks',
  'vagrant',
  'systemd',
  'test/boot',
  'test/packaging',
  'tools',
  '.ci',
  'provisioning',
]

function walk(dir: string): string[] {
  let out: string[] = []
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch {
    return out
  }
  for (const n of names) {
    const p = join(dir, n)
    const st = statSync(p)
    if (st.isDirectory()) out = out.concat(walk(p))
    else if (st.isFile()) out.push(p)
  }
  return out
}

function shellOf(path: string): 'sh' | 'bash' | undefined {
  const head = readFileSync(path, 'utf8').slice(0, 200)
  const shebang = /^#!\s*(\S+)(?:\s+(\S+))?/.exec(head)
  const interp = shebang ? (shebang[1]?.endsWith('/env') ? shebang[2] : shebang[1]) : undefined
  if (interp !== undefined && /(^|\/)bash$/.test(interp)) return 'bash'
  if (interp !== undefined && /(^|\/)(sh|dash|ash)$/.test(interp)) return 'sh'
  if (path.endsWith('.sh')) return 'bash'
  return undefined
}

// Jinja templates (.j2) are not shell until rendered; the rendered forms are checked by their own tests.
const scripts = ROOTS.flatMap((r) => walk(join(REPO, r))).filter(
  (p) => !p.endsWith('.j2') && shellOf(p) !== undefined,
)
const shellcheck = findBin('shellcheck')

if (shellcheck === undefined && (process.env['CI'] ?? '') === '') {
  console.warn(
    `\n${'!'.repeat(78)}\n!! SKIPPING shellcheck: not installed (apt-get install shellcheck)\n${'!'.repeat(78)}\n`,
  )
  test.skip('shell scripts pass shellcheck [SKIPPED: shellcheck is not installed]', () => {})
} else {
  test('the boot and provisioning shell scripts are found', (t) => {
    const rel = scripts.map((p) => relative(REPO, p))
    for (const must of [
      'initramfs-hooks/initramfs-tools/hooks/unlockd',
      'initramfs-hooks/initramfs-tools/scripts/local-top/unlockd',
      'initramfs-hooks/dracut/90unlockd/module-setup.sh',
      'initramfs-hooks/unlockd-functions.sh',
    ]) {
      t.true(rel.includes(must), `${must} is checked`)
    }
  })
  for (const path of scripts) {
    const rel = relative(REPO, path)
    test(`shellcheck ${rel}`, (t) => {
      if (shellcheck === undefined) {
        t.fail('shellcheck is not installed; CI must install it (apt-get install shellcheck)')
        return
      }
      const r = spawnSync(
        shellcheck,
        ['--shell', shellOf(path) as string, '--external-sources', '--format', 'gcc', path],
        { encoding: 'utf8', cwd: REPO },
      )
      t.is(r.status, 0, `${rel}:\n${r.stdout}${r.stderr}`)
    })
  }
}
