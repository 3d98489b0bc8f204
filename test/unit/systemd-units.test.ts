/** The unit files pass `systemd-analyze verify` with no warnings at all. */
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { findBin } from '../helpers/root.ts'

const dir = fileURLToPath(new URL('../../systemd/', import.meta.url))
const units = readdirSync(dir)
  .filter((f) => /\.(service|path|socket)$/.test(f))
  .map((f) => dir + f)
const analyze = findBin('systemd-analyze')

if (!analyze && !process.env['CI']) {
  console.warn(
    '!!! SKIPPING systemd unit checks: systemd-analyze is not installed (apt-get install systemd)',
  )
  test.skip('systemd units verify [SKIPPED: no systemd-analyze]', () => {})
} else {
  test('every unit file passes systemd-analyze verify cleanly', (t) => {
    t.true(units.length >= 3)
    const r = spawnSync(analyze ?? 'systemd-analyze', ['verify', ...units], { encoding: 'utf8' })
    t.is(r.status, 0, r.stderr)
    t.is(r.stderr.trim(), '', r.stderr)
  })
  test('the agent unit is Type=notify, ordered before cryptsetup and hardened', (t) => {
    const r = spawnSync('cat', [dir + 'unlockd-agent.service'], { encoding: 'utf8' })
    for (const line of [
      'Type=notify',
      'Before=cryptsetup.target',
      'Before=cryptsetup-pre.target',
      'StateDirectory=unlockd',
      'ProtectSystem=strict',
      'NoNewPrivileges=yes',
    ])
      t.true(r.stdout.includes(line), line)
    // PrivateTmp= adds After=systemd-tmpfiles-setup.service (after local-fs.target): a cycle.
    t.false(/^PrivateTmp=/m.test(r.stdout), 'no PrivateTmp= in a unit ordered before local-fs-pre')
  })
}
