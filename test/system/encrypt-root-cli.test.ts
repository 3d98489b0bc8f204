/**
 * Story: an operator asks `unlockd encrypt --root --dry-run` what would happen. On a recorded
 * Debian cloud layout it lists the boots and steps; on a recorded XFS layout, and on this very
 * machine (whatever its root is, it is not a handled layout for a test runner), it refuses with
 * the reason and creates nothing. A real run is refused without enrollment.
 */
import test from 'ava'
import { existsSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { tempDir } from '../helpers/tmp.ts'
import { runCli } from '../helpers/cli.ts'
import { enrolledHost } from '../helpers/encrypt.ts'

const FIXTURES = join(import.meta.dirname, '..', 'fixtures', 'root-layouts')
const fixture = (n: string): string => join(FIXTURES, `${n}.json`)

test.serial('dry runs: a plan for a cloud layout, a refusal with the reason for XFS', async (t) => {
  const dir = await tempDir(t)
  const host = await enrolledHost(t, dir)
  const fallbackFile = join(dir, 'fallback')
  await writeFile(fallbackFile, 'a fallback passphrase\n', { mode: 0o600 })
  const state = join(dir, 'state')
  const base = ['encrypt', '--root', '--dry-run', '--config', host.cfg, '--state-dir', state]
  const ok = await runCli(
    [
      ...base,
      '--facts',
      fixture('debian-12-genericcloud-bios'),
      '--fallback-passphrase-file',
      fallbackFile,
    ],
    host.env,
  )
  t.is(ok.code, 0, ok.stderr)
  t.regex(ok.stdout, /boot 1, in the initramfs before \/ is mounted:/)
  t.regex(ok.stdout, /boot 2, in the initramfs before \/ is mounted:/)
  t.regex(ok.stdout, /new \/boot\s+partition 2/)
  t.regex(ok.stdout, /reencrypt-init .*--init-only --reduce-device-size 32M/)
  const js = await runCli(
    [
      ...base,
      '--json',
      '--facts',
      fixture('ubuntu-24.04-cloud'),
      '--fallback-passphrase-file',
      fallbackFile,
    ],
    host.env,
  )
  t.is(js.code, 0, js.stderr)
  t.is(js.json.plan.bootMode, 'separate')
  t.is(js.json.plan.stages.length, 3)

  const xfs = await runCli(
    [
      ...base,
      '--facts',
      fixture('rocky-9-genericcloud-xfs'),
      '--fallback-passphrase-file',
      fallbackFile,
    ],
    host.env,
  )
  t.is(xfs.code, 1)
  t.regex(xfs.stderr, /\[REFUSED\] \/ is XFS, which cannot shrink.*\(volume_invalid, xfs\)/)
  t.false(existsSync(state), 'a dry run creates nothing')

  const here = await runCli([...base, '--fallback-passphrase-file', fallbackFile], host.env)
  t.is(here.code, 1, here.stdout)
  t.regex(here.stderr, /\[REFUSED\]/)
  t.false(existsSync(state))
})

test.serial('a real run needs an enrolled host; --facts only goes with --dry-run', async (t) => {
  const dir = await tempDir(t)
  const fallbackFile = join(dir, 'fallback')
  await writeFile(fallbackFile, 'a fallback passphrase\n', { mode: 0o600 })
  const cfg = join(dir, 'etc')
  const r = await runCli([
    'encrypt',
    '--root',
    '--config',
    cfg,
    '--state-dir',
    join(dir, 'state'),
    '--fallback-passphrase-file',
    fallbackFile,
  ])
  t.is(r.code, 1)
  t.regex(r.stderr, /not enrolled/)
  const f = await runCli([
    'encrypt',
    '--root',
    '--facts',
    fixture('debian-12-mbr'),
    '--config',
    cfg,
  ])
  t.not(f.code, 0)
  t.regex(f.stderr, /--facts .* only goes with --dry-run/)
  t.false(existsSync(join(dir, 'state')))
})
