/**
 * The Ansible roles, run for real by Debian's ansible-playbook through its
 * community.general.chroot connection into two Debian 12 chroots, an escrow server and a host
 * (overlays over the cached packaging chroot, see test/helpers/debs.ts; no systemd as PID 1
 * there, so units are checked with systemd-analyze, not started):
 *   unlockd_server installs the unlockd-server package built from this tree with apt,
 *   initializes it once and writes its drop-in; the test starts that installed server over TLS
 *   in its chroot; unlockd_agent then installs the unlockd-agent package (on Debian's nodejs
 *   18), enrolls a LUKS2 image and an fscrypt directory with a one-time token, and
 *   `unlockd unlock --test` works; its encrypt list converts a plaintext ext4 image to LUKS2 in
 *   place. Check mode changes nothing (it runs `unlockd encrypt --dry-run`), and a second run of
 *   each role reports changed=0. The fixtures (images, the loop-mounted ext4) are made on the
 *   host and bound into the host's chroot at /srv/t.
 */
import test, { type ExecutionContext } from 'ava'
import { existsSync, statSync } from 'node:fs'
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { FIXTURE_PBKDF } from '../helpers/luks.ts'
import { findBin, mustRun, rootTest, tool } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import {
  builtDebs,
  chrootArgv,
  chrootRoot,
  inChroot,
  packagingChroot,
  withChroot,
} from '../helpers/debs.ts'
import { REPO, cli, requireBuild, run, startServerProcess, type RunResult } from './support.ts'

const NEEDS = {
  bins: [
    'ansible-playbook',
    'cryptsetup',
    'mkfs.ext4',
    'mount',
    'umount',
    'losetup',
    'openssl',
    'unshare',
    'nsenter',
    'chroot',
    'debootstrap',
    'dpkg-deb',
  ],
  serial: true,
}

interface Recap {
  ok: number
  changed: number
  failed: number
  unreachable: number
}

function recap(r: RunResult): Recap {
  const m = /^\S+\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)/m.exec(r.stdout)
  if (!m) throw new Error(`no PLAY RECAP in ansible-playbook output:\n${r.stdout}\n${r.stderr}`)
  return {
    ok: Number(m[1]),
    changed: Number(m[2]),
    unreachable: Number(m[3]),
    failed: Number(m[4]),
  }
}

interface Chroots {
  lower: string
  binds: Record<string, string>
}

/** ansible-playbook on the host, with the chroot of `state` mounted for its chroot connection. */
async function playbook(
  t: ExecutionContext,
  c: Chroots,
  state: string,
  w: string,
  play: string,
  vars: string,
  extra: string[] = [],
): Promise<{ r: RunResult; recap: Recap }> {
  const inventory = `${state}.ini`
  await writeFile(
    inventory,
    `target ansible_connection=community.general.chroot ansible_host=${chrootRoot(state)} ansible_python_interpreter=/usr/bin/python3\n`,
  )
  const r = await withChroot(
    c.lower,
    state,
    ['ansible-playbook', '-i', inventory, join(w, play), '-e', `@${vars}`, ...extra],
    {
      binds: c.binds,
      cwd: REPO,
      env: {
        ANSIBLE_ROLES_PATH: join(REPO, 'provisioning/ansible/roles'),
        ANSIBLE_NOCOLOR: '1',
        ANSIBLE_FORCE_COLOR: '0',
        ANSIBLE_LOCALHOST_WARNING: 'false',
        ANSIBLE_HOME: join(w, 'ansible-home'),
        ANSIBLE_LOCAL_TEMP: join(w, 'ansible-tmp'),
        ANSIBLE_RETRY_FILES_ENABLED: 'false',
        ANSIBLE_CONFIG: join(w, 'no-ansible.cfg'),
      },
      timeoutMs: 8 * 60_000,
    },
  )
  const rc = recap(r)
  if (r.code !== 0 || rc.failed !== 0) t.log(r.stdout.slice(-6000), r.stderr.slice(-2000))
  return { r, recap: rc }
}

/** Unit files plus their drop-ins must load cleanly (ExecStart binaries exist, no unknown keys). */
async function verifyUnits(
  t: ExecutionContext,
  c: Chroots,
  state: string,
  units: string[],
): Promise<void> {
  const r = await inChroot(
    c.lower,
    state,
    `systemd-analyze verify ${units.map((u) => `/lib/systemd/system/${u}`).join(' ')}`,
  )
  t.is(r.code, 0, r.stdout + r.stderr)
  t.false(/ansible\.conf|Unknown|not found/.test(r.stderr), r.stderr)
}

rootTest(
  'the server and agent roles install the packages, enroll a LUKS2 image and an fscrypt directory, and change nothing on a second run',
  async (t) => {
    t.timeout(20 * 60_000)
    if (!requireBuild(t)) return
    const w = await tempDir(t, 'unlockd-ansible-')
    const [lower, debs] = await Promise.all([packagingChroot(), builtDebs()])
    const IN = '/srv/t'
    const c: Chroots = { lower, binds: { [w]: IN } }
    // Two machines: the escrow server and a host (each an overlay with its own upper layer).
    const sp = join(w, 'escrow-host')
    const ap = join(w, 'web-host')
    const upper = (state: string, path: string): string => join(state, 'upper', path)

    // --- fixtures: TLS certificate, LUKS2 image with a key file, ext4 (encrypt) loop mount ---
    await mustRun('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=escrow.test',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout',
      join(w, 'tls.key'),
      '-out',
      join(w, 'tls.crt'),
    ])
    const luksKey = join(w, 'luks.key')
    await writeFile(luksKey, 'existing passphrase of the data volume', { mode: 0o600 })
    const img = join(w, 'data.img')
    await writeFile(img, '', { mode: 0o600 })
    await truncate(img, 32 * 1024 * 1024)
    await mustRun('cryptsetup', [
      'luksFormat',
      '--type',
      'luks2',
      '--batch-mode',
      ...FIXTURE_PBKDF,
      '--key-file',
      luksKey,
      img,
    ])
    const fsImg = join(w, 'fs.img')
    const mnt = join(w, 'mnt')
    await writeFile(fsImg, '', { mode: 0o600 })
    await truncate(fsImg, 64 * 1024 * 1024)
    await mustRun('mkfs.ext4', ['-q', '-F', '-O', 'encrypt', fsImg])
    await mkdir(mnt)
    await mustRun('mount', ['-o', 'loop', fsImg, mnt])
    t.teardown(async () => {
      if ((await tool('umount', [mnt])).code !== 0) await tool('umount', ['-l', mnt])
    })
    // A plaintext ext4 image with a file on it, for the agent role's encrypt list.
    const plainImg = join(w, 'plain.img')
    await writeFile(plainImg, '', { mode: 0o600 })
    await truncate(plainImg, 80 * 1024 * 1024)
    await mustRun('mkfs.ext4', ['-q', '-F', '-b', '4096', plainImg])
    const plainMnt = join(w, 'plain-mnt')
    await mkdir(plainMnt)
    await mustRun('mount', ['-o', 'loop', plainImg, plainMnt])
    await writeFile(join(plainMnt, 'hello.txt'), 'data that was written before encryption\n')
    await mustRun('umount', [plainMnt])
    const fallbackPassphrase = 'fallback passphrase of the converted volume'

    await writeFile(join(w, 'no-ansible.cfg'), '')
    for (const role of ['unlockd_server', 'unlockd_agent']) {
      await writeFile(
        join(w, `${role}.yml`),
        `- hosts: all\n  gather_facts: false\n  roles: [${role}]\n`,
      )
    }

    // --- the escrow server role ---
    const passphrase = 'escrow keystore passphrase for the role test'
    const serverVars = join(w, 'server-vars.json')
    await writeFile(
      serverVars,
      JSON.stringify({
        unlockd_server_package: debs.server,
        unlockd_server_manage_service: false,
        unlockd_server_passphrase: passphrase,
        unlockd_server_listen: '127.0.0.1:8443',
        unlockd_server_tls_cert_pem: await readFile(join(w, 'tls.crt'), 'utf8'),
        unlockd_server_tls_key_pem: await readFile(join(w, 'tls.key'), 'utf8'),
        unlockd_server_settings: { approvalTtl: '15m' },
        unlockd_server_cli_env: {
          UNLOCKD_TOKEN_FILE: '/etc/unlockd/operator-token',
          UNLOCKD_CA: '/etc/unlockd/tls.crt',
        },
      }),
      { mode: 0o600 },
    )

    const sCheck = await playbook(t, c, sp, w, 'unlockd_server.yml', serverVars, ['--check'])
    t.is(sCheck.r.code, 0, 'server role, check mode')
    t.true(sCheck.recap.changed > 0)
    t.false(existsSync(upper(sp, 'usr/bin/unlockd-server')), 'check mode installed nothing')
    t.false(
      existsSync(upper(sp, 'var/lib/unlockd/keystore.json')),
      'check mode initialized nothing',
    )

    const s1 = await playbook(t, c, sp, w, 'unlockd_server.yml', serverVars, ['-v', '--diff'])
    t.is(s1.r.code, 0, 'server role, first run')
    t.true(s1.recap.changed > 0)
    const operatorToken = (await readFile(upper(sp, 'etc/unlockd/operator-token'), 'utf8')).trim()
    t.regex(operatorToken, /^uo_/)
    for (const [secret, what] of [
      [passphrase, 'passphrase'],
      [operatorToken, 'operator token'],
      [(await readFile(join(w, 'tls.key'), 'utf8')).split('\n')[1] as string, 'TLS key'],
    ] as const) {
      t.false(
        s1.r.stdout.includes(secret) || s1.r.stderr.includes(secret),
        `the ${what} leaked into ansible output`,
      )
    }
    for (const [path, mode] of [
      ['etc/unlockd/server-passphrase', 0o600],
      ['etc/unlockd/operator-token', 0o600],
      ['etc/unlockd/tls.key', 0o600],
      ['var/lib/unlockd/server.json', 0o600],
      ['var/lib/unlockd', 0o700],
    ] as const) {
      t.is(statSync(upper(sp, path)).mode & 0o777, mode, path)
    }
    t.is(await readFile(upper(sp, 'etc/unlockd/server-passphrase'), 'utf8'), passphrase)
    const owner = await inChroot(lower, sp, 'stat -c %U /var/lib/unlockd/keystore.json')
    t.is(owner.stdout.trim(), 'unlockd', "the data belongs to the package's service account")

    const s2 = await playbook(t, c, sp, w, 'unlockd_server.yml', serverVars)
    t.is(s2.r.code, 0, 'server role, second run')
    t.is(s2.recap.changed, 0, 'second run of unlockd_server changes nothing')
    await verifyUnits(t, c, sp, ['unlockd-server.service'])
    t.true(existsSync(upper(sp, 'etc/systemd/system/unlockd-server.service.d/zz-ansible.conf')))

    // --- start the installed server in its chroot (TLS from the server.json the role wrote) ---
    const srv = await startServerProcess(
      t,
      'unshare',
      chrootArgv(
        lower,
        sp,
        [
          'chroot',
          chrootRoot(sp),
          '/usr/bin/unlockd-server',
          'server',
          'start',
          '--data',
          '/var/lib/unlockd',
          '--passphrase-file',
          '/etc/unlockd/server-passphrase',
          '--listen',
          '127.0.0.1:0',
        ],
        c.binds,
      ),
    )
    t.regex(srv.url, /^https:\/\/127\.0\.0\.1:\d+$/)
    // The operator command the role wrote, run in the running server's mount namespace and root.
    const operator = (args: string[]): Promise<RunResult> =>
      run('nsenter', [
        '--target',
        String(srv.pid),
        '--mount',
        '--root',
        '--wd=/',
        '/usr/bin/env',
        '-i',
        'PATH=/usr/local/bin:/usr/bin:/bin',
        `UNLOCKD_URL=${srv.url}`,
        '/usr/local/bin/unlockd',
        ...args,
      ])
    const made = await operator([
      'token',
      'create',
      '--host',
      'web-1',
      '--ttl',
      '15m',
      '--cidr',
      '127.0.0.0/8',
      '--json',
    ])
    t.is(made.code, 0, made.stderr)
    const enrollToken = (JSON.parse(made.stdout) as { token: string; id: string }).token
    const tokenId = (JSON.parse(made.stdout) as { id: string }).id

    // --- the agent role ---
    const agentVars = join(w, 'agent-vars.json')
    await writeFile(
      agentVars,
      JSON.stringify({
        unlockd_agent_package: debs.agent,
        unlockd_agent_manage_service: false,
        unlockd_agent_servers: [srv.url],
        unlockd_agent_ca_pem: await readFile(join(w, 'tls.crt'), 'utf8'),
        unlockd_agent_name: 'web-1',
        unlockd_agent_enroll_token: enrollToken,
        unlockd_agent_volumes: [
          {
            name: 'data',
            kind: 'luks',
            device: `${IN}/data.img`,
            existing_key_file: `${IN}/luks.key`,
          },
          { name: 'secrets', kind: 'fscrypt', path: `${IN}/mnt/secrets` },
        ],
        unlockd_agent_encrypt: [{ luks: `${IN}/plain.img`, name: 'plain' }],
        unlockd_agent_encrypt_fallback_passphrase: fallbackPassphrase,
        // Test-only: a fast PBKDF for the new keyslot (the fixture image uses one too).
        unlockd_agent_enroll_environment: { UNLOCKD_LUKS_PBKDF: 'fast' },
      }),
      { mode: 0o600 },
    )

    const aCheck = await playbook(t, c, ap, w, 'unlockd_agent.yml', agentVars, ['--check'])
    t.is(aCheck.r.code, 0, 'agent role, check mode')
    t.true(aCheck.recap.changed > 0)
    t.regex(aCheck.r.stdout, /would enroll data, secrets/)
    t.regex(aCheck.r.stdout, /would encrypt plain/)
    t.false(existsSync(upper(ap, 'etc/unlockd/agent.json')), 'check mode enrolled nothing')
    t.false(existsSync(upper(ap, 'usr/bin/unlockd')), 'check mode installed nothing')
    const unused = await operator(['token', 'list', '--json'])
    t.like(
      (JSON.parse(unused.stdout) as { id: string }[]).find((x) => x.id === tokenId),
      { state: 'unused' },
    )

    const a1 = await playbook(t, c, ap, w, 'unlockd_agent.yml', agentVars, ['-v', '--diff'])
    t.is(a1.r.code, 0, 'agent role, first run')
    t.true(a1.recap.changed > 0)
    t.false(
      a1.r.stdout.includes(enrollToken) || a1.r.stderr.includes(enrollToken),
      'the enrollment token leaked into ansible output',
    )
    t.false(
      a1.r.stdout.includes(fallbackPassphrase) || a1.r.stderr.includes(fallbackPassphrase),
      'the fallback passphrase leaked into ansible output',
    )
    t.regex(
      a1.r.stdout,
      /TASK \[unlockd_agent : Encrypt in place\][^\n]*\nchanged: \[target\] => \(item=plain: /,
    )
    t.is(
      (await tool('cryptsetup', ['isLuks', '--type', 'luks2', plainImg])).code,
      0,
      'the plaintext image is LUKS2 now',
    )
    t.regex((await inChroot(lower, ap, 'node --version')).stdout, /^v18\./, 'on nodejs 18')
    t.is(statSync(upper(ap, 'etc/unlockd/encrypt-fallback')).mode & 0o777, 0o600)
    const agentJson = JSON.parse(await readFile(upper(ap, 'etc/unlockd/agent.json'), 'utf8')) as {
      name: string
      servers: { url: string; ca: string | null }[]
      volumes: { name: string; kind: string }[]
    }
    t.is(agentJson.name, 'web-1')
    t.deepEqual(
      agentJson.servers.map((s) => s.url),
      [srv.url],
    )
    t.truthy(agentJson.servers[0]?.ca, 'the CA is pinned')
    t.deepEqual(agentJson.volumes.map((v) => `${v.name}:${v.kind}`).sort(), [
      'data:luks',
      'plain:luks',
      'secrets:fscrypt',
    ])
    t.is(statSync(upper(ap, 'etc/unlockd')).mode & 0o777, 0o700)
    t.is(statSync(upper(ap, 'etc/unlockd/agent.json')).mode & 0o777, 0o600)

    const a2 = await playbook(t, c, ap, w, 'unlockd_agent.yml', agentVars)
    t.is(a2.r.code, 0, 'agent role, second run')
    t.is(a2.recap.changed, 0, 'second run of unlockd_agent changes nothing')
    const a3 = await playbook(t, c, ap, w, 'unlockd_agent.yml', agentVars, ['--check'])
    t.is(a3.r.code, 0)
    t.is(a3.recap.changed, 0, 'check mode on an enrolled host changes nothing')
    t.regex(
      a3.r.stdout,
      /plain: unchanged/,
      'check mode asks the command (--dry-run), which finds it converted',
    )
    await verifyUnits(t, c, ap, ['unlockd-agent.service', 'unlockd-agent.path'])
    const enabled = await inChroot(
      lower,
      ap,
      'systemctl is-enabled unlockd-agent.service unlockd-agent.path',
    )
    t.is(enabled.code, 0, `the package enabled the units: ${enabled.stdout}${enabled.stderr}`)

    // A volume added to the list later enrolls alone, without a token (the host is enrolled).
    const moreVars = join(w, 'agent-vars-more.json')
    const more = JSON.parse(await readFile(agentVars, 'utf8')) as {
      unlockd_agent_volumes: unknown[]
    } & Record<string, unknown>
    more['unlockd_agent_enroll_token'] = ''
    more.unlockd_agent_volumes.push({
      name: 'secrets2',
      kind: 'fscrypt',
      path: `${IN}/mnt/secrets2`,
      mode: '0750',
    })
    await writeFile(moreVars, JSON.stringify(more), { mode: 0o600 })
    const a4 = await playbook(t, c, ap, w, 'unlockd_agent.yml', moreVars)
    t.is(a4.r.code, 0, 'agent role, one more volume')
    t.regex(a4.r.stdout, /TASK \[unlockd_agent : Enroll secrets2\][^\n]*\nchanged:/)
    t.is(statSync(join(mnt, 'secrets2')).mode & 0o777, 0o750)
    const a5 = await playbook(t, c, ap, w, 'unlockd_agent.yml', moreVars)
    t.is(a5.recap.changed, 0, 'and then nothing changes')

    // --- the installed command unlocks with keys from the escrow server ---
    const unlock = await inChroot(lower, ap, 'unlockd unlock --test --json', { binds: c.binds })
    t.is(unlock.code, 0, unlock.stderr)
    const status = await inChroot(lower, ap, 'unlockd status --json', { binds: c.binds })
    t.is(status.code, 0, status.stderr)
    t.deepEqual(
      (JSON.parse(status.stdout) as { volumes: { name: string }[] }).volumes
        .map((v) => v.name)
        .sort(),
      ['data', 'plain', 'secrets', 'secrets2'],
    )
    const used = await operator(['token', 'list', '--json'])
    t.like(
      (JSON.parse(used.stdout) as { id: string }[]).find((x) => x.id === tokenId),
      { state: 'used' },
    )

    // The same token (as a leaked vars file would hold) cannot enroll another host.
    const replay = await cli(
      [
        'enroll',
        '--json',
        '--server',
        srv.url,
        '--ca',
        join(w, 'tls.crt'),
        '--token',
        '-',
        '--name',
        'web-1',
        '--config',
        join(w, 'other-host'),
      ],
      { input: enrollToken },
    )
    t.is(replay.code, 3)
    t.like(JSON.parse(replay.stdout), { error: 'token_used' })
  },
  NEEDS,
)

const hasAnsible = findBin('ansible-playbook') !== undefined
if (!hasAnsible && (process.env['CI'] ?? '') === '') {
  console.warn(
    `\n${'!'.repeat(78)}\n!! SKIPPING example playbook check: needs ansible (apt-get install ansible)\n${'!'.repeat(78)}\n`,
  )
}

;(hasAnsible || (process.env['CI'] ?? '') !== '' ? test : test.skip)(
  'the example playbook and inventory parse (syntax check, group and host vars)',
  async (t) => {
    t.truthy(
      findBin('ansible-playbook'),
      'ansible is installed (apt-get install ansible); CI must run this test',
    )
    const examples = join(REPO, 'provisioning/ansible/examples')
    // examples/ansible.cfg names the inventory and the roles path, as an operator would use it.
    const env = { ANSIBLE_NOCOLOR: '1', ANSIBLE_CONFIG: join(examples, 'ansible.cfg') }
    const syntax = await run('ansible-playbook', ['--syntax-check', 'site.yml'], {
      cwd: examples,
      env,
    })
    t.is(syntax.code, 0, syntax.stdout + syntax.stderr)
    const inv = await run('ansible-inventory', ['--list'], { cwd: examples, env })
    t.is(inv.code, 0, inv.stderr)
    const hostvars = (
      JSON.parse(inv.stdout) as { _meta: { hostvars: Record<string, Record<string, unknown>> } }
    )._meta.hostvars
    t.deepEqual(
      (hostvars['db-1']?.['unlockd_agent_volumes'] as { name: string }[]).map((v) => v.name),
      ['secrets', 'pgdata'],
    )
    t.deepEqual(hostvars['web-1']?.['unlockd_agent_servers'], ['{{ unlockd_escrow_url }}'])
  },
)

const hasLint = findBin('ansible-lint') !== undefined
if (!hasLint && (process.env['CI'] ?? '') === '') {
  console.warn(
    `\n${'!'.repeat(78)}\n!! SKIPPING ansible-lint check: needs ansible-lint (apt-get install ansible-lint)\n${'!'.repeat(78)}\n`,
  )
}

;(hasLint || (process.env['CI'] ?? '') !== '' ? test : test.skip)(
  'the roles and the example playbook pass ansible-lint (production profile)',
  async (t) => {
    t.truthy(
      findBin('ansible-lint'),
      'ansible-lint is installed (apt-get install ansible-lint); CI must run this test',
    )
    const r = await run(
      'ansible-lint',
      [
        '--offline',
        '--nocolor',
        '-p',
        'roles/unlockd_agent',
        'roles/unlockd_server',
        'examples/site.yml',
      ],
      {
        cwd: join(REPO, 'provisioning/ansible'),
        env: { ANSIBLE_CONFIG: join(REPO, 'provisioning/ansible/examples/ansible.cfg') },
        timeoutMs: 5 * 60_000,
      },
    )
    t.is(r.code, 0, r.stdout + r.stderr)
  },
)
